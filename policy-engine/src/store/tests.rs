//! The same suite runs against SQLite (a temporary file per test) and PostgreSQL
//! (`SEKISHO_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/sekisho_test`;
//! each test uses its own random tenant, so tests and test processes run in parallel).
//! An unreachable PostgreSQL fails the PostgreSQL tests: it never skips them.

use super::*;
use crate::factor::Factor;

impl Fx {
    async fn open(&self) -> Store {
        self.open_tenant(&self.tenant).await
    }

    async fn open_tenant(&self, tenant: &str) -> Store {
        self.opened(Store::open(&self.url, tenant).await)
    }

    async fn cleanup(&self, store: &Store) {
        if self.kind != Kind::Postgres {
            return;
        }
        for table in [
            "policy_files",
            "policy_versions",
            "users",
            "entity_groups",
            "devices",
            "entity_generations",
            "directory_users",
            "directory_groups",
            "directory_state",
            "directory_runs",
        ] {
            let _ = sqlx::query(&format!("DELETE FROM {table} WHERE tenant = $1"))
                .bind(store.tenant())
                .execute(store.pool())
                .await;
        }
    }
}

use crate::store::testing::{unique_tenant, Fx, Kind};

on_both_backends!(
    publish_numbers_versions_and_lists_newest_first,
    get_version_latest_by_number_and_missing,
    versions_are_immutable,
    concurrent_publishes_get_unique_contiguous_complete_versions,
    publish_refuses_duplicate_file_names,
    entities_upsert_replace_delete_round_trip,
    apply_entities_is_all_or_nothing,
    tenants_are_isolated,
    corrupt_rows_name_table_id_and_column,
    load_20000_users,
    reopening_keeps_data_and_migrations_run_once,
    entity_generation_counts_committed_changes,
    a_change_checked_against_stale_entities_is_refused,
    a_directory_sync_planned_against_a_stale_mirror_is_refused,
);

// ---------------------------------------------------------------------------
// Test data

fn sources(tag: &str, files: usize) -> PolicySources {
    PolicySources::new(
        format!("namespace Sekisho {{ }} // schema {tag}"),
        (0..files)
            .map(|i| PolicyFile {
                name: format!("f{i}.cedar"),
                text: format!(
                    "// policy file {i} of {tag}\npermit (principal, action, resource);\n"
                ),
            })
            .collect(),
    )
}

