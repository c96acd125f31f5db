//! What a directory read means for the engine: the difference between what the
//! directory holds now and what the last sync saw (the mirror), as entity changes,
//! revocations and a per-user list for `--dry-run`. Pure: no I/O, so every rule here
//! is unit-tested.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::fetch::Snapshot;
use crate::entities::{Directory, EntityBatch, EntityDeletion, GroupRecord, UserRecord};
use crate::factor::FactorSet;

/// The directory's attributes of one user as sekisho uses them. Stored as JSON in the
/// mirror, so that the next run can tell what changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Mapped {
    pub name: String,
    pub department: String,
    pub role: String,
    /// Direct groups (ids, sorted).
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorUser {
    pub id: String,
    pub dn: String,
    pub disabled: bool,
    pub record: Mapped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorGroup {
    pub id: String,
    pub dn: String,
    pub parents: Vec<String>,
    /// The group's change marker when last read.
    pub changed: String,
}

/// What the last sync saw.
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    pub users: HashMap<String, MirrorUser>,
    pub groups: HashMap<String, MirrorGroup>,
    /// The id of the last applied sync run when this was read (0 before the first):
    /// a run's plan is committed only while no other run applied since, see
    /// [`crate::store::directory::SyncBasis`].
    pub as_of_run: u64,
}

