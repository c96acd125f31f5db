//! Users, groups and devices: the directory decisions are made against.
//!
//! The directory keeps its own compact records rather than one big Cedar `Entities`:
//! a city has up to 100,000 users but a decision only ever needs one user and one
//! device, so each request builds a two-entity Cedar store (the user carries its whole
//! group closure as parents, which is all `principal in Group::"…"` looks at).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::factor::{Capabilities, FactorSet};
use crate::model::{cedar_types, DeviceKind, Tier};

/// A user as stored and exchanged (groups are the direct memberships).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub department: String,
    pub role: String,
    pub enrolled: FactorSet,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: String,
    pub parents: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: String,
    pub tier: Tier,
    pub kind: DeviceKind,
    pub capabilities: Capabilities,
    pub location: String,
}

impl serde::Serialize for FactorSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}
impl<'de> serde::Deserialize<'de> for FactorSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        FactorSet::parse_names(&names).map_err(serde::de::Error::custom)
    }
}
impl serde::Serialize for Capabilities {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}
impl<'de> serde::Deserialize<'de> for Capabilities {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        Capabilities::parse_names(&names).map_err(serde::de::Error::custom)
    }
}
macro_rules! serde_by_name {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_by_name!(Tier);
serde_by_name!(DeviceKind);

/// A user as decisions see it: the record plus what is derived from it.
#[derive(Debug, Clone)]
pub struct User {
    pub record: UserRecord,
    /// Stable 0–99 bucket for percentage rollouts.
    pub cohort: u8,
    /// Every group the user is in, directly or through nesting, sorted.
    pub ancestors: Arc<[Arc<str>]>,
}

impl User {
    /// A user with no groups, no department or role, who enrolled every factor: what
    /// an unknown user is planned as when a gateway asks to mask unknown users (with
    /// the enrolment the gateway sent, when it sent one).
    pub fn stand_in(id: &str) -> User {
        User {
            record: UserRecord {
                id: id.to_string(),
                department: String::new(),
                role: String::new(),
                enrolled: FactorSet::ALL,
                groups: Vec::new(),
            },
            cohort: cohort_of(id),
            ancestors: Arc::from(Vec::<Arc<str>>::new()),
        }
    }
}

/// The stable rollout bucket of a user id: the first 8 bytes of SHA-256(id) mod 100.
/// Stable across restarts, machines and releases, which a rollout stage relies on.
pub fn cohort_of(user_id: &str) -> u8 {
    let d = Sha256::digest(user_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) % 100) as u8
}

/// Why a set of entities was refused. Always names the entity and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntityError {
    #[error("{source_name}: not valid JSON: {message}")]
    Json {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: expected a JSON array of Cedar entities")]
    NotAnArray { source_name: String },
    #[error("{source_name}: entity #{index}{uid}: {message}")]
    Invalid {
        source_name: String,
        index: usize,
        /// ` (Sekisho::User::"u001")` when the uid could be read.
        uid: String,
        message: String,
    },
    #[error("{kind} '{id}' is defined twice")]
    Duplicate { kind: &'static str, id: String },
    #[error("user '{user}' is in group '{group}', which is not defined")]
    UnknownGroup { user: String, group: String },
    #[error("group '{group}' has parent '{parent}', which is not defined")]
    UnknownParent { group: String, parent: String },
    #[error("group '{group}' is its own ancestor (cycle through {path})")]
    GroupCycle { group: String, path: String },
    #[error("cannot delete group '{group}': still used by {by}")]
    GroupInUse { group: String, by: String },
    #[error("invalid id {kind} '{id}': {why}")]
    BadId {
        kind: &'static str,
        id: String,
        why: &'static str,
    },
}

/// A batch of changes to apply to a [`Directory`] in one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityBatch {
    pub users: Vec<UserRecord>,
    pub groups: Vec<GroupRecord>,
    pub devices: Vec<DeviceRecord>,
}

