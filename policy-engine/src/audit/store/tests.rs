//! The audit store on SQLite (a temporary file per test) and PostgreSQL
//! (`SEKISHO_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/sekisho_test`,
//! a random tenant per test), like the policy store's suite. An unreachable
//! PostgreSQL fails the PostgreSQL tests: it never skips them.

use super::*;
use crate::audit::event::{format_ts, EventBody, Outcome, GENESIS_HASH};

/// 2026-11-22T00:00:00Z
const T0: i64 = 1_795_305_600_000;

impl Fx {
    async fn audit(&self) -> AuditStore {
        self.opened(AuditStore::open(&self.url, &self.tenant).await)
    }

    /// Runs a statement against this tenant's rows (tampering, cleanup).
    async fn exec(&self, s: &AuditStore, sql: &str, text: Option<&str>, seq: Option<i64>) {
        let mut q = sqlx::query(sql);
        if let Some(t) = text {
            q = q.bind(t.to_string());
        }
        q = q.bind(s.tenant().to_string());
        if let Some(seq) = seq {
            q = q.bind(seq);
        }
        q.execute(s.pool()).await.expect("statement");
    }

    async fn cleanup_audit(&self, s: &AuditStore) {
        if self.kind != Kind::Postgres {
            return;
        }
        for table in [
            "audit_events",
            "audit_gateways",
            "audit_decisions",
            "audit_journal_owners",
        ] {
            let _ = sqlx::query(&format!("DELETE FROM {table} WHERE tenant = $1"))
                .bind(s.tenant())
                .execute(s.pool())
                .await;
        }
    }
}

use crate::store::on_both_backends;
use crate::store::testing::{Fx, Kind};

on_both_backends!(
    ingest_twice_stores_once,
    stored_through_waits_for_gaps,
    query_filters_pages_and_orders,
    verify_passes_on_an_intact_chain,
    verify_names_an_altered_row,
    verify_names_a_deleted_row,
    import_jsonl_goes_through_ingest,
    malformed_batch_writes_nothing,
    reports_last_allowed_and_counts,
    decisions_round_trip,
    resent_event_is_a_duplicate,
    different_event_under_a_held_seq_refuses_the_shipment,
    a_journal_is_bound_to_its_first_shipper,
    a_forged_copy_under_the_genuine_hash_does_not_keep_the_genuine_event_out,
);

/// `n` events of one gateway's chain. Users u0..u2 on devices d0..d1 in turn, one
/// event a minute; every fifth event a denied logon, every seventh an unlock.
fn chain(gateway: &str, n: u64) -> Vec<AuditEvent> {
    chain_from(gateway, 1, GENESIS_HASH, n)
}

fn chain_from(gateway: &str, first: u64, prev: &str, n: u64) -> Vec<AuditEvent> {
    let mut prev = prev.to_string();
    (first..first + n)
        .map(|seq| {
            let (action, outcome) = if seq % 5 == 0 {
                ("logon", Outcome::Deny)
            } else if seq % 7 == 0 {
                ("unlock", Outcome::Allow)
            } else {
                ("logon", Outcome::Allow)
            };
            let mut b = EventBody::new(gateway, "lgwan", action, outcome);
            b.seq = seq;
            b.ts = format_ts(T0 + seq as i64 * 60_000);
            b.user = format!("u{}", seq % 3);
            b.operator = b.user.clone();
            b.device = format!("d{}", seq % 2);
            if outcome == Outcome::Deny {
                b.failed.insert("password".into(), "mismatch".into());
                b.reason = "factor_failed".into();
            } else {
                b.factors = vec!["card".into(), "password".into()];
            }
            let e = b.seal(&prev);
            prev = e.hash.clone();
            e
        })
        .collect()
}

fn records(events: &[AuditEvent]) -> Vec<Record> {
    events
        .iter()
        .map(|e| Record {
            gateway: e.body.gateway.clone(),
            seq: e.body.seq,
            json: e.to_json(),
        })
        .collect()
}

fn through(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(g, s)| (g.to_string(), *s)).collect()
}