fn user(id: &str, enrolled: &[Factor], groups: &[&str]) -> UserRecord {
    UserRecord {
        id: id.to_string(),
        department: "市民課".to_string(),
        role: "staff".to_string(),
        enrolled: enrolled.iter().copied().collect(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn group(id: &str, parents: &[&str]) -> GroupRecord {
    GroupRecord {
        id: id.to_string(),
        parents: parents.iter().map(|g| g.to_string()).collect(),
    }
}

fn device(id: &str, tier: Tier, kind: DeviceKind, caps: &[&str]) -> DeviceRecord {
    DeviceRecord {
        id: id.to_string(),
        tier,
        kind,
        capabilities: Capabilities::parse_names(caps).expect("test capabilities"),
        location: "本庁舎 1F".to_string(),
    }
}

fn sample_batch() -> EntityBatch {
    EntityBatch {
        users: vec![
            user("u1", &[Factor::Card, Factor::Password], &["counter"]),
            user(
                "u2",
                &[Factor::Face, Factor::Password, Factor::MynumberCard],
                &["citizen"],
            ),
            user("u3", &[], &[]),
        ],
        groups: vec![group("citizen", &[]), group("counter", &["citizen"])],
        devices: vec![
            device("d1", Tier::Lgwan, DeviceKind::Desktop, &["card"]),
            device(
                "d2",
                Tier::Mynumber,
                DeviceKind::Shared,
                &["card", "face", "vein"],
            ),
        ],
    }
}

fn sorted(mut b: EntityBatch) -> EntityBatch {
    b.users.sort_by(|x, y| x.id.cmp(&y.id));
    b.groups.sort_by(|x, y| x.id.cmp(&y.id));
    b.devices.sort_by(|x, y| x.id.cmp(&y.id));
    b
}

// ---------------------------------------------------------------------------
// Cases run on both backends

async fn publish_numbers_versions_and_lists_newest_first(fx: Fx) {
    let s = fx.open().await;
    assert_eq!(s.tenant(), fx.tenant);
    assert_eq!(
        s.backend(),
        if fx.kind == Kind::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
    assert_eq!(s.latest_version().await.unwrap(), None);
    assert!(s.list_versions().await.unwrap().is_empty());
    assert!(s.get_version(None).await.unwrap().is_none());

    let mut published = Vec::new();
    for (i, tag) in ["a", "b", "c"].iter().enumerate() {
        let src = sources(tag, i + 1);
        let info = s
            .publish(&src, &format!("version {tag}"), (i + 1) as u32)
            .await
            .unwrap();
        assert_eq!(info.version, i as u64 + 1);
        assert_eq!(info.digest, src.digest());
        assert_eq!(info.comment, format!("version {tag}"));
        assert_eq!(info.policy_count, (i + 1) as u32);
        assert!(info.created_at.ends_with('Z'), "{}", info.created_at);
        chrono::DateTime::parse_from_rfc3339(&info.created_at).expect("RFC 3339 timestamp");
        published.push(info);
    }
    let listed = s.list_versions().await.unwrap();
    assert_eq!(
        listed.iter().map(|v| v.version).collect::<Vec<_>>(),
        [3, 2, 1]
    );
    published.reverse();
    assert_eq!(listed, published);
    assert_eq!(
        s.latest_version().await.unwrap().as_ref(),
        published.first()
    );
    fx.cleanup(&s).await;
}

async fn get_version_latest_by_number_and_missing(fx: Fx) {
    let s = fx.open().await;
    let a = sources("a", 2);
    let b = sources("b", 3);
    let ia = s.publish(&a, "first", 2).await.unwrap();
    let ib = s.publish(&b, "second", 3).await.unwrap();

    let (info, src) = s.get_version(None).await.unwrap().expect("latest");
    assert_eq!((info, src), (ib.clone(), b.clone()));
    let (info, src) = s.get_version(Some(1)).await.unwrap().expect("version 1");
    assert_eq!((info, src), (ia, a));
    let (info, _) = s.get_version(Some(2)).await.unwrap().expect("version 2");
    assert_eq!(info, ib);
    for missing in [0, 3, 1_000, u64::MAX] {
        assert!(
            s.get_version(Some(missing)).await.unwrap().is_none(),
            "version {missing}"
        );
    }
    // A version with no files and an empty schema round-trips too.
    let empty = PolicySources::new(String::new(), vec![]);
    let ie = s.publish(&empty, "", 0).await.unwrap();
    assert_eq!(s.get_version(Some(3)).await.unwrap(), Some((ie, empty)));
    fx.cleanup(&s).await;
}

async fn versions_are_immutable(fx: Fx) {
    let s = fx.open().await;
    let a = sources("a", 2);
    s.publish(&a, "one", 2).await.unwrap();
    let before = s.get_version(Some(1)).await.unwrap().expect("v1");
    // Same file names, different texts: must not overwrite version 1's files.
    s.publish(&sources("b", 2), "two", 2).await.unwrap();
    // Identical sources again: a new version with the same digest, not a no-op.
    let again = s.publish(&a, "one again", 2).await.unwrap();
    assert_eq!(again.version, 3);
    assert_eq!(again.digest, before.0.digest);
    assert_eq!(s.get_version(Some(1)).await.unwrap(), Some(before.clone()));
    assert_eq!(
        s.get_version(Some(2)).await.unwrap().expect("v2").1,
        sources("b", 2)
    );
    fx.cleanup(&s).await;
}

async fn concurrent_publishes_get_unique_contiguous_complete_versions(fx: Fx) {
    // Two pools on the same database behave like two engine replicas.
    let stores = [fx.open().await, fx.open().await];
    let mut tasks = Vec::new();
    for i in 0..10usize {
        let s = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let src = sources(&format!("t{i}"), i % 4 + 1);
            (
                i,
                s.publish(&src, &format!("task {i}"), (i % 4 + 1) as u32)
                    .await,
            )
        }));
    }
    let mut won = 0u64;
    for t in tasks {
        let (i, r) = t.await.expect("task");
        match r {
            Ok(_) => won += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("task {i}: unexpected error {e}"),
        }
    }
    assert!(won >= 1);
    let s = &stores[0];
    let mut numbers: Vec<u64> = s
        .list_versions()
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    numbers.reverse();
    assert_eq!(
        numbers,
        (1..=won).collect::<Vec<_>>(),
        "unique and contiguous"
    );
    for v in numbers {
        let (info, src) = s
            .get_version(Some(v))
            .await
            .unwrap()
            .expect("stored version");
        let i: usize = info
            .comment
            .strip_prefix("task ")
            .and_then(|n| n.parse().ok())
            .expect("comment");
        assert_eq!(
            src,
            sources(&format!("t{i}"), i % 4 + 1),
            "version {v} is complete"
        );
        assert_eq!(info.digest, src.digest());
    }
    fx.cleanup(s).await;
}

async fn publish_refuses_duplicate_file_names(fx: Fx) {
    let s = fx.open().await;
    let f = PolicyFile {
        name: "x.cedar".into(),
        text: "permit (principal, action, resource);".into(),
    };
    let dup = PolicySources::new(String::new(), vec![f.clone(), f]);
    let err = s.publish(&dup, "dup", 2).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Duplicate { table: "policy_files", id } if id == "x.cedar"),
        "{err}"
    );
    assert_eq!(s.latest_version().await.unwrap(), None);
    fx.cleanup(&s).await;
}

