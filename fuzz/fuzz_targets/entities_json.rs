//! The entities file an engine loads (users, groups, devices): any text gives a
//! directory whose references all resolve, or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sekisho_policy_engine::entities::{parse_entities_json, Directory};

fuzz_target!(|text: &str| {
    if let Ok(batch) = parse_entities_json("fuzz.json", text) {
        let _ = Directory::from_batch(batch);
    }
});