async fn ingest_twice_stores_once(fx: Fx) {
    let s = fx.audit().await;
    let events = chain("gw-a", 10);
    let out = s.ingest(records(&events)).await.unwrap();
    assert_eq!(out.inserted, 10);
    assert_eq!(out.stored_through, through(&[("gw-a", 10)]));

    // The same batch again (a lost acknowledgement), and an overlapping one.
    let out = s.ingest(records(&events)).await.unwrap();
    assert_eq!(out.inserted, 0);
    assert_eq!(out.stored_through, through(&[("gw-a", 10)]));
    let more = chain_from("gw-a", 11, &events[9].hash, 5);
    let mut overlap = records(&events[5..]);
    overlap.extend(records(&more));
    let out = s.ingest(overlap).await.unwrap();
    assert_eq!(out.inserted, 5);
    assert_eq!(out.stored_through, through(&[("gw-a", 15)]));
    assert_eq!(s.count(&Filter::default()).await.unwrap(), 15);

    // Other bytes under the stored hash (an altered line, not another event): the
    // stored copy stays, for verification to judge.
    let mut other = events[2].clone();
    other.body.user = "mallory".into();
    let mut rec = records(std::slice::from_ref(&other));
    rec[0].json = other.to_json();
    let out = s.ingest(rec).await.unwrap();
    assert_eq!(out.inserted, 0);
    assert_eq!(s.event("gw-a", 3).await.unwrap(), Some(events[2].clone()));

    // The same seq twice in one call is stored once.
    let next = chain_from("gw-a", 16, &more[4].hash, 1);
    let mut twice = records(&next);
    twice.extend(records(&next));
    assert_eq!(s.ingest(twice).await.unwrap().inserted, 1);

    let gws = s.gateways().await.unwrap();
    assert_eq!(gws.len(), 1);
    assert_eq!((gws[0].stored_through, gws[0].received), (16, 16));
    assert!(s
        .ingest(Vec::new())
        .await
        .unwrap()
        .stored_through
        .is_empty());
    fx.cleanup_audit(&s).await;
}

async fn stored_through_waits_for_gaps(fx: Fx) {
    let s = fx.audit().await;
    let events = chain("gw-a", 20);
    let b = chain("gw-b", 3);
    // 1-5 and 8-12 of gw-a: stored through 5.
    let mut first = records(&events[0..5]);
    first.extend(records(&events[7..12]));
    first.extend(records(&b));
    let out = s.ingest(first).await.unwrap();
    assert_eq!(out.inserted, 13);
    assert_eq!(out.stored_through, through(&[("gw-a", 5), ("gw-b", 3)]));
    // 15-20 beyond another gap: still 5.
    let out = s.ingest(records(&events[14..20])).await.unwrap();
    assert_eq!(out.stored_through, through(&[("gw-a", 5)]));
    // Filling 6-7 joins up to 12; filling 13-14 then up to 20.
    let out = s.ingest(records(&events[5..7])).await.unwrap();
    assert_eq!(out.stored_through, through(&[("gw-a", 12)]));
    let out = s.ingest(records(&events[12..14])).await.unwrap();
    assert_eq!(out.stored_through, through(&[("gw-a", 20)]));
    // A journal that starts late is stored but never acknowledged past its gap.
    let late = chain("gw-c", 4);
    let out = s.ingest(records(&late[2..])).await.unwrap();
    assert_eq!(out.stored_through, through(&[("gw-c", 0)]));
    let gws = s.gateways().await.unwrap();
    let names: Vec<(&str, u64)> = gws
        .iter()
        .map(|g| (g.gateway.as_str(), g.stored_through))
        .collect();
    assert_eq!(names, [("gw-a", 20), ("gw-b", 3), ("gw-c", 0)]);
    fx.cleanup_audit(&s).await;
}

