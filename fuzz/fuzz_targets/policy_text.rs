//! A policy file as an administrator writes it, compiled against the project's
//! schema: diagnostics point into the text (multi-byte Japanese comments included),
//! and what compiles goes through the same analysis and lint as `sekisho policy lint`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sekisho_policy_engine::engine::Engine;
use sekisho_policy_engine::entities::Directory;
use sekisho_policy_engine::lint::lint;
use sekisho_policy_engine::{CompiledPolicies, PolicyFile, PolicySources};

const SCHEMA: &str = include_str!("../../policies/sekisho.cedarschema");

fuzz_target!(|text: &str| {
    let sources = PolicySources::new(
        SCHEMA.to_string(),
        vec![PolicyFile {
            name: "fuzz.cedar".into(),
            text: text.to_string(),
        }],
    );
    let _ = sources.digest();
    match CompiledPolicies::compile(sources, 1) {
        Ok(compiled) => {
            let engine = Engine::new(compiled, Directory::default());
            let _ = lint(&engine);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
