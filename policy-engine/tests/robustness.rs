//! Malformed input gets an error, never a panic. A deterministic mutation run over
//! the reference files stands in for a fuzzer (cargo-fuzz needs a nightly toolchain,
//! which the project's machines do not have): every mutant must compile or be
//! refused with diagnostics that point inside the file they name.

use sekisho_policy_engine::entities::{parse_entities_json, Directory};
use sekisho_policy_engine::{CompiledPolicies, PolicySources};

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const PIECES: &[&str] = &[
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    ";",
    ",",
    "\"",
    "\\",
    "@id(\"x\")",
    "&&",
    "||",
    "!",
    "==",
    "in ",
    "has ",
    "like ",
    "context.factors",
    "principal",
    "resource",
    "Sekisho::Group::\"",
    "permit",
    "forbid",
    "when",
    "unless",
    "if ",
    "\n",
    "//",
    "住民",
    "\u{0}",
    "9999999999999999999999",
    "-",
    ".",
    "containsAll",
    "[\"card\"]",
];

/// One random edit: delete a span, insert a piece, or duplicate a span.
fn mutate(rng: &mut Rng, text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = rng.below(chars.len() + 1);
    let len = 1 + rng.below(12);
    let mut out: Vec<char> = chars[..at].to_vec();
    match rng.below(3) {
        0 => out.extend(&chars[(at + len).min(chars.len())..]),
        1 => {
            out.extend(PIECES[rng.below(PIECES.len())].chars());
            out.extend(&chars[at..]);
        }
        _ => {
            let span = &chars[at..(at + len).min(chars.len())];
            out.extend(span);
            out.extend(&chars[at..]);
        }
    }
    out.into_iter().collect()
}

#[test]
fn mutated_policies_are_refused_with_locations_inside_the_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let base = PolicySources::load_dir(&dir).unwrap();
    let mut rng = Rng(0x5EC1_5407);
    let (mut refused, mut accepted) = (0, 0);
    for _ in 0..400 {
        let mut s = base.clone();
        let edits = 1 + rng.below(3);
        let target = rng.below(s.files.len() + 1);
        for _ in 0..edits {
            if target == s.files.len() {
                s.schema = mutate(&mut rng, &s.schema);
            } else {
                s.files[target].text = mutate(&mut rng, &s.files[target].text);
            }
        }
        match CompiledPolicies::compile(s.clone(), 0) {
            Ok(_) => accepted += 1,
            Err(invalid) => {
                refused += 1;
                assert!(!invalid.0.is_empty());
                for d in &invalid.0 {
                    let Some(loc) = &d.location else { continue };
                    let text = if loc.file == "sekisho.cedarschema" {
                        &s.schema
                    } else {
                        &s.files
                            .iter()
                            .find(|f| f.name == loc.file)
                            .expect("names a real file")
                            .text
                    };
                    let lines = text.split('\n').count() as u32;
                    assert!(
                        loc.line >= 1 && loc.line <= lines,
                        "{d} (file has {lines} lines)"
                    );
                }
            }
        }
    }
    assert!(
        refused > 100 && accepted > 0,
        "refused {refused}, accepted {accepted}"
    );
}

#[test]
fn mutated_entity_files_are_refused_without_panics() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples/entities.json");
    let base = std::fs::read_to_string(path).unwrap();
    let mut rng = Rng(0x000C_17E5);
    let mut refused = 0;
    for _ in 0..1500 {
        let mut text = base.clone();
        for _ in 0..1 + rng.below(3) {
            text = mutate(&mut rng, &text);
        }
        match parse_entities_json("entities.json", &text) {
            Ok(batch) => {
                let _ = Directory::from_batch(batch);
            }
            Err(e) => {
                refused += 1;
                assert!(e.to_string().starts_with("entities.json: "), "{e}");
            }
        }
    }
    assert!(refused > 300, "refused {refused}");
}