async fn query_filters_pages_and_orders(fx: Fx) {
    let s = fx.audit().await;
    let a = chain("gw-a", 30);
    let b = chain("gw-b", 30);
    s.ingest(records(&b)).await.unwrap();
    s.ingest(records(&a)).await.unwrap();
    let mut all: Vec<AuditEvent> = a.iter().chain(&b).cloned().collect();
    all.sort_by_key(Cursor::of);

    let filters = [
        Filter::default(),
        Filter {
            user: Some("u1".into()),
            ..Filter::default()
        },
        Filter {
            device: Some("d0".into()),
            since_ms: Some(T0 + 5 * 60_000),
            until_ms: Some(T0 + 20 * 60_000),
            ..Filter::default()
        },
        Filter {
            action: Some("logon".into()),
            outcome: Some(Outcome::Deny),
            ..Filter::default()
        },
        Filter {
            gateway: Some("gw-b".into()),
            tier: Some("lgwan".into()),
            action: Some("unlock".into()),
            ..Filter::default()
        },
        Filter {
            user: Some("nobody".into()),
            ..Filter::default()
        },
    ];
    for f in &filters {
        // One big page equals the in-memory selection...
        let page = Page {
            after: None,
            limit: 1000,
        };
        let want = crate::audit::query::select(&all, f, &page);
        assert_eq!(s.query(f, &page).await.unwrap(), want, "{f:?}");
        assert_eq!(s.count(f).await.unwrap(), want.len() as u64, "{f:?}");
        // ...and so do pages of 7 walked with the cursor, and the export pager.
        let mut walked = Vec::new();
        let mut after = None;
        loop {
            let page = Page { after, limit: 7 };
            let got = s.query(f, &page).await.unwrap();
            assert_eq!(got, crate::audit::query::select(&all, f, &page), "{f:?}");
            let Some(last) = got.last() else { break };
            after = Some(Cursor::of(last));
            walked.extend(got);
        }
        assert_eq!(walked, want, "{f:?}");
        let mut pages = s.pages(f.clone(), 4);
        let mut exported = Vec::new();
        while let Some(chunk) = pages.next().await.unwrap() {
            assert!(chunk.len() <= 4);
            exported.extend(chunk);
        }
        assert_eq!(exported, want, "{f:?}");
        // The tail: the last 5, and the 5 before those.
        let tail = s.tail(f, None, 5).await.unwrap();
        assert_eq!(tail, want[want.len().saturating_sub(5)..], "{f:?}");
        if let Some(first) = tail.first() {
            let before = s.tail(f, Some(&Cursor::of(first)), 5).await.unwrap();
            let end = want.len() - tail.len();
            assert_eq!(before, want[end.saturating_sub(5)..end], "{f:?}");
        }
    }
    // Exported lines are the stored bytes.
    let mut pages = s.pages(Filter::default(), 100);
    let lines = pages.next_lines().await.unwrap().unwrap();
    assert_eq!(lines[0], all[0].to_json());
    assert_eq!(pages.cursor(), Some(&Cursor::of(&all[59])));
    assert_eq!(s.event("gw-b", 7).await.unwrap(), Some(b[6].clone()));
    assert_eq!(s.event("gw-b", 99).await.unwrap(), None);
    fx.cleanup_audit(&s).await;
}

async fn verify_passes_on_an_intact_chain(fx: Fx) {
    let s = fx.audit().await;
    assert!(s.verify().await.unwrap().is_empty());
    let a = chain("gw-a", 25_000);
    let b = chain("gw-b", 3);
    // Shipped out of order and in pieces.
    s.ingest(records(&a[10_000..])).await.unwrap();
    s.ingest(records(&a[..10_000])).await.unwrap();
    s.ingest(records(&b)).await.unwrap();
    let reports = s.verify().await.unwrap();
    assert_eq!(
        reports,
        vec![
            ChainReport {
                gateway: "gw-a".into(),
                events: 25_000,
                broken: None
            },
            ChainReport {
                gateway: "gw-b".into(),
                events: 3,
                broken: None
            },
        ]
    );
    fx.cleanup_audit(&s).await;
}

