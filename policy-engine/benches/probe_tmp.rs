mod common;
use cedar_policy::*;
use common::*;
use sekisho_policy_engine::analysis::PrincipalScope;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Instant;
fn uid(t: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(EntityTypeName::from_str(t).unwrap(), EntityId::new(id))
}
fn set(v: Vec<&str>) -> RestrictedExpression {
    RestrictedExpression::new_set(
        v.into_iter()
            .map(|s| RestrictedExpression::new_string(s.to_string())),
    )
}
fn main() {
    let compiled = sekisho_policy_engine::CompiledPolicies::compile(big_sources(), 1).unwrap();
    let batch = city_batch();
    let reqs = requests(&batch, 2000);
    let dir = sekisho_policy_engine::entities::Directory::from_batch(batch).unwrap();
    let n = reqs.len() as u32;
    let mut t_ent = std::time::Duration::ZERO;
    let mut t_es = t_ent;
    let mut t_ctx = t_ent;
    let mut t_req = t_ent;
    let mut t_slice = t_ent;
    let mut t_auth = t_ent;
    let mut t_auth_all = t_ent;
    let mut anc = 0usize;
    for pass in 0..2 { if pass == 1 { t_ent = std::time::Duration::ZERO; t_es = t_ent; t_ctx = t_ent; t_req = t_ent; t_slice = t_ent; t_auth = t_ent; t_auth_all = t_ent; anc = 0; }
    for (r, f) in &reqs {
        let user = dir.user(&r.user).unwrap();
        let dev = dir.device(&r.device).unwrap();
        anc += user.ancestors.len();
        let t = Instant::now();
        let parents: HashSet<EntityUid> = user
            .ancestors
            .iter()
            .map(|g| uid("Sekisho::Group", g))
            .collect();
        let ue = Entity::new(
            uid("Sekisho::User", &r.user),
            HashMap::from([
                (
                    "department".to_string(),
                    RestrictedExpression::new_string(user.record.department.clone()),
                ),
                (
                    "role".to_string(),
                    RestrictedExpression::new_string(user.record.role.clone()),
                ),
                ("enrolled".to_string(), set(user.record.enrolled.names())),
                (
                    "cohort".to_string(),
                    RestrictedExpression::new_long(user.cohort as i64),
                ),
            ]),
            parents,
        )
        .unwrap();
        let de = Entity::new(
            uid("Sekisho::Device", &dev.id),
            HashMap::from([
                (
                    "kind".to_string(),
                    RestrictedExpression::new_string(dev.kind.name().into()),
                ),
                ("capabilities".to_string(), set(dev.capabilities.names())),
                (
                    "location".to_string(),
                    RestrictedExpression::new_string(dev.location.clone()),
                ),
            ]),
            HashSet::from([uid("Sekisho::Tier", dev.tier.name())]),
        )
        .unwrap();
        t_ent += t.elapsed();
        let t = Instant::now();
        let es = Entities::from_entities([ue, de], None).unwrap();
        t_es += t.elapsed();
        let t = Instant::now();
        let ctx = Context::from_pairs([
            ("factors".to_string(), set(f.closed().names())),
            (
                "via".to_string(),
                RestrictedExpression::new_string(r.via.name().into()),
            ),
            ("upstream".to_string(), set(r.upstream.closed().names())),
            (
                "hour".to_string(),
                RestrictedExpression::new_long(r.hour as i64),
            ),
        ])
        .unwrap();
        t_ctx += t.elapsed();
        let t = Instant::now();
        let req = Request::new(
            uid("Sekisho::User", &r.user),
            uid("Sekisho::Action", r.action.name()),
            uid("Sekisho::Device", &dev.id),
            ctx,
            None,
        )
        .unwrap();
        t_req += t.elapsed();
        let t = Instant::now();
        let mut ps = PolicySet::new();
        for p in compiled.policies.iter().filter(|p| {
            p.scope
                .actions
                .as_ref()
                .map_or(true, |a| a.contains(&r.action))
                && p.scope.tier.map_or(true, |t| t == dev.tier)
                && match &p.scope.principal {
                    PrincipalScope::Any => true,
                    PrincipalScope::Group(g) => {
                        user.ancestors.iter().any(|a| a.as_ref() == g.as_str())
                    }
                    PrincipalScope::User(u) => *u == r.user,
                }
        }) {
            ps.add(p.policy.clone()).unwrap();
        }
        t_slice += t.elapsed();
        let auth = Authorizer::new();
        let t = Instant::now();
        std::hint::black_box(auth.is_authorized(&req, &ps, &es));
        t_auth += t.elapsed();
        let t = Instant::now();
        std::hint::black_box(auth.is_authorized(&req, &compiled.set, &es));
        t_auth_all += t.elapsed();
    }}
    let us = |d: std::time::Duration| (d / n).as_secs_f64() * 1e6;
    println!("mean over {n} requests (µs): build 2 Entity {:.1}; Entities::from_entities (TC) {:.1}; Context::from_pairs {:.1}; Request::new {:.1}; build slice PolicySet {:.1}; is_authorized(slice) {:.1}; is_authorized(all 1000) {:.1}; mean ancestors {:.1}",
        us(t_ent), us(t_es), us(t_ctx), us(t_req), us(t_slice), us(t_auth), us(t_auth_all), anc as f64 / n as f64);
}