impl Mirror {
    pub fn active_users(&self) -> usize {
        self.users.values().filter(|u| !u.disabled).count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Changed,
    Enabled,
    Disabled,
    Removed,
}

impl ChangeKind {
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Changed => "changed",
            ChangeKind::Enabled => "enabled",
            ChangeKind::Disabled => "disabled",
            ChangeKind::Removed => "removed",
        }
    }

    /// The revocation reason, for the kinds that end a user's access.
    pub fn revocation_reason(self) -> Option<&'static str> {
        match self {
            ChangeKind::Disabled => Some("directory_disabled"),
            ChangeKind::Removed => Some("directory_removed"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub user: String,
    pub kind: ChangeKind,
    pub detail: String,
}

/// Everything one run would do.
#[derive(Debug, Clone, Default)]
pub struct SyncPlan {
    /// Per user, sorted by (kind, user).
    pub changes: Vec<Change>,
    pub unchanged: usize,
    pub batch: EntityBatch,
    pub del: EntityDeletion,
    pub mirror_upserts: Vec<MirrorUser>,
    pub mirror_deletes: Vec<String>,
    /// The complete new group mirror, and whether it differs from the old one.
    pub groups: Vec<MirrorGroup>,
    pub groups_added: usize,
    pub groups_changed: usize,
    pub groups_removed: usize,
    /// Active users before the run (the base of the mass-removal share).
    pub active_before: usize,
    /// Users in the directory after the run (active and disabled).
    pub directory_users: usize,
}

impl SyncPlan {
    pub fn count(&self, kind: ChangeKind) -> usize {
        self.changes.iter().filter(|c| c.kind == kind).count()
    }

    /// Share of the active users this run would disable or remove.
    pub fn removal_share(&self) -> f64 {
        if self.active_before == 0 {
            return 0.0;
        }
        (self.count(ChangeKind::Disabled) + self.count(ChangeKind::Removed)) as f64
            / self.active_before as f64
    }

    /// Whether the entity store changes (otherwise only the mirror and the run log).
    pub fn changes_entities(&self) -> bool {
        !self.batch.is_empty()
            || !self.del.users.is_empty()
            || !self.del.groups.is_empty()
            || !self.del.devices.is_empty()
    }

    pub fn revocations(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.changes
            .iter()
            .filter_map(|c| c.kind.revocation_reason().map(|r| (c.user.as_str(), r)))
    }
}

/// Compares a directory read with the mirror. `current`: the engine's entities, whose
/// `enrolled` sets a sync keeps (the directory does not know what staff enrolled).
pub fn plan(snapshot: &Snapshot, mirror: &Mirror, current: &Directory) -> SyncPlan {
    let mut out = SyncPlan {
        active_before: mirror.active_users(),
        ..Default::default()
    };

    // Groups: always read whole, so the new mirror is exactly the directory's groups.
    let dn_to_id: HashMap<&str, &str> = snapshot
        .groups
        .iter()
        .map(|g| (g.dn.as_str(), g.id.as_str()))
        .collect();
    let ids_of = |dns: &[String]| -> Vec<String> {
        let set: BTreeSet<&str> = dns
            .iter()
            .filter_map(|d| dn_to_id.get(d.as_str()).copied())
            .collect();
        set.into_iter().map(str::to_string).collect()
    };
    let mut seen_groups = BTreeSet::new();
    for g in &snapshot.groups {
        if !seen_groups.insert(g.id.as_str()) {
            continue; // the same cn under two OUs: the first one wins, as listed
        }
        let parents: Vec<String> = ids_of(&g.member_of)
            .into_iter()
            .filter(|p| p != &g.id)
            .collect();
        let now = MirrorGroup {
            id: g.id.clone(),
            dn: g.dn.clone(),
            parents: parents.clone(),
            changed: g.changed.clone(),
        };
        match mirror.groups.get(&g.id) {
            None => out.groups_added += 1,
            Some(old) if old.parents != parents => out.groups_changed += 1,
            Some(_) if current.group(&g.id).is_some() => {
                out.groups.push(now);
                continue;
            }
            Some(_) => {} // deleted from the entities by hand: put it back
        }
        out.batch.groups.push(GroupRecord {
            id: g.id.clone(),
            parents,
        });
        out.groups.push(now);
    }
    let mut removed_groups: Vec<&String> = mirror
        .groups
        .keys()
        .filter(|id| !seen_groups.contains(id.as_str()))
        .collect();
    removed_groups.sort();
    out.groups_removed = removed_groups.len();
    out.del.groups = removed_groups.into_iter().cloned().collect();

    // Users the read returned (all of them, or the changed ones).
    let mut in_read = BTreeSet::new();
    for u in &snapshot.users {
        in_read.insert(u.id.as_str());
        let record = Mapped {
            name: u.name.clone(),
            department: u.department.clone(),
            role: u.role.clone(),
            groups: ids_of(&u.member_of),
        };
        let old = mirror.users.get(&u.id);
        let kind = match (old, u.disabled) {
            (None, false) => Some(ChangeKind::Added),
            (None, true) => None,
            (Some(m), false) if m.disabled => Some(ChangeKind::Enabled),
            (Some(m), false) if m.record != record => Some(ChangeKind::Changed),
            (Some(_), false) if current.user(&u.id).is_none() => Some(ChangeKind::Added),
            (Some(_), false) => None,
            (Some(m), true) if !m.disabled => Some(ChangeKind::Disabled),
            (Some(_), true) => None,
        };
        let mirror_row = MirrorUser {
            id: u.id.clone(),
            dn: u.dn.clone(),
            disabled: u.disabled,
            record: record.clone(),
        };
        match kind {
            Some(kind) => {
                let detail = match (kind, old) {
                    (ChangeKind::Changed, Some(m)) => describe(&m.record, &record),
                    (ChangeKind::Added | ChangeKind::Enabled, _) => summary(&record),
                    _ => String::new(),
                };
                if kind == ChangeKind::Disabled {
                    out.del.users.push(u.id.clone());
                } else {
                    let enrolled = current
                        .user(&u.id)
                        .map_or(FactorSet::EMPTY, |c| c.record.enrolled);
                    out.batch.users.push(UserRecord {
                        id: u.id.clone(),
                        department: record.department.clone(),
                        role: record.role.clone(),
                        enrolled,
                        groups: record.groups.clone(),
                    });
                }
                out.changes.push(Change {
                    user: u.id.clone(),
                    kind,
                    detail,
                });
                out.mirror_upserts.push(mirror_row);
            }
            None => {
                if !u.disabled {
                    out.unchanged += 1;
                }
                if old != Some(&mirror_row) {
                    out.mirror_upserts.push(mirror_row);
                }
            }
        }
    }

    // Users the read did not return: unchanged if still listed, otherwise gone.
    let mut gone: Vec<&MirrorUser> = Vec::new();
    for (id, m) in &mirror.users {
        if in_read.contains(id.as_str()) {
            continue;
        }
        if snapshot.all_ids.contains(id) {
            if !m.disabled {
                out.unchanged += 1;
            }
        } else {
            gone.push(m);
        }
    }
    gone.sort_by(|a, b| a.id.cmp(&b.id));
    for m in gone {
        out.mirror_deletes.push(m.id.clone());
        if !m.disabled {
            out.del.users.push(m.id.clone());
            out.changes.push(Change {
                user: m.id.clone(),
                kind: ChangeKind::Removed,
                detail: format!("no longer in the directory ({})", m.dn),
            });
        }
    }
    out.changes
        .sort_by(|a, b| (a.kind, &a.user).cmp(&(b.kind, &b.user)));
    let added = out
        .mirror_upserts
        .iter()
        .filter(|u| !mirror.users.contains_key(&u.id))
        .count();
    out.directory_users = mirror.users.len() + added - out.mirror_deletes.len();
    out
}

fn summary(r: &Mapped) -> String {
    let mut parts = Vec::new();
    if !r.department.is_empty() {
        parts.push(format!("department {}", r.department));
    }
    if !r.role.is_empty() {
        parts.push(format!("role {}", r.role));
    }
    if !r.groups.is_empty() {
        parts.push(format!("groups {}", r.groups.join(",")));
    }
    parts.join("; ")
}

fn describe(old: &Mapped, new: &Mapped) -> String {
    let mut parts = Vec::new();
    let mut field = |name: &str, a: &str, b: &str| {
        if a != b {
            parts.push(format!("{name} {a:?} → {b:?}"));
        }
    };
    field("name", &old.name, &new.name);
    field("department", &old.department, &new.department);
    field("role", &old.role, &new.role);
    if old.groups != new.groups {
        let before: BTreeSet<&String> = old.groups.iter().collect();
        let after: BTreeSet<&String> = new.groups.iter().collect();
        let mut g: BTreeMap<&str, char> = BTreeMap::new();
        for x in after.difference(&before) {
            g.insert(x, '+');
        }
        for x in before.difference(&after) {
            g.insert(x, '-');
        }
        let list: Vec<String> = g.iter().map(|(id, s)| format!("{s}{id}")).collect();
        parts.push(format!("groups {}", list.join(" ")));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::fetch::{DirGroup, DirUser};

    fn user(id: &str, dept: &str, groups: &[&str], disabled: bool) -> DirUser {
        DirUser {
            dn: format!("uid={id},ou=people,dc=x"),
            id: id.into(),
            name: id.to_uppercase(),
            department: dept.into(),
            role: String::new(),
            member_of: groups
                .iter()
                .map(|g| format!("cn={g},ou=groups,dc=x"))
                .collect(),
            disabled,
            changed: "1".into(),
        }
    }

    fn group(id: &str, parents: &[&str]) -> DirGroup {
        DirGroup {
            dn: format!("cn={id},ou=groups,dc=x"),
            id: id.into(),
            member_of: parents
                .iter()
                .map(|g| format!("cn={g},ou=groups,dc=x"))
                .collect(),
            changed: "1".into(),
        }
    }

    fn full(users: Vec<DirUser>, groups: Vec<DirGroup>) -> Snapshot {
        Snapshot {
            full: true,
            all_ids: users.iter().map(|u| u.id.clone()).collect(),
            users,
            groups,
            high_water: Some("1".into()),
            skipped: vec![],
        }
    }

    /// Applies a plan the way the engine does: entities and mirror.
    fn apply(p: &SyncPlan, mirror: &mut Mirror, dir: &mut Directory) {
        dir.apply(p.batch.clone(), p.del.clone()).unwrap();
        for id in &p.mirror_deletes {
            mirror.users.remove(id);
        }
        for u in &p.mirror_upserts {
            mirror.users.insert(u.id.clone(), u.clone());
        }
        mirror.groups = p.groups.iter().map(|g| (g.id.clone(), g.clone())).collect();
    }

    #[test]
    fn first_sync_adds_then_nothing_changes() {
        let snap = full(
            vec![
                user("tanaka", "jinji", &["jinji"], false),
                user("old", "", &[], true),
            ],
            vec![group("jinji", &["all"]), group("all", &[])],
        );
        let (mut mirror, mut dir) = (Mirror::default(), Directory::default());
        let p = plan(&snap, &mirror, &dir);
        assert_eq!(p.count(ChangeKind::Added), 1);
        assert_eq!(p.groups_added, 2);
        assert_eq!(p.batch.users[0].groups, vec!["jinji".to_string()]);
        assert_eq!(p.directory_users, 2);
        apply(&p, &mut mirror, &mut dir);
        assert_eq!(dir.user("tanaka").unwrap().ancestors.len(), 2);
        let again = plan(&snap, &mirror, &dir);
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert!(!again.changes_entities());
        assert!(again.mirror_upserts.is_empty());
        assert_eq!(again.unchanged, 1);
    }

    #[test]
    fn transfer_disable_remove_and_enable() {
        let groups = vec![group("jinji", &[]), group("zeimu", &[])];
        let snap = full(
            vec![
                user("a", "jinji", &["jinji"], false),
                user("b", "jinji", &["jinji"], false),
                user("c", "jinji", &[], false),
                user("d", "jinji", &[], true),
            ],
            groups.clone(),
        );
        let (mut mirror, mut dir) = (Mirror::default(), Directory::default());
        apply(&plan(&snap, &mirror, &dir), &mut mirror, &mut dir);

        let next = full(
            vec![
                user("a", "zeimu", &["zeimu"], false),
                user("b", "jinji", &["jinji"], true),
                user("d", "jinji", &[], false),
            ],
            groups,
        );
        let p = plan(&next, &mirror, &dir);
        let kinds: Vec<(&str, ChangeKind)> = p
            .changes
            .iter()
            .map(|c| (c.user.as_str(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("a", ChangeKind::Changed),
                ("d", ChangeKind::Enabled),
                ("b", ChangeKind::Disabled),
                ("c", ChangeKind::Removed)
            ]
        );
        assert_eq!(
            p.changes[0].detail,
            "department \"jinji\" → \"zeimu\"; groups -jinji +zeimu"
        );
        let revoked: Vec<_> = p.revocations().collect();
        assert_eq!(
            revoked,
            vec![("b", "directory_disabled"), ("c", "directory_removed")]
        );
        // 3 active before (a, b, c); b and c go.
        assert!((p.removal_share() - 2.0 / 3.0).abs() < 1e-9);
        apply(&p, &mut mirror, &mut dir);
        assert!(dir.user("b").is_none() && dir.user("c").is_none());
        assert_eq!(dir.user("a").unwrap().record.department, "zeimu");
        assert_eq!(p.directory_users, 3);
    }

    #[test]
    fn enrolled_factors_survive_a_sync() {
        let snap = full(vec![user("a", "x", &[], false)], vec![]);
        let (mut mirror, mut dir) = (Mirror::default(), Directory::default());
        apply(&plan(&snap, &mirror, &dir), &mut mirror, &mut dir);
        let mut batch = EntityBatch::default();
        let mut rec = dir.user("a").unwrap().record.clone();
        rec.enrolled = FactorSet::parse_names(&["card".to_string()]).unwrap();
        batch.users.push(rec);
        dir.apply(batch, EntityDeletion::default()).unwrap();
        let moved = full(vec![user("a", "y", &[], false)], vec![]);
        let p = plan(&moved, &mirror, &dir);
        assert_eq!(p.batch.users[0].enrolled.names(), vec!["card"]);
    }

    #[test]
    fn incremental_read_keeps_unlisted_users_and_sees_deletions() {
        let snap = full(
            vec![user("a", "x", &[], false), user("b", "x", &[], false)],
            vec![],
        );
        let (mut mirror, mut dir) = (Mirror::default(), Directory::default());
        apply(&plan(&snap, &mirror, &dir), &mut mirror, &mut dir);
        let inc = Snapshot {
            full: false,
            users: vec![],
            all_ids: ["a".to_string()].into(),
            groups: vec![],
            high_water: Some("2".into()),
            skipped: vec![],
        };
        let p = plan(&inc, &mirror, &dir);
        assert_eq!(p.unchanged, 1);
        assert_eq!(p.count(ChangeKind::Removed), 1);
        assert_eq!(p.del.users, vec!["b".to_string()]);
    }

    #[test]
    fn an_empty_read_would_remove_everyone() {
        let snap = full(vec![user("a", "x", &[], false)], vec![group("g", &[])]);
        let (mut mirror, mut dir) = (Mirror::default(), Directory::default());
        apply(&plan(&snap, &mirror, &dir), &mut mirror, &mut dir);
        let p = plan(&full(vec![], vec![]), &mirror, &dir);
        assert_eq!(p.removal_share(), 1.0);
        assert_eq!(p.groups_removed, 1);
    }
}