async fn verify_names_an_altered_row(fx: Fx) {
    let s = fx.audit().await;
    let a = chain("gw-a", 12);
    s.ingest(records(&a)).await.unwrap();

    // Rewriting the JSON of seq 4 (no re-hash): named at 4.
    let mut altered = a[3].clone();
    altered.body.outcome = Outcome::Allow;
    altered.body.user = "u0".into();
    fx.exec(
        &s,
        "UPDATE audit_events SET event = $1 WHERE tenant = $2 AND gateway = 'gw-a' AND seq = $3",
        Some(&altered.to_json()),
        Some(4),
    )
    .await;
    let r = s.verify_gateway("gw-a").await.unwrap();
    let broken = r.broken.expect("broken");
    assert_eq!(
        (broken.gateway.as_str(), broken.seq, r.events),
        ("gw-a", 4, 3)
    );
    assert!(broken.why.contains("altered"), "{broken}");

    // Text that no longer parses.
    fx.exec(
        &s,
        "UPDATE audit_events SET event = $1 WHERE tenant = $2 AND gateway = 'gw-a' AND seq = $3",
        Some("{\"seq\": 4, garbage"),
        Some(4),
    )
    .await;
    let broken = s.verify_gateway("gw-a").await.unwrap().broken.unwrap();
    assert_eq!(broken.seq, 4);
    assert!(broken.why.contains("no longer parses"), "{broken}");

    // Restored JSON, but an indexed column edited (the user a query would find).
    fx.exec(
        &s,
        "UPDATE audit_events SET event = $1 WHERE tenant = $2 AND gateway = 'gw-a' AND seq = $3",
        Some(&a[3].to_json()),
        Some(4),
    )
    .await;
    assert_eq!(s.verify_gateway("gw-a").await.unwrap().broken, None);
    fx.exec(
        &s,
        "UPDATE audit_events SET user_id = $1 WHERE tenant = $2 AND gateway = 'gw-a' AND seq = $3",
        Some("someone-else"),
        Some(9),
    )
    .await;
    let broken = s.verify_gateway("gw-a").await.unwrap().broken.unwrap();
    assert_eq!(broken.seq, 9);
    assert!(broken.why.contains("user_id"), "{broken}");

    // The seq column moved: the row at 9 now claims 100.
    fx.exec(
        &s,
        "UPDATE audit_events SET seq = 100 WHERE tenant = $1 AND gateway = 'gw-a' AND seq = $2",
        None,
        Some(9),
    )
    .await;
    let broken = s.verify_gateway("gw-a").await.unwrap().broken.unwrap();
    assert_eq!(broken.seq, 9);
    assert!(broken.why.contains("missing"), "{broken}");

    // A query meeting an unreadable event names it rather than skipping it.
    fx.exec(
        &s,
        "UPDATE audit_events SET event = $1 WHERE tenant = $2 AND gateway = 'gw-a' AND seq = $3",
        Some("not json"),
        Some(2),
    )
    .await;
    let e = s
        .query(&Filter::default(), &Page::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AuditError::CorruptEvent { gateway, seq: 2, .. } if gateway == "gw-a"),
        "{e}"
    );
    fx.cleanup_audit(&s).await;
}

async fn verify_names_a_deleted_row(fx: Fx) {
    let s = fx.audit().await;
    let a = chain("gw-a", 10);
    let b = chain("gw-b", 10);
    s.ingest(records(&a)).await.unwrap();
    s.ingest(records(&b)).await.unwrap();
    fx.exec(
        &s,
        "DELETE FROM audit_events WHERE tenant = $1 AND gateway = 'gw-a' AND seq = $2",
        None,
        Some(6),
    )
    .await;
    // The tail of gw-b: the chain alone cannot tell, the acknowledgement can.
    fx.exec(
        &s,
        "DELETE FROM audit_events WHERE tenant = $1 AND gateway = 'gw-b' AND seq >= $2",
        None,
        Some(9),
    )
    .await;
    let reports = s.verify().await.unwrap();
    assert_eq!(reports.len(), 2);
    let a_broken = reports[0].broken.clone().expect("gw-a broken");
    assert_eq!((a_broken.gateway.as_str(), a_broken.seq), ("gw-a", 6));
    assert!(a_broken.why.contains("missing"), "{a_broken}");
    assert_eq!(reports[0].events, 5);
    let b_broken = reports[1].broken.clone().expect("gw-b broken");
    assert_eq!((b_broken.gateway.as_str(), b_broken.seq), ("gw-b", 9));
    assert!(
        b_broken.why.contains("acknowledged through seq 10"),
        "{b_broken}"
    );

    // Every row of a gateway gone: still reported.
    fx.exec(
        &s,
        "DELETE FROM audit_events WHERE tenant = $1 AND gateway = 'gw-b' AND seq >= $2",
        None,
        Some(1),
    )
    .await;
    let reports = s.verify().await.unwrap();
    assert_eq!(reports[1].gateway, "gw-b");
    assert_eq!(reports[1].broken.as_ref().map(|b| b.seq), Some(1));
    fx.cleanup_audit(&s).await;
}

