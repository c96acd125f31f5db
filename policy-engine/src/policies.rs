//! Policy sources: loading them from a directory, validating them against the schema
//! with diagnostics that point at `file:line:col`, and re-keying policies by `@id`.

use std::path::Path;

use sha2::{Digest, Sha256};

/// One `.cedar` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    /// The name diagnostics use, e.g. `lgwan.cedar`.
    pub name: String,
    pub text: String,
}

/// A schema and the policy files evaluated against it: what a version is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySources {
    pub schema: String,
    /// Sorted by name, so the digest does not depend on directory order.
    pub files: Vec<PolicyFile>,
}

impl PolicySources {
    pub fn new(schema: String, mut files: Vec<PolicyFile>) -> Self {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        PolicySources { schema, files }
    }

    /// SHA-256 over the schema and each file's name and text, hex encoded. Identical
    /// sources give identical digests wherever they were loaded.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        field(self.schema.as_bytes());
        for f in &self.files {
            field(f.name.as_bytes());
            field(f.text.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// The schema's file name inside a policy directory.
pub const SCHEMA_FILE: &str = "sekisho.cedarschema";

/// Why a policy directory could not be read (before any Cedar parsing).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("{dir}: no {SCHEMA_FILE} in this directory")]
    NoSchema { dir: String },
    #[error("{dir}: no .cedar policy files in this directory")]
    NoPolicies { dir: String },
}

impl PolicySources {
    /// Reads `sekisho.cedarschema` and every `*.cedar` file directly inside `dir`
    /// (subdirectories such as `examples/` are not policies).
    pub fn load_dir(dir: &Path) -> Result<Self, LoadError> {
        let shown = dir.display().to_string();
        let read = |p: &Path| -> Result<String, LoadError> {
            let bytes = std::fs::read(p).map_err(|source| LoadError::Io {
                path: p.display().to_string(),
                source,
            })?;
            String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8 {
                path: p.display().to_string(),
            })
        };
        let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut schema = None;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| LoadError::Io {
                path: shown.clone(),
                source,
            })?;
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == SCHEMA_FILE {
                schema = Some(read(&path)?);
            } else if name.ends_with(".cedar") {
                files.push(PolicyFile {
                    text: read(&path)?,
                    name,
                });
            }
        }
        let schema = schema.ok_or_else(|| LoadError::NoSchema { dir: shown.clone() })?;
        if files.is_empty() {
            return Err(LoadError::NoPolicies { dir: shown });
        }
        Ok(PolicySources::new(schema, files))
    }
}

/// Byte offsets where each top-level statement (policy, with its annotations) starts.
/// Cedar's parser names policies `policy0…N` in this order but keeps no public source
/// position, so this lightweight scan supplies one for diagnostics and default ids.
fn statement_starts(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let (mut i, mut depth, mut in_stmt) = (0usize, 0i32, false);
    let mut starts = Vec::new();
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                if !in_stmt {
                    starts.push(i);
                    in_stmt = true;
                }
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            c if c.is_ascii_whitespace() => {}
            b';' if depth == 0 => in_stmt = false,
            c => {
                if !in_stmt {
                    starts.push(i);
                    in_stmt = true;
                }
                match c {
                    b'(' | b'{' | b'[' => depth += 1,
                    b')' | b'}' | b']' => depth -= 1,
                    _ => {}
                }
            }
        }
        i += 1;
    }
    starts
}

/// The first labelled offset of a miette diagnostic, if it has one.
fn first_offset(d: &dyn miette::Diagnostic) -> Option<usize> {
    d.labels().and_then(|mut l| l.next()).map(|l| l.offset())
}

/// A message without miette's trailing help, plus the help when there is one.
fn message_of(d: &dyn miette::Diagnostic) -> String {
    match d.help() {
        Some(h) => format!("{d} ({h})"),
        None => d.to_string(),
    }
}

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::{Effect, Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};

use crate::analysis::{self, References, Scope};
use crate::diagnostics::{Diagnostic, InvalidPolicies, Location};

/// One policy with what the engine derived from it.
#[derive(Debug, Clone)]
pub struct PolicyInfo {
    /// The `@id` annotation, or `file:line:col` when there is none.
    pub id: String,
    pub location: Location,
    pub effect: Effect,
    pub policy: Policy,
    pub scope: Scope,
    /// Why the policy may not be monotone in `context.factors` (empty when it is).
    pub monotonicity_issues: Vec<String>,
}

