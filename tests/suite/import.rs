//! Bulk imports end to end: `sekisho users import` into a real gateway (SQLite and
//! PostgreSQL), and `sekisho device import` / `device list` on the engine's store.
//! Each checks that bad rows are named by row and column and change nothing, that a
//! re-import changes nothing, and that a dry run writes nothing.

use crate::common;

use common::gateway::{now_secs, TestCard, TestGateway};
use common::{pg_url, sekisho, unique_tenant, Backend};
use sekisho_gateway::effects::Effect;
use sekisho_gateway::factors::totp::{code_at, TotpParams};
use sekisho_policy_engine::store::Store;
use sekisho_policy_engine::{Factor, Tier};
use sekisho_proto::v1 as pb;

/// An RFC 4648 test seed (20 bytes), as an authenticator app would be given it.
const SEED: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

fn pem(card: &TestCard) -> String {
    let b64 = data_encoding::BASE64.encode(&card.der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

async fn imports(gw: &TestGateway) -> Vec<sekisho_policy_engine::audit::AuditEvent> {
    gw.journal()
        .await
        .into_iter()
        .filter(|e| e.body.action == "user_import")
        .collect()
}

async fn verifies(gw: &TestGateway, user: &str, factor: Factor, secret: &str) -> bool {
    let g = &gw.running.gateway;
    let phc = g.store.secret(user, factor).await.expect("store");
    phc.is_some() && g.hasher.verify(secret, phc.as_deref()).expect("verify")
}

// The binary runs synchronously, so the in-process gateway needs its own worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_import_is_checked_all_or_nothing_idempotent_and_usable() {
    let gw = TestGateway::start(Tier::Internet, |_| {}).await;
    gw.register("net-vdi-01", "vdi", &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("cards")).expect("cards dir");
    let card = gw.cards.issue("u014");
    std::fs::write(dir.path().join("cards/u014.pem"), pem(&card)).expect("card file");
    let stranger = common::gateway::CardCa::new("stranger CA", dir.path()).issue("u015");
    std::fs::write(dir.path().join("cards/u015.pem"), pem(&stranger)).expect("card file");
    let csv = dir.path().join("users.csv");
    let good = format!(
        "user,name,department,role,groups,password,pin,card_cert,totp_seed\n\
         u013,佐藤 花子,情報政策課,staff,g-johoseisaku;g-all,u013-password,,,{SEED}\n\
         u014,鈴木 一郎,市民課,manager,g-shimin,,4826,cards/u014.pem,\n\
         u016,\"Tanaka, Jiro\",総務課,staff,,long-enough-pw,7391,,\n"
    );

    // Bad rows: every problem named by row and column, nothing written, no secret shown.
    let bad = format!(
        "{good}u013,dup,,,,,,,\n,no id,,,,,,,\nu017,x,,,,short,12345,cards/none.pem,NOTBASE32!!\nu018,x,,,\n"
    );
    std::fs::write(&csv, &bad).expect("csv");
    let (code, out, err) = gw.admin_cli(&["users", "import", csv.to_str().unwrap()], "");
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("users.csv: row 8: 5 columns, but the header has 9"),
        "{err}"
    );
    std::fs::write(&csv, bad.replace("u018,x,,,\n", "")).expect("csv");
    let (code, _, err) = gw.admin_cli(&["users", "import", csv.to_str().unwrap()], "");
    assert_eq!(code, 2, "{err}");
    for expected in [
        "row 5, column user: user 'u013' is already in row 2",
        "row 6, column user: user id empty",
        "row 7, column password: a password must be 8 to 1024 characters (got 5)",
        "row 7, column pin: a PIN must not be one repeated digit or a run",
        "row 7, column card_cert: 'cards/none.pem'",
        "row 7, column totp_seed: not base32",
        "6 problem(s); nothing was imported",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!err.contains("short"), "a secret was shown: {err}");
    assert_eq!(gw.running.gateway.store.user("u013").await.unwrap(), None);

    // A row only the gateway can refuse (a card from an unknown CA): still nothing.
    std::fs::write(&csv, format!("{good}u015,山本,,,,,,cards/u015.pem,\n")).expect("csv");
    let (code, _, err) = gw.admin_cli(&["users", "import", csv.to_str().unwrap()], "");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "row 5, column card_cert: cannot be used for logon on this tier: untrusted_certificate"
        ),
        "{err}"
    );
    assert!(err.contains("refused by the gateway"), "{err}");
    assert_eq!(gw.running.gateway.store.user("u013").await.unwrap(), None);
    assert!(!verifies(&gw, "u016", Factor::Pin, "7391").await);

    // One card listed for two people: a card is one person's.
    std::fs::write(&csv, format!("{good}u015,山本,,,,,,cards/u014.pem,\n")).expect("csv");
    let (code, _, err) = gw.admin_cli(&["users", "import", csv.to_str().unwrap()], "");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "row 5, column card_cert: this card certificate is already enrolled for user 'u014'"
        ),
        "{err}"
    );
    assert_eq!(gw.running.gateway.store.user("u013").await.unwrap(), None);

    // A dry run says what would change and writes nothing.
    std::fs::write(&csv, &good).expect("csv");
    let (code, out, err) =
        gw.admin_cli(&["users", "import", "--dry-run", csv.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("+ u013 (row 2) added: name, department, role, groups, password, totp"),
        "{out}"
    );
    assert!(
        out.contains("3 would be added, 0 would be changed, 0 unchanged (dry run"),
        "{out}"
    );
    assert_eq!(gw.running.gateway.store.user("u013").await.unwrap(), None);
    assert!(imports(&gw).await.is_empty());

    let (code, out, err) = gw.admin_cli(&["users", "import", csv.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 added, 0 changed, 0 unchanged"), "{out}");
    assert!(err.contains("3 users read (UTF-8)"), "{err}");
    let store = &gw.running.gateway.store;
    let u013 = store.user("u013").await.unwrap().expect("imported");
    assert_eq!(u013.name, "佐藤 花子");
    assert_eq!(u013.department, "情報政策課");
    assert_eq!(u013.groups, ["g-johoseisaku", "g-all"]);
    assert_eq!(
        store.user("u016").await.unwrap().unwrap().name,
        "Tanaka, Jiro"
    );
    assert!(verifies(&gw, "u013", Factor::Password, "u013-password").await);
    assert!(verifies(&gw, "u016", Factor::Pin, "7391").await);
    assert_eq!(store.enrollment("u014", false).await.unwrap().cards, 1);
    // ...and a card enrolled for one is refused for another, by import or enrolment.
    std::fs::write(&csv, format!("{good}u015,山本,,,,,,cards/u014.pem,\n")).expect("csv");
    let (code, _, err) = gw.admin_cli(&["users", "import", csv.to_str().unwrap()], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already enrolled for user 'u014'"), "{err}");
    std::fs::write(&csv, &good).expect("csv");
    let events = imports(&gw).await;
    assert_eq!(events.len(), 3);
    let e = &events[0].body;
    assert_eq!(e.operator, sekisho_policy_engine::pki::DEFAULT_ADMIN_NAME);
    assert_eq!(e.detail["change"], "added");
    let line = serde_json::to_string(&events).unwrap();
    for secret in ["u013-password", "4826", "7391", SEED] {
        assert!(!line.contains(secret), "secret in the journal: {line}");
    }

    // Again: nothing changes, nothing is journaled, hashes are not redone.
    let phc = store.secret("u013", Factor::Password).await.unwrap();
    let (code, out, err) = gw.admin_cli(&["users", "import", csv.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 added, 0 changed, 3 unchanged"), "{out}");
    assert_eq!(store.secret("u013", Factor::Password).await.unwrap(), phc);
    assert_eq!(imports(&gw).await.len(), 3);

    // One PIN and one department changed: exactly that is reported and journaled.
    std::fs::write(
        &csv,
        good.replace("4826", "5937").replace("総務課", "財政課"),
    )
    .expect("csv");
    let (code, out, err) = gw.admin_cli(&["users", "import", csv.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("~ u014 (row 3) changed: pin"), "{out}");
    assert!(out.contains("~ u016 (row 4) changed: department"), "{out}");
    assert!(out.contains("0 added, 2 changed, 1 unchanged"), "{out}");
    assert!(verifies(&gw, "u014", Factor::Pin, "5937").await);
    assert_eq!(imports(&gw).await.len(), 5);

    // The imported password and seed log u013 on.
    let secret = data_encoding::BASE32_NOPAD.decode(SEED.as_bytes()).unwrap();
    let device = gw.device_tls("net-vdi-01");
    let code_now = code_at(&secret, &TotpParams::default(), now_secs() / 30);
    let (code, out, err) = sekisho(
        &[
            "agent",
            "logon",
            "--user",
            "u013",
            "--password-stdin",
            "--totp",
            &code_now,
            "--gateway",
            &gw.url(),
            "--ca",
            gw.pki().ca().to_str().unwrap(),
            "--device-cert",
            device.cert.to_str().unwrap(),
            "--device-key",
            device.key.to_str().unwrap(),
        ],
        "u013-password\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    gw.stop().await;
}

/// A Shift_JIS file as a city's personnel system exports it: kanji names survive.
async fn shift_jis_import(backend: Backend) {
    let gw = TestGateway::start_on(backend, Tier::Mynumber, |_| {}).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let text = "user,name,department,role,groups,pin\r\n\
                u201,山田 太郎,市民課（戸籍係）,職員,住民記録;全職員,4826\r\n\
                u202,髙橋 美咲,税務課,係長,全職員,7391\r\n";
    let (sjis, _, unmappable) = encoding_rs::SHIFT_JIS.encode(text);
    assert!(!unmappable);
    assert!(std::str::from_utf8(&sjis).is_err(), "really not UTF-8");
    let csv = dir.path().join("職員.csv");
    std::fs::write(&csv, &sjis).expect("csv");

    let (code, out, err) = gw.admin_cli(&["users", "import", csv.to_str().unwrap()], "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("2 users read (Shift_JIS)"), "{err}");
    assert!(out.contains("2 added"), "{out}");
    let store = &gw.running.gateway.store;
    let u = store.user("u201").await.unwrap().expect("imported");
    assert_eq!(u.name, "山田 太郎");
    assert_eq!(u.department, "市民課（戸籍係）");
    assert_eq!(u.role, "職員");
    assert_eq!(u.groups, ["住民記録", "全職員"]);
    assert_eq!(store.user("u202").await.unwrap().unwrap().name, "髙橋 美咲");
    assert!(verifies(&gw, "u202", Factor::Pin, "7391").await);

    // Forcing UTF-8 on it is refused with the row of the first bad byte.
    let (code, _, err) = gw.admin_cli(
        &[
            "users",
            "import",
            "--encoding",
            "utf-8",
            csv.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("row 2: invalid UTF-8"), "{err}");

    let (code, out, err) = gw.admin_cli(&["users", "import", csv.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 added, 0 changed, 2 unchanged"), "{out}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shift_jis_users_file_keeps_kanji_names_on_sqlite() {
    shift_jis_import(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shift_jis_users_file_keeps_kanji_names_on_postgres() {
    shift_jis_import(Backend::Postgres).await;
}

/// All-or-nothing and idempotence through the admin API itself, on PostgreSQL.
#[tokio::test]
async fn import_api_refuses_the_whole_batch_on_postgres() {
    let gw = TestGateway::start_on(Backend::Postgres, Tier::Lgwan, |_| {}).await;
    let user = |id: &str, row: u32, pin: &str| pb::ImportUser {
        id: id.into(),
        name: Some(format!("name of {id}")),
        pin: pin.into(),
        totp_secret: data_encoding::BASE32_NOPAD.decode(SEED.as_bytes()).unwrap(),
        row,
        ..pb::ImportUser::default()
    };
    let mut admin = gw.admin().await;
    let refused = admin
        .import_users(pb::ImportUsersRequest {
            users: vec![user("a1", 2, "4826"), user("a2", 3, "1111")],
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.applied);
    assert_eq!(refused.problems.len(), 1);
    let p = &refused.problems[0];
    assert_eq!((p.row, p.user.as_str(), p.field.as_str()), (3, "a2", "pin"));
    let store = &gw.running.gateway.store;
    assert_eq!(
        store.user("a1").await.unwrap(),
        None,
        "a valid row alone is not written"
    );
    assert!(store.totp("a1").await.unwrap().is_none());

    let batch = pb::ImportUsersRequest {
        users: vec![user("a1", 2, "4826"), user("a2", 3, "7391")],
        dry_run: false,
    };
    let first = admin
        .import_users(batch.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(first.applied);
    assert!(first.users.iter().all(|u| u.change == "added"));
    let secret = store.totp("a1").await.unwrap().expect("imported").sealed;
    let step = Effect::TotpStep {
        user: "a1".into(),
        step: 42,
        secret,
    };
    let done = gw
        .running
        .gateway
        .journal
        .commit(vec![step], Box::new(|_| Vec::new()))
        .await
        .unwrap();
    assert_eq!(done.applied.conflict, None);
    let again = admin.import_users(batch).await.unwrap().into_inner();
    assert!(
        again.users.iter().all(|u| u.change == "unchanged"),
        "{again:?}"
    );
    // The unchanged TOTP secret kept its replay guard.
    assert_eq!(store.totp("a1").await.unwrap().unwrap().last_step, Some(42));
    gw.stop().await;
}

async fn device_import_and_list(store_url: String, tenant: String) {
    // The store exists (migrated) before the CLI is pointed at it.
    Store::open(&store_url, &tenant)
        .await
        .expect("store")
        .close()
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("devices.csv");
    let store_args = ["--store", &store_url, "--tenant", &tenant];
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(store_args);
        sekisho(&all, "")
    };

    std::fs::write(
        &csv,
        "id,tier,kind,capabilities,location\n\
         mn-desk-01,mynumber,desktop,card;vein,1F 戸籍係\n\
         mn-desk-01,mynumber,desktop,card,\n\
         lg-x,lgwan,tablet,card,\n\
         lg-y,lgwan,desktop,laser,\n",
    )
    .expect("csv");
    let (code, _, err) = run(&["device", "import", csv.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("row 3, column id: device 'mn-desk-01' is already in row 2"),
        "{err}"
    );
    assert!(err.contains("row 4, column kind:"), "{err}");
    assert!(err.contains("row 5, column capabilities:"), "{err}");
    assert!(err.contains("3 problem(s); nothing was imported"), "{err}");

    // An unknown column is named, and the rows are still checked without it.
    std::fs::write(
        &csv,
        "id,tier,kind,colour,location\n\
         mn-desk-01,mynumber,desktop,red,1F\n\
         lg-x,lgwan,tablet,blue,\n",
    )
    .expect("csv");
    let (code, _, err) = run(&["device", "import", csv.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("devices.csv: row 1, column colour: unknown column 'colour' (column 4)"),
        "{err}"
    );
    assert!(
        err.contains("devices.csv: row 3, column kind: unknown device kind 'tablet'"),
        "{err}"
    );
    assert!(err.contains("2 problem(s); nothing was imported"), "{err}");

    // A TOML file's problems name the device (index and id) and the key.
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(
        &bad_toml,
        "[[device]]\nid = \"mn-desk-01\"\ntier = \"mynumber\"\nkind = \"desktop\"\ncolour = \"red\"\n\
         [[device]]\nid = \"lg-x\"\ntier = \"lgwan\"\nkind = \"desktop\"\ncapabilities = \"card\"\n",
    )
    .expect("toml");
    let (code, _, err) = run(&["device", "import", bad_toml.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml: device 1 (id 'mn-desk-01'), key colour: unknown key"),
        "{err}"
    );
    assert!(
        err.contains(
            "bad.toml: device 2 (id 'lg-x'), key capabilities: must be an array of strings"
        ),
        "{err}"
    );
    assert!(err.contains("2 problem(s); nothing was imported"), "{err}");
    let (_, out, _) = run(&["device", "list"]);
    assert!(!out.contains("mn-desk-01"), "a refused import wrote: {out}");

    let good = "id,tier,kind,capabilities,location\n\
                mn-desk-01,mynumber,desktop,card;vein,1F 戸籍係\n\
                lg-counter-03,lgwan,shared,card;face,\"1F 市民課, 窓口3\"\n\
                net-vdi-01,internet,vdi,,\n";
    std::fs::write(&csv, good).expect("csv");
    let (code, out, err) = run(&["device", "import", "--dry-run", csv.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 would be added"), "{out}");
    let (code, out, err) = run(&["device", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("mn-desk-01"), "dry run wrote: {out}");

    let (code, out, err) = run(&["device", "import", csv.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 added, 0 changed, 0 unchanged"), "{out}");
    let (code, out, err) = run(&["device", "import", csv.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 added, 0 changed, 3 unchanged"), "{out}");

    let (code, out, err) = run(&["device", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("id "), "{out}");
    assert!(out.contains("1F 戸籍係"), "{out}");
    assert!(out.contains("card;face"), "{out}");
    let (code, out, _) = run(&["device", "list", "--tier", "lgwan"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("lg-counter-03") && !out.contains("mn-desk-01"),
        "{out}"
    );
    let (_, out, _) = run(&["device", "list", "--kind", "vdi"]);
    assert!(
        out.contains("net-vdi-01") && !out.contains("lg-counter-03"),
        "{out}"
    );

    // The same devices as TOML, one moved: one change. `list --csv` reimports as is.
    let toml = dir.path().join("devices.toml");
    std::fs::write(
        &toml,
        r#"
[[device]]
id = "mn-desk-01"
tier = "mynumber"
kind = "desktop"
capabilities = ["card", "vein"]
location = "2F 戸籍係"
"#,
    )
    .expect("toml");
    let (code, out, err) = run(&["device", "import", toml.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("~ mn-desk-01 (device 1) changed: location"),
        "{out}"
    );
    let (code, listed, _) = run(&["device", "list", "--csv"]);
    assert_eq!(code, 0);
    std::fs::write(&csv, &listed).expect("csv");
    let (code, out, err) = run(&["device", "import", csv.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 added, 0 changed, 3 unchanged"), "{out}");

    let store = Store::open(&store_url, &tenant).await.expect("store");
    let devices = store.load_entities().await.expect("entities").devices;
    assert_eq!(devices.len(), 3);
    let counter = devices.iter().find(|d| d.id == "lg-counter-03").unwrap();
    assert_eq!(counter.location, "1F 市民課, 窓口3");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_import_and_list_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("engine.db").display());
    device_import_and_list(url, "default".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_import_and_list_on_postgres() {
    device_import_and_list(pg_url(), unique_tenant("devimport")).await;
}

/// An unknown column in a users file does not hide the rows' problems; the file is
/// refused before the gateway (nothing listens at the address given) is called.
#[test]
fn users_import_names_an_unknown_column_and_every_bad_row() {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("users.csv");
    std::fs::write(
        &csv,
        "user,name,shoe_size,pin\nu013,佐藤 花子,24,4826\n,no id,25,\nu014,鈴木,26,1234\n",
    )
    .expect("csv");
    let (code, out, err) = sekisho(
        &[
            "users",
            "import",
            csv.to_str().unwrap(),
            "--gateway",
            "https://127.0.0.1:1",
        ],
        "",
    );
    assert_eq!(code, 2, "{out}{err}");
    for expected in [
        "users.csv: row 1, column shoe_size: unknown column 'shoe_size' (column 3)",
        "users.csv: row 3, column user: user id empty",
        "users.csv: row 4, column pin: a PIN must not be one repeated digit or a run",
        "3 problem(s); nothing was imported",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!err.contains("cannot connect"), "{err}");
}

#[test]
fn a_missing_sqlite_store_is_not_created() {
    let (code, _, err) = sekisho(
        &[
            "device",
            "list",
            "--store",
            "sqlite:///nonexistent/engine.db",
        ],
        "",
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("no engine store at /nonexistent/engine.db"),
        "{err}"
    );
}

/// A bulk import through the coalescing transport, both ways: the request (about
/// 420 KiB, many TLS records and HTTP/2 frames, each flush yielding once) and the
/// answer (one result per user, about 80 KiB) cross mutual TLS over
/// `sekisho_policy_engine::transport` whole and in order, and are applied.
#[tokio::test]
async fn a_bulk_import_crosses_the_coalesced_transport_both_ways() {
    let gw = TestGateway::start(Tier::Lgwan, |_| {}).await;
    let users: Vec<pb::ImportUser> = (0..2_000u32)
        .map(|i| pb::ImportUser {
            id: format!("bulk{i:05}"),
            name: Some(format!("{i:05} {}", "名".repeat(60))),
            department: Some(format!("課{i}")),
            row: i + 2,
            ..pb::ImportUser::default()
        })
        .collect();
    let mut admin = gw.admin().await;
    let answer = admin
        .import_users(pb::ImportUsersRequest {
            users,
            dry_run: false,
        })
        .await
        .expect("import over the coalesced transport")
        .into_inner();
    assert!(answer.applied, "{:?}", answer.problems);
    assert_eq!(answer.users.len(), 2_000);
    for (i, u) in answer.users.iter().enumerate() {
        assert_eq!(u.user, format!("bulk{i:05}"));
        assert_eq!(u.change, "added");
    }
    let last = gw
        .running
        .gateway
        .store
        .user("bulk01999")
        .await
        .unwrap()
        .expect("the last user was written");
    assert!(last.name.starts_with("01999 名"), "{last:?}");
    gw.stop().await;
}