impl EntityBatch {
    pub fn len(&self) -> usize {
        self.users.len() + self.groups.len() + self.devices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which entities to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityDeletion {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub devices: Vec<String>,
}

/// The in-memory directory: users, groups and devices with derived group closures.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    users: HashMap<String, Arc<User>>,
    groups: HashMap<String, GroupRecord>,
    devices: HashMap<String, Arc<DeviceRecord>>,
}

fn check_id(kind: &'static str, id: &str) -> Result<(), EntityError> {
    let why = if id.is_empty() {
        "empty"
    } else if id.len() > 256 {
        "longer than 256 bytes"
    } else if id.chars().any(|c| c.is_control()) {
        "contains a control character"
    } else if id.trim() != id {
        "has leading or trailing white space"
    } else {
        return Ok(());
    };
    Err(EntityError::BadId {
        kind,
        id: id.to_string(),
        why,
    })
}

impl Directory {
    /// Builds a directory from complete record lists, checking every reference.
    pub fn from_batch(batch: EntityBatch) -> Result<Self, EntityError> {
        let mut d = Directory::default();
        d.apply(batch, EntityDeletion::default())?;
        Ok(d)
    }

    pub fn user(&self, id: &str) -> Option<&Arc<User>> {
        self.users.get(id)
    }
    pub fn device(&self, id: &str) -> Option<&Arc<DeviceRecord>> {
        self.devices.get(id)
    }
    pub fn group(&self, id: &str) -> Option<&GroupRecord> {
        self.groups.get(id)
    }
    pub fn users(&self) -> impl Iterator<Item = &Arc<User>> {
        self.users.values()
    }
    pub fn groups(&self) -> impl Iterator<Item = &GroupRecord> {
        self.groups.values()
    }
    pub fn devices(&self) -> impl Iterator<Item = &Arc<DeviceRecord>> {
        self.devices.values()
    }
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Applies upserts and deletions atomically: on any error `self` is unchanged.
    pub fn apply(&mut self, batch: EntityBatch, del: EntityDeletion) -> Result<(), EntityError> {
        // Duplicates inside one batch are almost always a mistake in an export.
        let ids = (batch.users.iter().map(|u| ("user", u.id.as_str())))
            .chain(batch.groups.iter().map(|g| ("group", g.id.as_str())))
            .chain(batch.devices.iter().map(|d| ("device", d.id.as_str())));
        let mut seen = HashSet::new();
        for (kind, id) in ids {
            check_id(kind, id)?;
            if !seen.insert((kind, id)) {
                return Err(EntityError::Duplicate {
                    kind,
                    id: id.to_string(),
                });
            }
        }

        // Groups first: their closure is what users are derived from.
        let groups_changed = !batch.groups.is_empty() || !del.groups.is_empty();
        let new_groups = groups_changed.then(|| {
            let mut g = self.groups.clone();
            for id in &del.groups {
                g.remove(id);
            }
            for rec in &batch.groups {
                g.insert(rec.id.clone(), rec.clone());
            }
            g
        });
        let groups = new_groups.as_ref().unwrap_or(&self.groups);
        let closures = group_closures(groups)?;

        let deleted_users: HashSet<&str> = del.users.iter().map(String::as_str).collect();
        let upserted: HashSet<String> = batch.users.iter().map(|u| u.id.clone()).collect();
        if groups_changed {
            // Deleting a group that someone still uses would silently widen or narrow
            // policies; refuse and name who uses it.
            for gid in &del.groups {
                if groups.contains_key(gid) {
                    continue;
                }
                let by_user = self
                    .users
                    .values()
                    .filter(|u| !deleted_users.contains(u.record.id.as_str()))
                    .filter(|u| !upserted.contains(&u.record.id))
                    .find(|u| u.record.groups.iter().any(|g| g == gid))
                    .map(|u| format!("user '{}'", u.record.id))
                    .or_else(|| {
                        batch
                            .users
                            .iter()
                            .find(|u| u.groups.iter().any(|g| g == gid))
                            .map(|u| format!("user '{}'", u.id))
                    })
                    .or_else(|| {
                        groups
                            .values()
                            .find(|g| g.parents.iter().any(|p| p == gid))
                            .map(|g| format!("group '{}'", g.id))
                    });
                if let Some(by) = by_user {
                    return Err(EntityError::GroupInUse {
                        group: gid.clone(),
                        by,
                    });
                }
            }
        }

        let mut interned: HashMap<Vec<String>, Arc<[Arc<str>]>> = HashMap::new();
        let mut derive = |rec: UserRecord| -> Result<Arc<User>, EntityError> {
            let mut key = rec.groups.clone();
            key.sort();
            key.dedup();
            if let Some(a) = interned.get(&key) {
                return Ok(Arc::new(User {
                    cohort: cohort_of(&rec.id),
                    ancestors: a.clone(),
                    record: rec,
                }));
            }
            let mut all = BTreeSet::new();
            for g in &key {
                let c = closures
                    .get(g.as_str())
                    .ok_or_else(|| EntityError::UnknownGroup {
                        user: rec.id.clone(),
                        group: g.clone(),
                    })?;
                all.extend(c.iter().cloned());
            }
            let a: Arc<[Arc<str>]> = all.into_iter().collect();
            interned.insert(key, a.clone());
            Ok(Arc::new(User {
                cohort: cohort_of(&rec.id),
                ancestors: a,
                record: rec,
            }))
        };

        let mut new_users: Vec<Arc<User>> = Vec::with_capacity(batch.users.len());
        for rec in batch.users {
            new_users.push(derive(rec)?);
        }
        // A group change moves every member's closure; recompute them all.
        let rederived: Option<Vec<Arc<User>>> = if groups_changed {
            let mut v = Vec::with_capacity(self.users.len());
            for u in self.users.values() {
                if deleted_users.contains(u.record.id.as_str()) || upserted.contains(&u.record.id) {
                    continue;
                }
                v.push(derive(u.record.clone())?);
            }
            Some(v)
        } else {
            None
        };

        // Everything checked: commit.
        if let Some(g) = new_groups {
            self.groups = g;
        }
        if let Some(v) = rederived {
            for u in v {
                self.users.insert(u.record.id.clone(), u);
            }
        }
        for id in &del.users {
            self.users.remove(id);
        }
        for u in new_users {
            self.users.insert(u.record.id.clone(), u);
        }
        for id in &del.devices {
            self.devices.remove(id);
        }
        for d in batch.devices {
            self.devices.insert(d.id.clone(), Arc::new(d));
        }
        Ok(())
    }