async fn entities_upsert_replace_delete_round_trip(fx: Fx) {
    let s = fx.open().await;
    assert_eq!(s.load_entities().await.unwrap(), EntityBatch::default());
    let batch = sample_batch();
    s.apply_entities(&batch, &EntityDeletion::default())
        .await
        .unwrap();
    assert_eq!(s.load_entities().await.unwrap(), sorted(batch.clone()));

    // Replace u1 and d1, add g3 and u4, delete u2, d2 and group counter (after moving u1
    // out of it); delete-and-upsert u3 in one call keeps the upserted record.
    let change = EntityBatch {
        users: vec![
            user("u1", &[Factor::Totp, Factor::Password], &["g3"]),
            user("u3", &[Factor::Vein], &["citizen"]),
            user("u4", &[Factor::EmergencyOtp], &["g3", "citizen"]),
        ],
        groups: vec![group("g3", &["citizen"])],
        devices: vec![device(
            "d1",
            Tier::Telework,
            DeviceKind::Telework,
            &["face", "password"],
        )],
    };
    let del = EntityDeletion {
        users: vec!["u2".into(), "u3".into(), "nobody".into()],
        groups: vec!["counter".into()],
        devices: vec!["d2".into()],
    };
    s.apply_entities(&change, &del).await.unwrap();
    let expected = EntityBatch {
        users: vec![
            change.users[0].clone(),
            change.users[1].clone(),
            change.users[2].clone(),
        ],
        groups: vec![group("citizen", &[]), group("g3", &["citizen"])],
        devices: vec![change.devices[0].clone()],
    };
    let loaded = s.load_entities().await.unwrap();
    assert_eq!(loaded, sorted(expected));
    assert_eq!(loaded.devices[0].capabilities.names(), ["face"]);

    // Deleting everything leaves nothing.
    let all = EntityDeletion {
        users: vec!["u1".into(), "u3".into(), "u4".into()],
        groups: vec!["citizen".into(), "g3".into()],
        devices: vec!["d1".into()],
    };
    s.apply_entities(&EntityBatch::default(), &all)
        .await
        .unwrap();
    assert!(s.load_entities().await.unwrap().is_empty());
    fx.cleanup(&s).await;
}