/// A validated policy set, ready for decisions. Immutable: a new version is a new value.
#[derive(Debug)]
pub struct CompiledPolicies {
    /// 0 for sources that were never published (a directory), else the store's number.
    pub version: u64,
    pub digest: String,
    pub sources: PolicySources,
    pub schema: Schema,
    pub set: PolicySet,
    pub policies: Vec<PolicyInfo>,
    pub references: References,
    /// Validator warnings (the set is usable).
    pub warnings: Vec<Diagnostic>,
}

impl CompiledPolicies {
    /// How decisions name this version: `v7` once published, otherwise
    /// `sha256:` and the first 16 hex digits of the digest.
    pub fn label(&self) -> String {
        if self.version > 0 {
            format!("v{}", self.version)
        } else {
            format!("sha256:{}", self.digest.get(..16).unwrap_or(&self.digest))
        }
    }

    pub fn by_id(&self, id: &str) -> Option<&PolicyInfo> {
        self.policies.iter().find(|p| p.id == id)
    }

    /// Parses, re-keys and strictly validates `sources`. Every problem in every file is
    /// reported, each as `file:line:col`; nothing is returned unless all is well.
    pub fn compile(sources: PolicySources, version: u64) -> Result<Self, InvalidPolicies> {
        let mut errors = Vec::new();
        let schema = match Schema::from_cedarschema_str(&sources.schema) {
            Ok((schema, _warnings)) => Some(schema),
            Err(e) => {
                let loc = first_offset(&e).map(|o| Location::at(SCHEMA_FILE, &sources.schema, o));
                errors.push(Diagnostic::error("schema", loc, message_of(&e)));
                None
            }
        };

        let mut infos: Vec<PolicyInfo> = Vec::new();
        let mut first_seen: HashMap<String, Location> = HashMap::new();
        for file in &sources.files {
            let parsed = match PolicySet::from_str(&file.text) {
                Ok(set) => set,
                Err(errs) => {
                    for e in errs.iter() {
                        let loc = first_offset(e).map(|o| Location::at(&file.name, &file.text, o));
                        errors.push(Diagnostic::error("parse", loc, message_of(e)));
                    }
                    continue;
                }
            };
            let starts = statement_starts(&file.text);
            let at = |cedar_id: &PolicyId| -> Location {
                let n: usize = cedar_id
                    .to_string()
                    .trim_start_matches("policy")
                    .parse()
                    .unwrap_or(0);
                Location::at(&file.name, &file.text, starts.get(n).copied().unwrap_or(0))
            };
            for t in parsed.templates() {
                errors.push(Diagnostic::error(
                    "template",
                    Some(at(t.id())),
                    "templates (?principal / ?resource) are not supported: write a static policy",
                ));
            }
            let mut in_file: Vec<&Policy> = parsed.policies().collect();
            in_file.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse::<usize>()
                    .unwrap_or(0)
            });
            for p in in_file {
                let location = at(p.id());
                let id = match p.annotation("id") {
                    Some(id) if id.trim().is_empty() => {
                        errors.push(Diagnostic::error(
                            "duplicate-id",
                            Some(location),
                            "@id must not be empty",
                        ));
                        continue;
                    }
                    Some(id) => id.to_string(),
                    None => location.to_string(),
                };
                if let Some(first) = first_seen.get(&id) {
                    errors.push(Diagnostic::error(
                        "duplicate-id",
                        Some(location),
                        format!("duplicate policy id '{id}' (first defined at {first})"),
                    ));
                    continue;
                }
                first_seen.insert(id.clone(), location.clone());
                let policy = p.new_id(PolicyId::new(&id));
                let (scope, monotonicity_issues) = match policy.to_pst() {
                    Ok(pst) => (
                        analysis::scope_of(pst.body()),
                        analysis::monotonicity_issues(pst.body()),
                    ),
                    Err(e) => {
                        errors.push(Diagnostic::error("parse", Some(location), e.to_string()));
                        continue;
                    }
                };
                infos.push(PolicyInfo {
                    id,
                    location,
                    effect: policy.effect(),
                    policy,
                    scope,
                    monotonicity_issues,
                });
            }
        }

        let mut set = PolicySet::new();
        for info in &infos {
            if let Err(e) = set.add(info.policy.clone()) {
                errors.push(Diagnostic::error(
                    "duplicate-id",
                    Some(info.location.clone()),
                    e.to_string(),
                ));
            }
        }

        let mut warnings = Vec::new();
        if let (Some(schema), true) = (&schema, errors.is_empty()) {
            let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
            let locate = |id: &PolicyId, offset: Option<usize>| -> Option<Location> {
                let info = infos.iter().find(|i| i.id == id.as_ref())?;
                let file = sources
                    .files
                    .iter()
                    .find(|f| f.name == info.location.file)?;
                Some(match offset {
                    Some(o) => Location::at(&file.name, &file.text, o),
                    None => info.location.clone(),
                })
            };
            for e in result.validation_errors() {
                errors.push(
                    Diagnostic::error(
                        "validation",
                        locate(e.policy_id(), first_offset(e)),
                        message_of(e),
                    )
                    .with_policies([e.policy_id().to_string()]),
                );
            }
            for w in result.validation_warnings() {
                warnings.push(
                    Diagnostic::warning(
                        "validation",
                        locate(w.policy_id(), first_offset(w)),
                        message_of(w),
                    )
                    .with_policies([w.policy_id().to_string()]),
                );
            }
        }

        match (schema, errors.is_empty()) {
            (Some(schema), true) => {
                let references =
                    References::of(infos.iter().filter_map(|i| i.policy.to_pst().ok()));
                Ok(CompiledPolicies {
                    version,
                    digest: sources.digest(),
                    sources,
                    schema,
                    set,
                    policies: infos,
                    references,
                    warnings,
                })
            }
            _ => {
                errors.sort_by(|a, b| a.location.cmp(&b.location));
                Err(InvalidPolicies(errors))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../policies/sekisho.cedarschema");

    fn sources(files: &[(&str, &str)]) -> PolicySources {
        PolicySources::new(
            SCHEMA.to_string(),
            files
                .iter()
                .map(|(n, t)| PolicyFile {
                    name: n.to_string(),
                    text: t.to_string(),
                })
                .collect(),
        )
    }

    #[test]
    fn statement_starts_skip_comments_and_strings() {
        let text = "// a; b\n@id(\"x;y\")\npermit(principal, action, resource)\nwhen { \"a;\" == \"a;\" };\n\n  forbid(principal, action, resource);";
        let starts = statement_starts(text);
        assert_eq!(starts.len(), 2);
        assert!(text[starts[0]..].starts_with("@id"));
        assert!(text[starts[1]..].starts_with("forbid"));
    }

    #[test]
    fn ids_come_from_annotations_or_positions() {
        let c = CompiledPolicies::compile(
            sources(&[(
                "a.cedar",
                "@id(\"first\")\npermit(principal, action == Sekisho::Action::\"logon\", resource);\n\n  permit(principal, action == Sekisho::Action::\"unlock\", resource);",
            )]),
            0,
        )
        .unwrap();
        let ids: Vec<_> = c.policies.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["first", "a.cedar:4:3"]);
        assert!(c.label().starts_with("sha256:"));
    }

    #[test]
    fn errors_point_at_file_line_col() {
        let err = CompiledPolicies::compile(
            sources(&[
                ("ok.cedar", "@id(\"p\")\npermit(principal, action, resource);"),
                ("bad.cedar", "// comment\n@id(\"q\")\npermit(principal, action, resource)\nwhen { resource.colour == \"red\" };"),
                ("syntax.cedar", "\n\npermit(principal action, resource);"),
                ("dup.cedar", "@id(\"p\")\nforbid(principal, action, resource);"),
            ]),
            0,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ok.cedar:1:1: error[duplicate-id]: duplicate policy id 'p' (first defined at dup.cedar:1:1)"), "{text}");
        assert!(
            text.contains("syntax.cedar:3:18: error[parse]: unexpected token `action`"),
            "{text}"
        );
        // Validation runs only once everything parses.
        let err = CompiledPolicies::compile(
            sources(&[("bad.cedar", "// comment\n@id(\"q\")\npermit(principal, action, resource)\nwhen { resource.colour == \"red\" };")]),
            0,
        )
        .unwrap_err();
        let d = &err.0[0];
        assert_eq!(d.code, "validation");
        let loc = d.location.as_ref().unwrap();
        assert_eq!((loc.file.as_str(), loc.line), ("bad.cedar", 4), "{err}");
        assert_eq!(d.policy_ids, ["q"]);
    }

    #[test]
    fn schema_errors_are_located() {
        let mut s = sources(&[("a.cedar", "permit(principal, action, resource);")]);
        s.schema = "namespace Sekisho {\n  entity User {\n    department: Strng,\n  };\n}".into();
        let err = CompiledPolicies::compile(s, 0).unwrap_err();
        assert!(
            err.0[0].to_string().starts_with("sekisho.cedarschema:"),
            "{err}"
        );
    }

    #[test]
    fn digest_is_order_independent() {
        let a = sources(&[("a.cedar", "x"), ("b.cedar", "y")]);
        let b = sources(&[("b.cedar", "y"), ("a.cedar", "x")]);
        assert_eq!(a.digest(), b.digest());
        assert_ne!(
            a.digest(),
            sources(&[("a.cedar", "xy"), ("b.cedar", "")]).digest()
        );
    }
}