    /// All records, for saving or exporting.
    pub fn to_batch(&self) -> EntityBatch {
        let mut b = EntityBatch {
            users: self.users.values().map(|u| u.record.clone()).collect(),
            groups: self.groups.values().cloned().collect(),
            devices: self.devices.values().map(|d| (**d).clone()).collect(),
        };
        b.users.sort_by(|a, b| a.id.cmp(&b.id));
        b.groups.sort_by(|a, b| a.id.cmp(&b.id));
        b.devices.sort_by(|a, b| a.id.cmp(&b.id));
        b
    }
}

/// The transitive closure (including the group itself) of every group.
fn group_closures(
    groups: &HashMap<String, GroupRecord>,
) -> Result<HashMap<&str, Vec<Arc<str>>>, EntityError> {
    for g in groups.values() {
        for p in &g.parents {
            if !groups.contains_key(p) {
                return Err(EntityError::UnknownParent {
                    group: g.id.clone(),
                    parent: p.clone(),
                });
            }
        }
    }
    let mut out: HashMap<&str, Vec<Arc<str>>> = HashMap::with_capacity(groups.len());
    for g in groups.values() {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut stack: Vec<(&str, Vec<&str>)> = vec![(g.id.as_str(), vec![g.id.as_str()])];
        while let Some((id, path)) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            for p in &groups[id].parents {
                if p == &g.id {
                    let mut path = path.clone();
                    path.push(p);
                    return Err(EntityError::GroupCycle {
                        group: g.id.clone(),
                        path: path.join(" -> "),
                    });
                }
                let mut next = path.clone();
                next.push(p);
                stack.push((p.as_str(), next));
            }
        }
        out.insert(g.id.as_str(), seen.into_iter().map(Arc::from).collect());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Cedar entity JSON (the format of policies/examples/entities.json)

#[derive(Deserialize)]
struct JsonUid {
    #[serde(rename = "type")]
    ty: String,
    id: String,
}

/// Parses Cedar's entity JSON format, restricted to the sekisho schema, into a batch.
/// `source_name` (a file name) prefixes every error.
pub fn parse_entities_json(source_name: &str, text: &str) -> Result<EntityBatch, EntityError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| EntityError::Json {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })?;
    let items = value.as_array().ok_or_else(|| EntityError::NotAnArray {
        source_name: source_name.to_string(),
    })?;
    let mut batch = EntityBatch::default();
    for (index, item) in items.iter().enumerate() {
        let invalid = |uid: String, message: String| EntityError::Invalid {
            source_name: source_name.to_string(),
            index,
            uid,
            message,
        };
        let uid: JsonUid = item
            .get("uid")
            .cloned()
            .ok_or_else(|| invalid(String::new(), "missing \"uid\"".into()))
            .and_then(|u| {
                serde_json::from_value(u)
                    .map_err(|e| invalid(String::new(), format!("bad \"uid\": {e}")))
            })?;
        let shown = format!(" ({}::{:?})", uid.ty, uid.id);
        let attrs = match item.get("attrs") {
            None => serde_json::Map::new(),
            Some(serde_json::Value::Object(m)) => m.clone(),
            Some(_) => return Err(invalid(shown, "\"attrs\" must be an object".into())),
        };
        let parents: Vec<JsonUid> = match item.get("parents") {
            None => Vec::new(),
            Some(p) => serde_json::from_value(p.clone())
                .map_err(|e| invalid(shown.clone(), format!("bad \"parents\": {e}")))?,
        };
        let str_attr = |name: &str| -> Result<String, EntityError> {
            match attrs.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(invalid(
                    shown.clone(),
                    format!("attribute '{name}' must be a string"),
                )),
                None => Err(invalid(
                    shown.clone(),
                    format!("missing attribute '{name}'"),
                )),
            }
        };
        let list_attr = |name: &str| -> Result<Vec<String>, EntityError> {
            match attrs.get(name) {
                Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                    invalid(
                        shown.clone(),
                        format!("attribute '{name}' must be a list of strings"),
                    )
                }),
                None => Err(invalid(
                    shown.clone(),
                    format!("missing attribute '{name}'"),
                )),
            }
        };
        let only = |allowed: &[&str]| -> Result<(), EntityError> {
            match attrs.keys().find(|k| !allowed.contains(&k.as_str())) {
                Some(k) => Err(invalid(
                    shown.clone(),
                    format!(
                        "unexpected attribute '{k}' (allowed: {})",
                        allowed.join(", ")
                    ),
                )),
                None => Ok(()),
            }
        };
        let parents_of = |ty: &str| -> Result<Vec<String>, EntityError> {
            parents
                .iter()
                .map(|p| {
                    if p.ty == ty {
                        Ok(p.id.clone())
                    } else {
                        Err(invalid(
                            shown.clone(),
                            format!("parent {}::{:?} must be of type {ty}", p.ty, p.id),
                        ))
                    }
                })
                .collect()
        };
        match uid.ty.as_str() {
            cedar_types::USER => {
                only(&["department", "role", "enrolled", "cohort"])?;
                let enrolled = FactorSet::parse_names(list_attr("enrolled")?)
                    .map_err(|e| invalid(shown.clone(), format!("attribute 'enrolled': {e}")))?;
                if let Some(c) = attrs.get("cohort") {
                    let computed = cohort_of(&uid.id);
                    if c.as_u64() != Some(u64::from(computed)) {
                        return Err(invalid(
                            shown,
                            format!("attribute 'cohort' is derived from the user id (it is {computed} here); omit it"),
                        ));
                    }
                }
                batch.users.push(UserRecord {
                    department: str_attr("department")?,
                    role: str_attr("role")?,
                    enrolled,
                    groups: parents_of(cedar_types::GROUP)?,
                    id: uid.id,
                });
            }
            cedar_types::GROUP => {
                only(&[])?;
                batch.groups.push(GroupRecord { parents: parents_of(cedar_types::GROUP)?, id: uid.id });
            }
            cedar_types::DEVICE => {
                only(&["kind", "capabilities", "location"])?;
                let tiers = parents_of(cedar_types::TIER)?;
                let [tier] = tiers.as_slice() else {
                    return Err(invalid(shown, "a device must have exactly one Sekisho::Tier parent".into()));
                };
                let tier = Tier::from_str(tier).map_err(|e| invalid(shown.clone(), e.to_string()))?;
                let kind = DeviceKind::from_str(&str_attr("kind")?)
                    .map_err(|e| invalid(shown.clone(), format!("attribute 'kind': {e}")))?;
                let capabilities = Capabilities::parse_names(list_attr("capabilities")?)
                    .map_err(|e| invalid(shown.clone(), format!("attribute 'capabilities': {e}")))?;
                batch.devices.push(DeviceRecord {
                    tier,
                    kind,
                    capabilities,
                    location: str_attr("location")?,
                    id: uid.id,
                });
            }
            cedar_types::TIER => {
                // Tiers are fixed; listing them is allowed for Cedar tooling's sake.
                Tier::from_str(&uid.id).map_err(|e| invalid(shown.clone(), e.to_string()))?;
                only(&[])?;
            }
            other => {
                return Err(invalid(
                    shown.clone(),
                    format!("unknown entity type '{other}' (expected Sekisho::User, Sekisho::Group, Sekisho::Device or Sekisho::Tier)"),
                ))
            }
        }
    }
    Ok(batch)
}

