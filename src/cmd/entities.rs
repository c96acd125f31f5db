//! `sekisho entities upsert|delete`.

use std::path::Path;

use anyhow::Result;
use sekisho_proto::v1 as pb;

use crate::client::EngineArgs;
use crate::Outcome;

pub async fn upsert(file: &Path, engine: &EngineArgs) -> Result<Outcome> {
    let batch = super::read_entities(file)?;
    let mut client = pb::policy_admin_client::PolicyAdminClient::new(engine.connect().await?)
        .max_encoding_message_size(256 * 1024 * 1024);
    let r = client
        .upsert_entities(sekisho_policy_engine::grpc::batch_to_proto(&batch))
        .await?
        .into_inner();
    println!(
        "upserted {} users, {} groups, {} devices",
        r.users, r.groups, r.devices
    );
    Ok(Outcome::Ok)
}

pub async fn delete(
    users: &[String],
    groups: &[String],
    devices: &[String],
    engine: &EngineArgs,
) -> Result<Outcome> {
    let refs = |kind: pb::EntityKind, ids: &[String]| {
        ids.iter()
            .map(move |id| pb::EntityRef {
                kind: kind as i32,
                id: id.clone(),
            })
            .collect::<Vec<_>>()
    };
    let mut entities = refs(pb::EntityKind::User, users);
    entities.extend(refs(pb::EntityKind::Group, groups));
    entities.extend(refs(pb::EntityKind::Device, devices));
    if entities.is_empty() {
        anyhow::bail!("nothing to delete: name at least one --user, --group or --device");
    }
    let named = entities.len();
    let mut client = pb::policy_admin_client::PolicyAdminClient::new(engine.connect().await?);
    let r = client
        .delete_entities(pb::DeleteEntitiesRequest { entities })
        .await?
        .into_inner();
    // Ids that named nothing are not counted: a typo shows up as a smaller number.
    println!("deleted {} of the {} named", r.deleted, named);
    Ok(Outcome::Ok)
}