async fn apply_entities_is_all_or_nothing(fx: Fx) {
    let s = fx.open().await;
    s.apply_entities(&sample_batch(), &EntityDeletion::default())
        .await
        .unwrap();
    let before = s.load_entities().await.unwrap();

    // Enough users that the bad one sits in a later INSERT chunk than the first, after
    // deletes and a group upsert already ran in the same transaction.
    let mut users: Vec<UserRecord> = (0..7_000)
        .map(|i| user(&format!("bulk{i:05}"), &[Factor::Password], &["citizen"]))
        .collect();
    users[6_500].id = "x".repeat(300);
    let bad = EntityBatch {
        users,
        groups: vec![group("new-group", &[])],
        devices: vec![device("d9", Tier::Internet, DeviceKind::Mobile, &[])],
    };
    let del = EntityDeletion {
        users: vec!["u1".into()],
        groups: vec![],
        devices: vec!["d1".into()],
    };
    let err = s.apply_entities(&bad, &del).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Rejected { table: "users", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("table 'users'"), "{err}");
    assert_eq!(
        s.load_entities().await.unwrap(),
        before,
        "store unchanged after a failed batch"
    );

    // A duplicate id in one batch is refused before anything is written.
    let dup = EntityBatch {
        devices: vec![
            device("d1", Tier::Internet, DeviceKind::Vdi, &[]),
            device("d1", Tier::Lgwan, DeviceKind::Vdi, &[]),
        ],
        ..Default::default()
    };
    let err = s.apply_entities(&dup, &del).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Duplicate { table: "devices", id } if id == "d1"),
        "{err}"
    );
    assert_eq!(s.load_entities().await.unwrap(), before);

    // An empty id violates the CHECK too.
    let empty = EntityBatch {
        groups: vec![group("", &[])],
        ..Default::default()
    };
    let err = s
        .apply_entities(&empty, &EntityDeletion::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Rejected {
                table: "entity_groups",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(s.load_entities().await.unwrap(), before);
    fx.cleanup(&s).await;
}

async fn entity_generation_counts_committed_changes(fx: Fx) {
    let store = fx.open().await;
    assert_eq!(store.entity_generation().await.unwrap(), 0);
    let g1 = store
        .apply_entities(&sample_batch(), &EntityDeletion::default())
        .await
        .unwrap();
    assert_eq!(g1, 1);
    // A refused change (an id twice) bumps nothing.
    let twice = EntityBatch {
        users: vec![user("u9", &[], &[]), user("u9", &[], &[])],
        ..Default::default()
    };
    assert!(store
        .apply_entities(&twice, &EntityDeletion::default())
        .await
        .is_err());
    assert_eq!(store.entity_generation().await.unwrap(), 1);
    let g2 = store
        .apply_entities(
            &EntityBatch::default(),
            &EntityDeletion {
                users: vec!["u1".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((g2, store.entity_generation().await.unwrap()), (2, 2));
    fx.cleanup(&store).await;
}

async fn tenants_are_isolated(fx: Fx) {
    let a = fx.open().await;
    let other = unique_tenant("other");
    let b = fx.open_tenant(&other).await;
    assert_eq!(b.tenant(), other);

    a.publish(&sources("a1", 1), "a1", 1).await.unwrap();
    a.publish(&sources("a2", 1), "a2", 1).await.unwrap();
    a.apply_entities(&sample_batch(), &EntityDeletion::default())
        .await
        .unwrap();
    assert_eq!(b.latest_version().await.unwrap(), None);
    assert!(b.get_version(Some(1)).await.unwrap().is_none());
    assert!(b.load_entities().await.unwrap().is_empty());

    // Numbering is per tenant; the same ids in another tenant are other rows.
    let ib = b.publish(&sources("b1", 2), "b1", 2).await.unwrap();
    assert_eq!(ib.version, 1);
    let mine = EntityBatch {
        users: vec![user("u1", &[Factor::Pin], &[])],
        ..Default::default()
    };
    b.apply_entities(
        &mine,
        &EntityDeletion {
            devices: vec!["d1".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(b.load_entities().await.unwrap(), mine);
    assert_eq!(a.load_entities().await.unwrap(), sorted(sample_batch()));
    assert_eq!(
        a.get_version(Some(1)).await.unwrap().expect("a v1").1,
        sources("a1", 1)
    );
    assert_eq!(
        a.latest_version().await.unwrap().map(|v| v.version),
        Some(2)
    );
    fx.cleanup(&a).await;
    fx.cleanup(&b).await;
}

async fn corrupt_rows_name_table_id_and_column(fx: Fx) {
    let s = fx.open().await;
    s.apply_entities(&sample_batch(), &EntityDeletion::default())
        .await
        .unwrap();
    let set = |sql: &'static str, value: &'static str, id: &'static str| {
        let s = s.clone();
        async move {
            sqlx::query(sql)
                .bind(value)
                .bind(s.tenant())
                .bind(id)
                .execute(s.pool())
                .await
                .expect("test update");
        }
    };
    let expect_corrupt =
        |err: StoreError, table: &str, id: &str, column: &str, needle: &str| match &err {
            StoreError::CorruptRow {
                table: t,
                id: i,
                column: c,
                message,
            } => {
                assert_eq!((*t, i.as_str(), *c), (table, id, column), "{err}");
                assert!(message.contains(needle), "{err}");
                let shown = err.to_string();
                assert!(
                    shown.contains(table) && shown.contains(id) && shown.contains(column),
                    "{shown}"
                );
            }
            other => panic!("expected CorruptRow, got {other}"),
        };

    set(
        "UPDATE users SET enrolled = $1 WHERE tenant = $2 AND id = $3",
        "not json",
        "u2",
    )
    .await;
    expect_corrupt(
        s.load_entities().await.unwrap_err(),
        "users",
        "u2",
        "enrolled",
        "JSON",
    );
    set(
        "UPDATE users SET enrolled = $1 WHERE tenant = $2 AND id = $3",
        "[\"card\", \"iris\"]",
        "u2",
    )
    .await;
    expect_corrupt(
        s.load_entities().await.unwrap_err(),
        "users",
        "u2",
        "enrolled",
        "iris",
    );
    set(
        "UPDATE users SET enrolled = $1 WHERE tenant = $2 AND id = $3",
        "[]",
        "u2",
    )
    .await;
    set(
        "UPDATE users SET \"groups\" = $1 WHERE tenant = $2 AND id = $3",
        "{\"a\": 1}",
        "u1",
    )
    .await;
    expect_corrupt(
        s.load_entities().await.unwrap_err(),
        "users",
        "u1",
        "groups",
        "JSON",
    );
    set(
        "UPDATE users SET \"groups\" = $1 WHERE tenant = $2 AND id = $3",
        "[]",
        "u1",
    )
    .await;
    set(
        "UPDATE entity_groups SET parents = $1 WHERE tenant = $2 AND id = $3",
        "[1]",
        "counter",
    )
    .await;
    expect_corrupt(
        s.load_entities().await.unwrap_err(),
        "entity_groups",
        "counter",
        "parents",
        "JSON",
    );
    set(
        "UPDATE entity_groups SET parents = $1 WHERE tenant = $2 AND id = $3",
        "[]",
        "counter",
    )
    .await;
    set(
        "UPDATE devices SET tier = $1 WHERE tenant = $2 AND id = $3",
        "intranet",
        "d1",
    )
    .await;
    expect_corrupt(
        s.load_entities().await.unwrap_err(),
        "devices",
        "d1",
        "tier",
        "intranet",
    );
    set(
        "UPDATE devices SET tier = $1 WHERE tenant = $2 AND id = $3",
        "lgwan",
        "d1",
    )
    .await;
    set(
        "UPDATE devices SET kind = $1 WHERE tenant = $2 AND id = $3",
        "kiosk",
        "d2",
    )
    .await;
    expect_corrupt(
        s.load_entities().await.unwrap_err(),
        "devices",
        "d2",
        "kind",
        "kiosk",
    );
    set(
        "UPDATE devices SET kind = $1 WHERE tenant = $2 AND id = $3",
        "shared",
        "d2",
    )
    .await;
    set(
        "UPDATE devices SET capabilities = $1 WHERE tenant = $2 AND id = $3",
        "[\"laser\"]",
        "d2",
    )
    .await;
    expect_corrupt(
        s.load_entities().await.unwrap_err(),
        "devices",
        "d2",
        "capabilities",
        "laser",
    );
    set(
        "UPDATE devices SET capabilities = $1 WHERE tenant = $2 AND id = $3",
        "[\"card\"]",
        "d2",
    )
    .await;
    assert_eq!(s.load_entities().await.unwrap().len(), 7, "all repaired");

    // A tampered policy file is caught by the digest check.
    s.publish(&sources("a", 2), "a", 2).await.unwrap();
    sqlx::query(
        "UPDATE policy_files SET text = $1 WHERE tenant = $2 AND version = $3 AND name = $4",
    )
    .bind("forbid (principal, action, resource);")
    .bind(s.tenant())
    .bind(1i64)
    .bind("f0.cedar")
    .execute(s.pool())
    .await
    .expect("tamper");
    expect_corrupt(
        s.get_version(Some(1)).await.unwrap_err(),
        "policy_versions",
        "1",
        "digest",
        "does not match",
    );
    fx.cleanup(&s).await;
}

async fn load_20000_users(fx: Fx) {
    let s = fx.open().await;
    let groups: Vec<GroupRecord> = (0..20).map(|g| group(&format!("g{g:02}"), &[])).collect();
    let factor_sets = [
        vec![Factor::Card, Factor::Password],
        vec![Factor::Face, Factor::Password],
        vec![Factor::MynumberCard, Factor::Card, Factor::Vein],
        vec![Factor::Totp, Factor::Password, Factor::Pin],
    ];
    let users: Vec<UserRecord> = (0..20_000)
        .map(|i| {
            let g1 = format!("g{:02}", i % 20);
            let g2 = format!("g{:02}", (i / 20) % 20);
            user(&format!("u{i:06}"), &factor_sets[i % 4], &[&g1, &g2])
        })
        .collect();
    let devices: Vec<DeviceRecord> = (0..500)
        .map(|i| {
            device(
                &format!("dev{i:04}"),
                Tier::ALL[i % 4],
                DeviceKind::ALL[i % 5],
                &[["card"], ["face"], ["vein"]][i % 3],
            )
        })
        .collect();
    let batch = EntityBatch {
        users,
        groups,
        devices,
    };
    s.apply_entities(&batch, &EntityDeletion::default())
        .await
        .unwrap();
    let loaded = s.load_entities().await.unwrap();
    assert_eq!(loaded.users.len(), 20_000);
    assert_eq!(loaded, sorted(batch.clone()));

    // Upserting all of them again replaces, never duplicates.
    let mut again = batch.clone();
    for u in &mut again.users {
        u.role = "manager".into();
    }
    s.apply_entities(&again, &EntityDeletion::default())
        .await
        .unwrap();
    let loaded = s.load_entities().await.unwrap();
    assert_eq!(loaded.users.len(), 20_000);
    assert!(loaded.users.iter().all(|u| u.role == "manager"));
    fx.cleanup(&s).await;
}

async fn reopening_keeps_data_and_migrations_run_once(fx: Fx) {
    // Several handles opened at the same moment all migrate safely.
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = fx.url.clone();
            let tenant = fx.tenant.clone();
            tokio::spawn(async move { Store::open(&url, &tenant).await })
        })
        .collect();
    for o in opens {
        let s = o
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("parallel open: {e}"));
        s.close().await;
    }
    let s = fx.open().await;
    let info = s.publish(&sources("kept", 2), "kept", 2).await.unwrap();
    s.apply_entities(&sample_batch(), &EntityDeletion::default())
        .await
        .unwrap();
    s.close().await;

    let s = fx.open().await;
    assert_eq!(s.latest_version().await.unwrap(), Some(info));
    assert_eq!(
        s.get_version(None).await.unwrap().expect("kept").1,
        sources("kept", 2)
    );
    assert_eq!(s.load_entities().await.unwrap(), sorted(sample_batch()));
    let recorded: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM sekisho_migrations ORDER BY version")
            .fetch_all(s.pool())
            .await
            .unwrap();
    assert_eq!(
        recorded,
        migrations::MIGRATIONS
            .iter()
            .map(|m| m.version)
            .collect::<Vec<_>>()
    );
    if fx.kind == Kind::Sqlite {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(mode.to_ascii_lowercase(), "wal");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(fk, 1);
    }
    fx.cleanup(&s).await;
}

// ---------------------------------------------------------------------------
// Backend-independent cases

#[tokio::test]
async fn bad_urls_are_refused_by_name() {
    for url in [
        "mysql://root@localhost/db",
        "http://example.com/x",
        "sekisho.db",
        "",
        "sqlite:",
        "sqlite://",
    ] {
        match Store::open(url, "t").await {
            Err(StoreError::UnsupportedUrl { url: shown }) => assert_eq!(shown, url),
            Err(e) => panic!("{url}: expected UnsupportedUrl, got {e}"),
            Ok(_) => panic!("{url}: opened"),
        }
    }
    let err = Store::open("mysql://admin:hunter2@db/x", "t")
        .await
        .unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("mysql://admin:***@db/x") && !shown.contains("hunter2"),
        "{shown}"
    );
}

#[tokio::test]
async fn missing_sqlite_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("x.db");
    let err = Store::open(&format!("sqlite://{}", path.display()), "t")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::MissingDirectory { .. }), "{err}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}

#[tokio::test]
async fn connection_failure_names_url_without_password() {
    // Port 1 on loopback refuses connections at once.
    let err = Store::open(
        "postgres://sekisho:s3cret@127.0.0.1:1/db?password=s3cret",
        "t",
    )
    .await
    .unwrap_err();
    let shown = err.to_string();
    assert!(matches!(err, StoreError::Connect { .. }), "{shown}");
    assert!(
        shown.contains("postgres://sekisho:***@127.0.0.1:1/db?password=***"),
        "{shown}"
    );
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[tokio::test]
async fn invalid_tenants_are_refused() {
    for t in ["", " city", "a\nb"] {
        let err = Store::open("sqlite::memory:", t).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidTenant { .. }), "{err}");
    }
}

