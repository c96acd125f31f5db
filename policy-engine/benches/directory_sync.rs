//! Directory sync of a big city from a real OpenLDAP server.
//!
//! Loads N users (`SEKISHO_BENCH_USERS`, default 100,000) in 200 departments, each
//! department a group nested in one of 10 divisions, into a throwaway `slapd`
//! (offline, with `slapadd`), starts an engine on SQLite with that directory, then
//! measures:
//! 1. the first full sync (every user added, one transaction);
//! 2. a full re-read that finds nothing to change (`--full`);
//! 3. an incremental sync after 1,000 users moved department (the changes are made
//!    through the server, so `modifyTimestamp` moves), repeated
//!    `SEKISHO_BENCH_RUNS` times (default 3) with fresh changes each time.
//!
//! `cargo bench -p sekisho-policy-engine --bench directory_sync`

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use sekisho_policy_engine::config::EngineConfig;
use sekisho_policy_engine::directory::{DirectoryConfig, Profile, SyncOptions};
use sekisho_policy_engine::server;
use sekisho_testkit::Slapd;

const DEPARTMENTS: usize = 200;
const DIVISIONS: usize = 10;
const CHANGES: usize = 1_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn user_dn(i: usize) -> String {
    format!("uid=u{i:06},ou=people,dc=example,dc=jp")
}

fn dept_dn(d: usize) -> String {
    format!("cn=dept{d:03},ou=groups,dc=example,dc=jp")
}

fn division_dn(v: usize) -> String {
    format!("cn=div{v:02},ou=groups,dc=example,dc=jp")
}

/// Users carry the `memberOf` the overlay would have written (it does not run offline).
fn city(users: usize) -> String {
    let mut s = String::with_capacity(users * 260);
    for i in 0..users {
        let d = i % DEPARTMENTS;
        let _ = write!(
            s,
            "dn: {}\nobjectClass: inetOrgPerson\nuid: u{i:06}\ncn: Staff {i}\nsn: Staff\n\
             ou: dept{d:03}\nemployeeType: staff\nmemberOf: {}\n\n",
            user_dn(i),
            dept_dn(d)
        );
    }
    for d in 0..DEPARTMENTS {
        let _ = write!(
            s,
            "dn: {}\nobjectClass: groupOfNames\ncn: dept{d:03}\nmember: cn=placeholder\nmemberOf: {}\n\n",
            dept_dn(d),
            division_dn(d % DIVISIONS)
        );
    }
    for v in 0..DIVISIONS {
        let _ = write!(
            s,
            "dn: {}\nobjectClass: groupOfNames\ncn: div{v:02}\nmember: cn=placeholder\n\n",
            division_dn(v)
        );
    }
    s
}

fn transfers(users: usize, round: usize) -> String {
    let mut s = String::new();
    for k in 0..CHANGES {
        let i = (k * 97 + round * 31) % users;
        let _ = write!(
            s,
            "dn: {}\nchangetype: modify\nreplace: ou\nou: moved-{round}\n\n",
            user_dn(i)
        );
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let users = env_or("SEKISHO_BENCH_USERS", 100_000);
    let runs = env_or("SEKISHO_BENCH_RUNS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let t = Instant::now();
    let slapd = Slapd::start_bulk(&city(users), "").expect("slapd with the city");
    println!(
        "slapd loaded with {users} users, {DEPARTMENTS} departments in {DIVISIONS} divisions in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, slapd.admin_password()).expect("password file");
    let mut config = EngineConfig::self_contained(dir.path());
    config.directory = Some(DirectoryConfig {
        url: slapd.url(),
        starttls: false,
        bind_dn: slapd.admin_dn().into(),
        bind_password_file: Some(pw),
        base_dn: slapd.base_dn().into(),
        profile: Profile::Openldap,
        sync_at: String::new(),
        timeout_secs: 300,
        ..Default::default()
    });
    rt.block_on(async {
        let engine = server::start(&config).await.expect("engine");
        let state = engine.state.clone();
        let sync = state.directory_sync.clone().expect("configured");
        let run = |full: bool| {
            let (state, sync) = (state.clone(), sync.clone());
            async move {
                let opts = SyncOptions {
                    full,
                    force: true,
                    trigger: "bench".into(),
                    ..Default::default()
                };
                let t = Instant::now();
                let s = sync.run(&state, &opts).await.expect("sync");
                (t.elapsed(), s)
            }
        };
        let (took, s) = run(true).await;
        println!(
            "first full sync: {} users added in {:.2} s ({:.0} users/s)",
            s.changes.len(),
            took.as_secs_f64(),
            s.changes.len() as f64 / took.as_secs_f64()
        );
        let mut rereads = Vec::new();
        for _ in 0..runs {
            let (took, s) = run(true).await;
            assert!(s.changes.is_empty());
            rereads.push(took);
        }
        println!(
            "full re-read, nothing to change: median {:.2} s over {runs} runs",
            median(rereads).as_secs_f64()
        );
        let mut incrementals = Vec::new();
        for round in 0..runs {
            // modifyTimestamp has one-second resolution: start the changes in a new
            // second, so the last run's high-water mark does not cover them.
            std::thread::sleep(Duration::from_millis(1100));
            slapd.apply(&transfers(users, round)).expect("transfers");
            let (took, s) = run(false).await;
            assert_eq!(s.mode, "incremental");
            println!(
                "  incremental run {round}: {} changed in {:.3} s",
                s.changes.len(),
                took.as_secs_f64()
            );
            incrementals.push(took);
        }
        println!(
            "incremental sync of {CHANGES} changes: median {:.3} s over {runs} runs",
            median(incrementals).as_secs_f64()
        );
        engine.shutdown().await.expect("shutdown");
    });
}