async fn import_jsonl_goes_through_ingest(fx: Fx) {
    let s = fx.audit().await;
    let a = chain("standalone-1", 12_000);
    let mut file = String::new();
    for e in &a {
        file.push_str(&e.to_json());
        file.push('\n');
    }
    file.push('\n');
    let out = s.import_jsonl(file.as_bytes()).await.unwrap();
    assert_eq!(
        out,
        ImportOutcome {
            events: 12_000,
            inserted: 12_000,
            stored_through: through(&[("standalone-1", 12_000)]),
        }
    );
    // Importing the same file again changes nothing.
    let out = s.import_jsonl(file.as_bytes()).await.unwrap();
    assert_eq!((out.events, out.inserted), (12_000, 0));
    assert_eq!(s.verify().await.unwrap()[0].events, 12_000);

    // A bad line anywhere refuses the whole file, named by line number.
    let more = chain_from("standalone-1", 12_001, &a[11_999].hash, 10);
    let mut bad = String::new();
    for (i, e) in more.iter().enumerate() {
        if i == 7 {
            bad.push_str("{\"seq\": 12008, \"pin\": \"1234\"}\n");
        } else {
            bad.push_str(&e.to_json());
            bad.push('\n');
        }
    }
    let e = s.import_jsonl(bad.as_bytes()).await.unwrap_err();
    assert!(matches!(&e, AuditError::ImportLine { line: 8, .. }), "{e}");
    assert!(
        e.to_string().starts_with("line 8: not an audit event"),
        "{e}"
    );
    assert_eq!(s.count(&Filter::default()).await.unwrap(), 12_000);
    fx.cleanup_audit(&s).await;
}