/// Writes a batch in Cedar's entity JSON format (the inverse of [`parse_entities_json`]).
pub fn entities_to_json(batch: &EntityBatch) -> serde_json::Value {
    use serde_json::json;
    let uid = |ty: &str, id: &str| json!({"type": ty, "id": id});
    let mut out = Vec::new();
    for g in &batch.groups {
        out.push(json!({"uid": uid(cedar_types::GROUP, &g.id), "attrs": {},
            "parents": g.parents.iter().map(|p| uid(cedar_types::GROUP, p)).collect::<Vec<_>>()}));
    }
    for u in &batch.users {
        out.push(json!({"uid": uid(cedar_types::USER, &u.id),
            "attrs": {"department": u.department, "role": u.role, "enrolled": u.enrolled.names()},
            "parents": u.groups.iter().map(|p| uid(cedar_types::GROUP, p)).collect::<Vec<_>>()}));
    }
    for d in &batch.devices {
        out.push(json!({"uid": uid(cedar_types::DEVICE, &d.id),
            "attrs": {"kind": d.kind.name(), "capabilities": d.capabilities.names(), "location": d.location},
            "parents": [uid(cedar_types::TIER, d.tier.name())]}));
    }
    serde_json::Value::Array(out)
}

// ---------------------------------------------------------------------------
// Per-request Cedar entities