#[tokio::test]
async fn in_memory_sqlite_works() {
    let s = Store::open("sqlite::memory:", "mem").await.unwrap();
    s.publish(&sources("m", 1), "m", 1).await.unwrap();
    s.apply_entities(&sample_batch(), &EntityDeletion::default())
        .await
        .unwrap();
    assert_eq!(
        s.get_version(None).await.unwrap().expect("v1").1,
        sources("m", 1)
    );
    assert_eq!(s.load_entities().await.unwrap(), sorted(sample_batch()));
}

#[test]
fn redaction() {
    assert_eq!(redact_url("postgres://u:p@h/db"), "postgres://u:***@h/db");
    assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(
        redact_url("postgresql://u:p:q@h:5/db?sslmode=require&password=x"),
        "postgresql://u:***@h:5/db?sslmode=require&password=***"
    );
    assert_eq!(redact_url("sqlite:///tmp/a.db"), "sqlite:///tmp/a.db");
}

#[test]
fn sqlite_urls_become_absolute_and_creatable() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a b#c.db");
    let t = parse_url(&format!("sqlite://{}", p.display())).unwrap();
    assert_eq!(t.backend, Backend::Sqlite);
    assert!(
        t.connect_url.ends_with("a%20b%23c.db?mode=rwc"),
        "{}",
        t.connect_url
    );
    let t = parse_url(&format!("sqlite://{}?mode=ro", p.display())).unwrap();
    assert!(t.connect_url.ends_with("?mode=ro"), "{}", t.connect_url);
}