async fn malformed_batch_writes_nothing(fx: Fx) {
    let s = fx.audit().await;
    let a = chain("gw-a", 10);
    let mut recs = records(&a);
    recs[6].json = "{\"seq\":7}".into();
    let e = s.ingest(recs).await.unwrap_err();
    assert!(
        matches!(&e, AuditError::Malformed { gateway, seq: 7, .. } if gateway == "gw-a"),
        "{e}"
    );
    assert!(e.to_string().contains("gateway 'gw-a', seq 7"), "{e}");

    // Shipped under another seq or gateway than the event says.
    let mut recs = records(&a);
    recs[3].seq = 40;
    let e = s.ingest(recs).await.unwrap_err();
    assert!(
        matches!(
            &e,
            AuditError::Mismatch {
                seq: 40,
                field: "seq",
                ..
            }
        ),
        "{e}"
    );
    let mut recs = records(&a);
    recs[3].gateway = "gw-z".into();
    let e = s.ingest(recs).await.unwrap_err();
    assert!(
        matches!(
            &e,
            AuditError::Mismatch {
                field: "gateway",
                ..
            }
        ),
        "{e}"
    );
    // An unreadable time.
    let mut body = a[0].body.clone();
    body.ts = "yesterday".into();
    let odd = body.seal(GENESIS_HASH);
    let e = s.ingest(records(&[odd])).await.unwrap_err();
    assert!(
        matches!(&e, AuditError::InvalidRecord { seq: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("yesterday"), "{e}");

    assert_eq!(s.count(&Filter::default()).await.unwrap(), 0);
    assert!(s.gateways().await.unwrap().is_empty());
    fx.cleanup_audit(&s).await;
}

async fn reports_last_allowed_and_counts(fx: Fx) {
    let s = fx.audit().await;
    let a = chain("gw-a", 40);
    s.ingest(records(&a)).await.unwrap();
    let mut want: HashMap<String, i64> = HashMap::new();
    for e in &a {
        if e.body.action == "logon" && e.body.outcome == Outcome::Allow {
            let t = want.entry(e.body.user.clone()).or_default();
            *t = (*t).max(e.ts_ms());
        }
    }
    assert_eq!(s.last_allowed("logon").await.unwrap(), want);
    assert!(s.last_allowed("elevate").await.unwrap().is_empty());

    // Allowed logons per device per hour (events are a minute apart from T0).
    let f = Filter {
        action: Some("logon".into()),
        outcome: Some(Outcome::Allow),
        ..Filter::default()
    };
    let counts = s.counts_by_device(&f, 3_600_000, 0).await.unwrap();
    let mut expect: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for e in a.iter().filter(|e| f.matches(e)) {
        let b = e.ts_ms() / 3_600_000 * 3_600_000;
        *expect.entry((e.body.device.clone(), b)).or_default() += 1;
    }
    let got: BTreeMap<(String, i64), u64> = counts
        .into_iter()
        .map(|c| ((c.device, c.bucket_start_ms), c.count))
        .collect();
    assert_eq!(got, expect);
    // Japanese days start at 15:00 UTC.
    let days = s
        .counts_by_device(&f, 86_400_000, 9 * 3_600_000)
        .await
        .unwrap();
    assert!(days.iter().all(|c| c.bucket_start_ms == T0 - 9 * 3_600_000));
    fx.cleanup_audit(&s).await;
}

async fn decisions_round_trip(fx: Fx) {
    let s = fx.audit().await;
    let entry = |i: i64, user: &str| DecisionEntry {
        id: format!("x-{i}"),
        ts_ms: T0 + i,
        kind: "authorize".into(),
        user: user.into(),
        device: "d1".into(),
        action: "logon".into(),
        via: "console".into(),
        upstream: vec![],
        hour: 9,
        factors: vec!["card".into(), "password".into()],
        inputs: "{}".into(),
        result: "{\"allowed\":true}".into(),
        policy_version: "v3".into(),
        request_id: format!("r-{i}"),
    };
    let entries: Vec<DecisionEntry> = (0..5000)
        .map(|i| entry(i, if i % 2 == 0 { "u0" } else { "u1" }))
        .collect();
    s.record_decisions(&entries).await.unwrap();
    let got = s.decisions(Some("u1"), 3).await.unwrap();
    assert_eq!(
        got,
        vec![
            entries[4999].clone(),
            entries[4997].clone(),
            entries[4995].clone()
        ]
    );
    assert_eq!(s.decisions(None, 10_000).await.unwrap().len(), 5000);
    assert_eq!(s.decision_count().await.unwrap(), 5000);
    fx.cleanup_audit(&s).await;
}

/// A second journal under a name the store already holds: same seqs, other events.
fn other_journal(gateway: &str, n: u64) -> Vec<AuditEvent> {
    chain_from(gateway, 1, &"f".repeat(64), n)
}

async fn resent_event_is_a_duplicate(fx: Fx) {
    let s = fx.audit().await;
    let events = chain("gw-a", 10);
    s.ingest(records(&events)).await.unwrap();
    // A crash between the engine's commit and the gateway storing its position:
    // the same events again, alone or with new ones, are accepted and stored once.
    let out = s.ingest(records(&events[2..3])).await.unwrap();
    assert_eq!(out.inserted, 0);
    assert_eq!(out.stored_through, through(&[("gw-a", 10)]));
    let more = chain_from("gw-a", 11, &events[9].hash, 2);
    let mut again = records(&events);
    again.extend(records(&more));
    let out = s.ingest(again).await.unwrap();
    assert_eq!(out.inserted, 2);
    assert_eq!(out.stored_through, through(&[("gw-a", 12)]));
    assert_eq!(s.count(&Filter::default()).await.unwrap(), 12);
    assert_eq!(s.event("gw-a", 3).await.unwrap(), Some(events[2].clone()));
    let gws = s.gateways().await.unwrap();
    assert_eq!((gws[0].stored_through, gws[0].received), (12, 12));
    fx.cleanup_audit(&s).await;
}

async fn different_event_under_a_held_seq_refuses_the_shipment(fx: Fx) {
    let s = fx.audit().await;
    // 100 events: a refused seq past the first INSERT's 64 rows is found too.
    let events = chain("gw-a", 100);
    s.ingest(records(&events)).await.unwrap();
    let other = other_journal("gw-a", 100);

    // Events of the held journal re-sent and new ones, another gateway's, and
    // one of a second journal under gw-a's name: all refused, naming the seq.
    let more = chain_from("gw-a", 101, &events[99].hash, 5);
    let mut shipment = records(&events[60..69]);
    shipment.extend(records(&more));
    shipment.extend(records(&chain("gw-b", 3)));
    shipment.extend(records(&other[69..71]));
    let e = s.ingest(shipment).await.unwrap_err();
    assert!(
        matches!(
            &e,
            AuditError::Conflict { gateway, seq: 70, held, received }
                if gateway == "gw-a" && *held == events[69].hash && *received == other[69].hash
        ),
        "{e}"
    );
    let message = e.to_string();
    assert!(
        message.starts_with("gateway gw-a seq 70: the engine already holds a different event"),
        "{e}"
    );
    assert!(message.contains("give this gateway its own name"), "{e}");

    // The whole second journal: refused at its first seq.
    let e = s.ingest(records(&other)).await.unwrap_err();
    assert!(matches!(&e, AuditError::Conflict { seq: 1, .. }), "{e}");

    // Two different events under one seq in the same shipment.
    let twin = other_journal("gw-c", 1);
    let mut twins = records(&chain("gw-c", 1));
    twins.extend(records(&twin));
    let e = s.ingest(twins).await.unwrap_err();
    assert!(
        matches!(&e, AuditError::ConflictInShipment { gateway, seq: 1 } if gateway == "gw-c"),
        "{e}"
    );

    // A journal file of the second journal: nothing imported.
    let file: String = other.iter().map(|e| e.to_json() + "\n").collect();
    let e = s.import_jsonl(file.as_bytes()).await.unwrap_err();
    assert!(matches!(&e, AuditError::Conflict { seq: 1, .. }), "{e}");

    // Nothing of any refused shipment was stored.
    assert_eq!(s.count(&Filter::default()).await.unwrap(), 100);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            s.event("gw-a", i as u64 + 1).await.unwrap().as_ref(),
            Some(e)
        );
    }
    let gws = s.gateways().await.unwrap();
    assert_eq!(gws.len(), 1);
    assert_eq!((gws[0].stored_through, gws[0].received), (100, 100));
    fx.cleanup_audit(&s).await;
}

