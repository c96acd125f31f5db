use cedar_policy::*;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
fn uid(t: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(EntityTypeName::from_str(t).unwrap(), EntityId::new(id))
}
fn set(v: &[&str]) -> RestrictedExpression {
    RestrictedExpression::new_set(
        v.iter()
            .map(|s| RestrictedExpression::new_string(s.to_string())),
    )
}
fn main() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let compiled = sekisho_policy_engine::CompiledPolicies::compile(
        sekisho_policy_engine::PolicySources::load_dir(&dir).unwrap(),
        1,
    )
    .unwrap();
    let parents: HashSet<EntityUid> = [
        "mynumber-operators",
        "it-admins",
        "teleworkers",
        "all-staff",
    ]
    .iter()
    .map(|g| uid("Sekisho::Group", g))
    .collect();
    let user = Entity::new(
        uid("Sekisho::User", "u1"),
        HashMap::from([
            (
                "department".to_string(),
                RestrictedExpression::new_string("x".into()),
            ),
            (
                "role".to_string(),
                RestrictedExpression::new_string("staff".into()),
            ),
            ("enrolled".to_string(), set(&["card", "password"])),
            ("cohort".to_string(), RestrictedExpression::new_long(3)),
        ]),
        parents,
    )
    .unwrap();
    for (tier, kind, action) in [
        ("lgwan", "desktop", "logon"),
        ("mynumber", "shared", "logon"),
        ("internet", "desktop", "elevate"),
        ("lgwan", "vdi", "unlock"),
    ] {
        let dev = Entity::new(
            uid("Sekisho::Device", "d1"),
            HashMap::from([
                (
                    "kind".to_string(),
                    RestrictedExpression::new_string(kind.into()),
                ),
                ("capabilities".to_string(), set(&["card"])),
                (
                    "location".to_string(),
                    RestrictedExpression::new_string("本庁舎".into()),
                ),
            ]),
            HashSet::from([uid("Sekisho::Tier", tier)]),
        )
        .unwrap();
        let es = Entities::from_entities([user.clone(), dev], None).unwrap();
        let ctx = Context::from_pairs([
            (
                "factors".to_string(),
                RestrictedExpression::new_unknown("factors"),
            ),
            (
                "via".to_string(),
                RestrictedExpression::new_string("console".into()),
            ),
            ("upstream".to_string(), set(&[])),
            ("hour".to_string(), RestrictedExpression::new_long(10)),
        ])
        .unwrap();
        let req = Request::new(
            uid("Sekisho::User", "u1"),
            uid("Sekisho::Action", action),
            uid("Sekisho::Device", "d1"),
            ctx,
            None,
        )
        .unwrap();
        let r = Authorizer::new().is_authorized_partial(&req, &compiled.set, &es);
        println!("== {tier} {kind} {action}");
        for p in r.definitely_satisfied() {
            println!("  satisfied {}", p.id());
        }
        for p in r.nontrivial_residuals() {
            let t = sekisho_policy_engine::analysis::residual_table(&p);
            println!(
                "  residual {} table={} :: {}",
                p.id(),
                t.is_some(),
                p.to_string().replace('\n', " ")
            );
        }
    }
}