/// Timing of a city-sized import and load (100,000 users); prints, asserts nothing
/// about time. `cargo test -p sekisho-policy-engine store::tests::timing -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing run; prints figures"]
async fn timing_100000_users() {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let fx = Fx::new(kind, "timing");
        let s = fx.open().await;
        let groups: Vec<GroupRecord> = (0..50).map(|g| group(&format!("g{g:02}"), &[])).collect();
        let users: Vec<UserRecord> = (0..100_000)
            .map(|i| {
                user(
                    &format!("u{i:06}"),
                    &[Factor::Card, Factor::Password],
                    &[&format!("g{:02}", i % 50)],
                )
            })
            .collect();
        let batch = EntityBatch {
            users,
            groups,
            devices: vec![],
        };
        let t = std::time::Instant::now();
        s.apply_entities(&batch, &EntityDeletion::default())
            .await
            .unwrap();
        let apply = t.elapsed();
        let t = std::time::Instant::now();
        let loaded = s.load_entities().await.unwrap();
        let load = t.elapsed();
        assert_eq!(loaded.users.len(), 100_000);
        println!("{kind:?}: apply 100,000 users {apply:?}, load {load:?}");
        fx.cleanup(&s).await;
    }
}

#[test]
fn pow2_chunks_cover_the_rows_in_few_sizes() {
    for (len, max) in [
        (0, 64),
        (1, 64),
        (7, 64),
        (64, 64),
        (300, 64),
        (5, 3),
        (4, 0),
    ] {
        let rows: Vec<usize> = (0..len).collect();
        let chunks: Vec<&[usize]> = super::pow2_chunks(&rows, max).collect();
        assert_eq!(chunks.concat(), rows, "len {len} max {max}");
        for c in &chunks {
            assert!(
                c.len().is_power_of_two() && c.len() <= max.max(1),
                "len {len} max {max}: a chunk of {}",
                c.len()
            );
        }
    }
    let sizes: Vec<usize> = super::pow2_chunks(&[0; 300], 64).map(<[_]>::len).collect();
    assert_eq!(sizes, [64, 64, 64, 64, 32, 8, 4]);
}