async fn a_journal_is_bound_to_its_first_shipper(fx: Fx) {
    let s = fx.audit().await;
    s.bind_journal("gw-a", "cert-a").await.unwrap();
    s.bind_journal("gw-a", "cert-a").await.unwrap();
    let e = s.bind_journal("gw-a", "cert-b").await.unwrap_err();
    assert!(
        matches!(&e, AuditError::NotOwner { owner, client, .. } if owner == "cert-a" && client == "cert-b"),
        "{e}"
    );
    s.bind_journal("gw-b", "cert-b").await.unwrap();
    // Unbound by an administrator, the journal goes to the next certificate, and the
    // engine's own journal says so.
    assert_eq!(
        s.unbind_journal("gw-a", "admin").await.unwrap().as_deref(),
        Some("cert-a")
    );
    assert_eq!(s.unbind_journal("gw-a", "admin").await.unwrap(), None);
    s.bind_journal("gw-a", "cert-b").await.unwrap();
    let own = s
        .query(
            &Filter {
                gateway: Some(ENGINE_JOURNAL.into()),
                ..Filter::default()
            },
            &Page {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(
        (own[0].body.action.as_str(), own[0].body.operator.as_str()),
        ("journal_unbind", "admin")
    );
    assert!(s.verify().await.unwrap().iter().all(|c| c.broken.is_none()));
    // Bindings are per tenant.
    let other =
        fx.opened(AuditStore::open(&fx.url, &crate::store::testing::unique_tenant("other")).await);
    other.bind_journal("gw-a", "cert-b").await.unwrap();
    fx.cleanup_audit(&other).await;
    fx.cleanup_audit(&s).await;
}

async fn a_forged_copy_under_the_genuine_hash_does_not_keep_the_genuine_event_out(fx: Fx) {
    let s = fx.audit().await;
    let events = chain("gw-f", 3);
    let mut forged = events[1].clone();
    forged.body.user = "mallory".into();
    assert!(!forged.hash_matches());
    s.ingest(records(&[events[0].clone(), forged, events[2].clone()]))
        .await
        .unwrap();

    // The genuine event re-sent: refused, not acknowledged as if stored.
    let e = s.ingest(records(&events[1..2])).await.unwrap_err();
    assert!(
        matches!(&e, AuditError::Conflict { gateway, seq: 2, .. } if gateway == "gw-f"),
        "{e}"
    );
    // A genuine stored event re-sent written out another way is still accepted.
    let mut respaced = records(&events[2..3]);
    respaced[0].json = format!(" {}", respaced[0].json);
    assert_eq!(s.ingest(respaced).await.unwrap().inserted, 0);
    fx.cleanup_audit(&s).await;
}
