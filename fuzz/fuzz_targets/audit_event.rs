//! Audit events as the engine's ingest and `audit verify` read them: one JSON line,
//! then its hash and its place in a chain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sekisho_policy_engine::audit::event::{parse_ts, AuditEvent, ChainState};

fuzz_target!(|text: &str| {
    let _ = parse_ts(text);
    let mut chain = ChainState::start("fuzz-gw");
    for line in text.lines() {
        let Ok(event) = AuditEvent::from_json(line) else {
            continue;
        };
        let _ = event.ts_ms();
        let _ = event.hash_matches();
        let _ = chain.check_next(&event);
        // What was read back out is read in again as the same event.
        let again = AuditEvent::from_json(&event.to_json()).expect("own JSON reads back");
        assert_eq!(again.hash, event.hash);
    }
});
