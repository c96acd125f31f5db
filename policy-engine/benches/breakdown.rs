//! Where a decision's time goes: the steps `Engine::authorize` and `Engine::plan`
//! take, redone here with the public Cedar API on the big city's requests and timed
//! one by one (means over the second of two passes). Also checks whether Cedar can
//! turn plan residuals into a PST (what `analysis::residual_table` needs).
//!
//!   cargo bench -p sekisho-policy-engine --bench breakdown

mod common;

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::str::FromStr;
use std::time::{Duration, Instant};

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request,
    RestrictedExpression,
};
use common::*;
use sekisho_policy_engine::analysis::{residual_table, PrincipalScope};
use sekisho_policy_engine::entities::Directory;
use sekisho_policy_engine::CompiledPolicies;

struct Types {
    user: EntityTypeName,
    group: EntityTypeName,
    device: EntityTypeName,
    tier: EntityTypeName,
    action: EntityTypeName,
}

fn set(v: Vec<&str>) -> RestrictedExpression {
    RestrictedExpression::new_set(
        v.into_iter()
            .map(|s| RestrictedExpression::new_string(s.into())),
    )
}

#[derive(Default)]
struct Steps {
    entity: Duration,
    entities: Duration,
    context: Duration,
    request: Duration,
    slice: Duration,
    authorize: Duration,
    authorize_all: Duration,
    partial: Duration,
    residual_json: Duration,
    residuals: usize,
    residuals_with_table: usize,
    first_pst_error: Option<String>,
}

fn main() {
    let ty = |s: &str| EntityTypeName::from_str(s).unwrap();
    let t = Types {
        user: ty("Sekisho::User"),
        group: ty("Sekisho::Group"),
        device: ty("Sekisho::Device"),
        tier: ty("Sekisho::Tier"),
        action: ty("Sekisho::Action"),
    };
    let uid = |ty: &EntityTypeName, id: &str| {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    };
    let compiled = CompiledPolicies::compile(big_sources(), 1).unwrap_or_else(|e| panic!("{e}"));
    let batch = city_batch();
    let reqs = requests(&batch, 2_000);
    let dir = Directory::from_batch(batch).unwrap();
    let auth = Authorizer::new();

    let mut s = Steps::default();
    let mut slice_len = 0usize;
    for _pass in 0..2 {
        s = Steps::default();
        slice_len = 0;
        for (r, f) in &reqs {
            let user = dir.user(&r.user).unwrap();
            let dev = dir.device(&r.device).unwrap();

            let t0 = Instant::now();
            let parents: HashSet<EntityUid> =
                user.ancestors.iter().map(|g| uid(&t.group, g)).collect();
            let ue = Entity::new(
                uid(&t.user, &r.user),
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
                        RestrictedExpression::new_long(i64::from(user.cohort)),
                    ),
                ]),
                parents,
            )
            .unwrap();
            let de = Entity::new(
                uid(&t.device, &dev.id),
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
                HashSet::from([uid(&t.tier, dev.tier.name())]),
            )
            .unwrap();
            s.entity += t0.elapsed();

            let t0 = Instant::now();
            let es = Entities::from_entities([ue, de], None).unwrap();
            s.entities += t0.elapsed();

            let ctx = |factors: RestrictedExpression| {
                Context::from_pairs([
                    ("factors".to_string(), factors),
                    (
                        "via".to_string(),
                        RestrictedExpression::new_string(r.via.name().into()),
                    ),
                    ("upstream".to_string(), set(r.upstream.closed().names())),
                    (
                        "hour".to_string(),
                        RestrictedExpression::new_long(i64::from(r.hour)),
                    ),
                ])
                .unwrap()
            };
            let t0 = Instant::now();
            let c = ctx(set(f.closed().names()));
            s.context += t0.elapsed();
            let t0 = Instant::now();
            let req = Request::new(
                uid(&t.user, &r.user),
                uid(&t.action, r.action.name()),
                uid(&t.device, &dev.id),
                c,
                None,
            )
            .unwrap();
            s.request += t0.elapsed();

            // The slice (the engine caches these; building one is shown for scale).
            let t0 = Instant::now();
            let mut slice = PolicySet::new();
            for p in compiled.policies.iter().filter(|p| {
                p.scope
                    .actions
                    .as_ref()
                    .is_none_or(|a| a.contains(&r.action))
                    && p.scope.tier.is_none_or(|t| t == dev.tier)
                    && match &p.scope.principal {
                        PrincipalScope::Any => true,
                        PrincipalScope::Group(g) => {
                            user.ancestors.iter().any(|a| a.as_ref() == g.as_str())
                        }
                        PrincipalScope::User(u) => *u == r.user,
                    }
            }) {
                slice.add(p.policy.clone()).unwrap();
                slice_len += 1;
            }
            s.slice += t0.elapsed();

            let t0 = Instant::now();
            black_box(auth.is_authorized(&req, &slice, &es));
            s.authorize += t0.elapsed();
            let t0 = Instant::now();
            black_box(auth.is_authorized(&req, &compiled.set, &es));
            s.authorize_all += t0.elapsed();

            let preq = Request::new(
                uid(&t.user, &r.user),
                uid(&t.action, r.action.name()),
                uid(&t.device, &dev.id),
                ctx(RestrictedExpression::new_unknown("factors")),
                None,
            )
            .unwrap();
            let t0 = Instant::now();
            let partial = auth.is_authorized_partial(&preq, &slice, &es);
            s.partial += t0.elapsed();
            for p in partial.nontrivial_residuals() {
                s.residuals += 1;
                if residual_table(&p).is_some() {
                    s.residuals_with_table += 1;
                }
                if let (None, Err(e)) = (&s.first_pst_error, p.to_pst()) {
                    s.first_pst_error = Some(format!("{e}"));
                }
                let t0 = Instant::now();
                black_box(p.to_json().unwrap());
                s.residual_json += t0.elapsed();
            }
        }
    }
    let n = reqs.len() as u32;
    let m = |d: Duration| us(d / n);
    println!(
        "per request, mean µs over {} requests (second pass); slices average {:.1} policies",
        n,
        slice_len as f64 / n as f64
    );
    println!(
        "  build the user and device Entity (attrs, 6 ancestors avg)   {:>8.1}",
        m(s.entity)
    );
    println!(
        "  Entities::from_entities (validates, computes TC)             {:>8.1}",
        m(s.entities)
    );
    println!(
        "  Context::from_pairs                                          {:>8.1}",
        m(s.context)
    );
    println!(
        "  Request::new                                                 {:>8.1}",
        m(s.request)
    );
    println!(
        "  build the slice PolicySet (engine caches this)               {:>8.1}",
        m(s.slice)
    );
    println!(
        "  Authorizer::is_authorized on the slice                       {:>8.1}",
        m(s.authorize)
    );
    println!(
        "  Authorizer::is_authorized on all 1,000 policies              {:>8.1}",
        m(s.authorize_all)
    );
    println!(
        "  Authorizer::is_authorized_partial on the slice (plan)        {:>8.1}",
        m(s.partial)
    );
    println!(
        "  Policy::to_json of the residuals ({:.1} per request)          {:>8.1}",
        s.residuals as f64 / n as f64,
        m(s.residual_json)
    );
    println!(
        "residuals that analysis::residual_table compiles: {} of {}",
        s.residuals_with_table, s.residuals
    );
    if let Some(e) = s.first_pst_error {
        println!("Policy::to_pst() on a residual: {e}");
    }
}
