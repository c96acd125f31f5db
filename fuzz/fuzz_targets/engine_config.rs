//! The engine's TOML configuration: a value out of range or of the wrong type is an
//! error naming its key, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sekisho_policy_engine::config::EngineConfig;

fuzz_target!(|text: &str| {
    let _ = EngineConfig::parse("fuzz.toml", text);
});