struct TypeNames {
    user: EntityTypeName,
    group: EntityTypeName,
    device: EntityTypeName,
    tier: EntityTypeName,
    action: EntityTypeName,
}

fn type_names() -> &'static TypeNames {
    static NAMES: std::sync::OnceLock<TypeNames> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        // These are constant, valid Cedar names; a failure here is a programming error
        // caught by every test.
        let n = |s: &str| EntityTypeName::from_str(s).expect("constant Cedar type name");
        TypeNames {
            user: n(cedar_types::USER),
            group: n(cedar_types::GROUP),
            device: n(cedar_types::DEVICE),
            tier: n(cedar_types::TIER),
            action: n(cedar_types::ACTION),
        }
    })
}

pub(crate) fn user_uid(id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_names().user.clone(), EntityId::new(id))
}
pub(crate) fn device_uid(id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_names().device.clone(), EntityId::new(id))
}
pub(crate) fn action_uid(a: crate::model::Action) -> EntityUid {
    EntityUid::from_type_name_and_id(type_names().action.clone(), EntityId::new(a.name()))
}

fn string_set<'a>(names: impl IntoIterator<Item = &'a str>) -> RestrictedExpression {
    RestrictedExpression::new_set(
        names
            .into_iter()
            .map(|n| RestrictedExpression::new_string(n.to_string())),
    )
}

