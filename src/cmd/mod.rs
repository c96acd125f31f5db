//! One module per command family.

pub mod decide;
pub mod demo;
pub mod engine;
pub mod entities;
pub mod policy;

use std::path::Path;

use anyhow::{Context, Result};
use sekisho_policy_engine::entities::{parse_entities_json, Directory, EntityBatch};

/// Reads an entities file and checks its references, naming the file in errors.
pub fn read_entities(path: &Path) -> Result<EntityBatch> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let batch = parse_entities_json(&path.display().to_string(), &text)?;
    Directory::from_batch(batch.clone()).with_context(|| format!("{}", path.display()))?;
    Ok(batch)
}