async fn a_change_checked_against_stale_entities_is_refused(fx: Fx) {
    // Two pools on the same database behave like two engine replicas.
    let (a, b) = (fx.open().await, fx.open().await);
    let first = a
        .apply_entities_on(&sample_batch(), &EntityDeletion::default(), 0)
        .await
        .unwrap();
    assert_eq!(first, 1);

    // B checked its change against generation 0, before A's landed.
    let mine = EntityBatch {
        users: vec![user("late", &[Factor::Pin], &[])],
        ..Default::default()
    };
    let err = b
        .apply_entities_on(&mine, &EntityDeletion::default(), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::EntitiesMoved {
                expected: 0,
                found: 1
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was stored"), "{err}");
    assert_eq!(b.load_entities().await.unwrap(), sorted(sample_batch()));

    // Side by side, every change checked against the same generation: exactly one
    // is stored, the others are refused rather than built on a generation twice.
    let mut tasks = Vec::new();
    for i in 0..6usize {
        let s = [&a, &b][i % 2].clone();
        let batch = EntityBatch {
            users: vec![user(&format!("racer{i}"), &[Factor::Pin], &[])],
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            s.apply_entities_on(&batch, &EntityDeletion::default(), 1)
                .await
        }));
    }
    let mut stored = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(generation) => {
                assert_eq!(generation, 2);
                stored += 1;
            }
            Err(StoreError::EntitiesMoved {
                expected: 1,
                found: 2,
            }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(a.entity_generation().await.unwrap(), 2);
    fx.cleanup(&a).await;
}

async fn a_directory_sync_planned_against_a_stale_mirror_is_refused(fx: Fx) {
    use crate::directory::diff::{MirrorUser, SyncPlan};
    use crate::store::directory::{SyncBasis, SyncRunRecord};

    let (a, b) = (fx.open().await, fx.open().await);
    let plan = |user: &str| SyncPlan {
        mirror_upserts: vec![MirrorUser {
            id: user.into(),
            dn: format!("uid={user},ou=people,dc=city"),
            disabled: false,
            record: Default::default(),
        }],
        ..Default::default()
    };
    let run = |outcome: &str| SyncRunRecord {
        outcome: outcome.into(),
        ..Default::default()
    };
    let basis = |mirror: &crate::directory::diff::Mirror| SyncBasis {
        entities: 0,
        mirror: mirror.as_of_run,
    };

    // Both replicas read the mirror; B's run is applied first.
    let (seen_a, seen_b) = (
        a.directory_mirror().await.unwrap(),
        b.directory_mirror().await.unwrap(),
    );
    assert_eq!((seen_a.as_of_run, seen_b.as_of_run), (0, 0));
    let (applied, _, _) = b
        .commit_directory_sync(
            &plan("from-b"),
            Some("hw-b"),
            &run("ok"),
            vec![],
            basis(&seen_b),
        )
        .await
        .unwrap();
    assert_eq!(applied, 1);

    // A's plan was diffed against the mirror before B's run: refused, nothing of it
    // stored (no mirror row, no high-water mark, no run record).
    let err = a
        .commit_directory_sync(
            &plan("from-a"),
            Some("hw-a"),
            &run("ok"),
            vec![],
            basis(&seen_a),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::DirectoryMoved {
                expected: 0,
                found: 1
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    let now = a.directory_mirror().await.unwrap();
    assert_eq!(now.as_of_run, 1);
    assert!(now.users.contains_key("from-b") && !now.users.contains_key("from-a"));
    assert_eq!(
        a.directory_high_water().await.unwrap().as_deref(),
        Some("hw-b")
    );
    assert_eq!(a.directory_runs(10).await.unwrap().len(), 1);

    // A run that changed nothing does not move the mark; planned again against the
    // fresh mirror, A's run is applied.
    a.record_directory_run(&run("failed")).await.unwrap();
    let fresh = a.directory_mirror().await.unwrap();
    assert_eq!(fresh.as_of_run, 1);
    let (applied, _, _) = a
        .commit_directory_sync(
            &plan("from-a"),
            Some("hw-a"),
            &run("ok"),
            vec![],
            basis(&fresh),
        )
        .await
        .unwrap();
    assert_eq!(applied, 3);
    assert_eq!(a.directory_mirror().await.unwrap().as_of_run, 3);
    fx.cleanup(&a).await;
}