/// The Cedar entities one decision needs: the user (parents = its whole group closure)
/// and the device (parent = its tier).
pub(crate) fn request_entities(user: &User, device: &DeviceRecord) -> Result<Entities, String> {
    let names = type_names();
    let parents: HashSet<EntityUid> = user
        .ancestors
        .iter()
        .map(|g| EntityUid::from_type_name_and_id(names.group.clone(), EntityId::new(g.as_ref())))
        .collect();
    let r = &user.record;
    let user_entity = Entity::new(
        user_uid(&r.id),
        HashMap::from([
            (
                "department".to_string(),
                RestrictedExpression::new_string(r.department.clone()),
            ),
            (
                "role".to_string(),
                RestrictedExpression::new_string(r.role.clone()),
            ),
            ("enrolled".to_string(), string_set(r.enrolled.names())),
            (
                "cohort".to_string(),
                RestrictedExpression::new_long(i64::from(user.cohort)),
            ),
        ]),
        parents,
    )
    .map_err(|e| e.to_string())?;
    let tier =
        EntityUid::from_type_name_and_id(names.tier.clone(), EntityId::new(device.tier.name()));
    let device_entity = Entity::new(
        device_uid(&device.id),
        HashMap::from([
            (
                "kind".to_string(),
                RestrictedExpression::new_string(device.kind.name().to_string()),
            ),
            (
                "capabilities".to_string(),
                string_set(device.capabilities.names()),
            ),
            (
                "location".to_string(),
                RestrictedExpression::new_string(device.location.clone()),
            ),
        ]),
        HashSet::from([tier]),
    )
    .map_err(|e| e.to_string())?;
    Entities::from_entities([user_entity, device_entity], None).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"[
      {"uid": {"type": "Sekisho::Group", "id": "citizen"}, "attrs": {}, "parents": []},
      {"uid": {"type": "Sekisho::Group", "id": "counter"}, "parents": [{"type": "Sekisho::Group", "id": "citizen"}]},
      {"uid": {"type": "Sekisho::User", "id": "u001"},
       "attrs": {"department": "市民課", "role": "staff", "enrolled": ["card", "password"]},
       "parents": [{"type": "Sekisho::Group", "id": "counter"}]},
      {"uid": {"type": "Sekisho::Device", "id": "mn-1"},
       "attrs": {"kind": "shared", "capabilities": ["face", "card"], "location": "1F"},
       "parents": [{"type": "Sekisho::Tier", "id": "mynumber"}]},
      {"uid": {"type": "Sekisho::Tier", "id": "mynumber"}}
    ]"#;

    #[test]
    fn parses_and_derives_closure() {
        let batch = parse_entities_json("e.json", SAMPLE).unwrap();
        let dir = Directory::from_batch(batch.clone()).unwrap();
        let u = dir.user("u001").unwrap();
        assert_eq!(&*u.ancestors, &[Arc::from("citizen"), Arc::from("counter")]);
        assert_eq!(u.record.department, "市民課");
        assert!(u.cohort < 100);
        assert_eq!(dir.device("mn-1").unwrap().tier, Tier::Mynumber);
        // Round trip through the JSON writer.
        let again =
            parse_entities_json("x", &entities_to_json(&dir.to_batch()).to_string()).unwrap();
        assert_eq!(
            Directory::from_batch(again).unwrap().to_batch(),
            dir.to_batch()
        );
    }

    #[test]
    fn errors_name_entity_and_field() {
        let bad = SAMPLE.replace(
            r#""enrolled": ["card", "password"]"#,
            r#""enrolled": ["card", "iris"]"#,
        );
        let err = parse_entities_json("e.json", &bad).unwrap_err().to_string();
        assert!(err.starts_with("e.json: entity #2 (Sekisho::User::\"u001\"): attribute 'enrolled': unknown factor 'iris'"), "{err}");
        let bad = SAMPLE.replace(r#""id": "mynumber"}]"#, r#""id": "intranet"}]"#);
        let err = parse_entities_json("e.json", &bad).unwrap_err().to_string();
        assert!(
            err.contains("entity #3") && err.contains("unknown tier 'intranet'"),
            "{err}"
        );
        let bad = SAMPLE.replace(r#""kind": "shared""#, r#""kind": "kiosk""#);
        assert!(parse_entities_json("e.json", &bad)
            .unwrap_err()
            .to_string()
            .contains("attribute 'kind': unknown device kind 'kiosk'"));
    }

    #[test]
    fn references_are_checked_and_failures_change_nothing() {
        let mut dir = Directory::from_batch(parse_entities_json("e", SAMPLE).unwrap()).unwrap();
        let before = dir.to_batch();
        let bad_user = UserRecord {
            id: "u002".into(),
            department: "d".into(),
            role: "staff".into(),
            enrolled: FactorSet::EMPTY,
            groups: vec!["nope".into()],
        };
        let err = dir
            .apply(
                EntityBatch {
                    users: vec![bad_user],
                    ..Default::default()
                },
                EntityDeletion::default(),
            )
            .unwrap_err();
        assert_eq!(
            err,
            EntityError::UnknownGroup {
                user: "u002".into(),
                group: "nope".into()
            }
        );
        let err = dir
            .apply(
                EntityBatch::default(),
                EntityDeletion {
                    groups: vec!["counter".into()],
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(matches!(err, EntityError::GroupInUse { .. }), "{err}");
        let cyc = GroupRecord {
            id: "citizen".into(),
            parents: vec!["counter".into()],
        };
        let err = dir
            .apply(
                EntityBatch {
                    groups: vec![cyc],
                    ..Default::default()
                },
                EntityDeletion::default(),
            )
            .unwrap_err();
        assert!(matches!(err, EntityError::GroupCycle { .. }), "{err}");
        assert_eq!(dir.to_batch(), before);
    }

    #[test]
    fn moving_a_group_moves_its_members() {
        let mut dir = Directory::from_batch(parse_entities_json("e", SAMPLE).unwrap()).unwrap();
        let new_root = GroupRecord {
            id: "mayor".into(),
            parents: vec![],
        };
        let moved = GroupRecord {
            id: "counter".into(),
            parents: vec!["mayor".into()],
        };
        dir.apply(
            EntityBatch {
                groups: vec![new_root, moved],
                ..Default::default()
            },
            EntityDeletion::default(),
        )
        .unwrap();
        let a: Vec<&str> = dir
            .user("u001")
            .unwrap()
            .ancestors
            .iter()
            .map(|s| s.as_ref())
            .collect();
        assert_eq!(a, ["counter", "mayor"]);
    }

    #[test]
    fn cohort_is_stable() {
        assert_eq!(cohort_of("u001"), cohort_of("u001"));
        let spread: HashSet<u8> = (0..2000).map(|i| cohort_of(&format!("u{i}"))).collect();
        assert!(spread.len() > 90);
    }
}
