//! The reference policies over the example city: every plan is computed from compiled
//! residuals (no fallback), and Authorize answered from the class's per-policy tables
//! says exactly what a Cedar evaluation says, deciding policies included.

use sekisho_policy_engine::entities::{parse_entities_json, Directory};
use sekisho_policy_engine::{
    Action, CompiledPolicies, DecisionRequest, Engine, FactorSet, PolicySources, Via,
};

fn engine() -> Engine {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let compiled = CompiledPolicies::compile(PolicySources::load_dir(&root).unwrap(), 1).unwrap();
    let text = std::fs::read_to_string(root.join("examples/entities.json")).unwrap();
    Engine::new(
        compiled,
        Directory::from_batch(parse_entities_json("entities.json", &text).unwrap()).unwrap(),
    )
}

#[test]
fn table_answers_equal_cedar_answers_for_the_whole_city() {
    let planned = engine();
    let (users, devices): (Vec<String>, Vec<String>) = planned.with_directory(|d| {
        let mut u: Vec<String> = d.users().map(|u| u.record.id.clone()).collect();
        let mut v: Vec<String> = d.devices().map(|d| d.id.clone()).collect();
        u.sort();
        v.sort();
        (u, v)
    });
    // A few sets around every option: the option itself, minus each factor, plus PIN.
    let mut compared = 0usize;
    for user in &users {
        for device in &devices {
            for action in Action::ALL {
                for (via, upstream) in [
                    (Via::Console, FactorSet::EMPTY),
                    (
                        Via::LgwanTelework,
                        FactorSet::parse_names(["face", "password"]).unwrap(),
                    ),
                ] {
                    let req = DecisionRequest {
                        user: user.clone(),
                        device: device.clone(),
                        action: *action,
                        via,
                        upstream,
                        hour: 10,
                    };
                    let plan = planned.plan(&req, true).unwrap();
                    let mut sets: Vec<FactorSet> = vec![FactorSet::EMPTY, FactorSet::ALL];
                    for o in plan
                        .options
                        .iter()
                        .chain(plan.unavailable.iter().map(|u| &u.factors))
                    {
                        sets.push(*o);
                        sets.extend(o.iter().map(|f| o.without(f)));
                        sets.push(o.with(sekisho_policy_engine::Factor::Pin));
                    }
                    for s in sets {
                        let a = planned.authorize(&req, s).unwrap();
                        let b = planned.authorize_uncached(&req, s).unwrap();
                        assert_eq!(
                            (a.allowed, &a.policy_ids),
                            (b.allowed, &b.policy_ids),
                            "{user} {device} {action} {via} {s}"
                        );
                        compared += 1;
                    }
                }
            }
        }
    }
    assert_eq!(
        planned.plan_fallbacks(),
        0,
        "every reference residual compiles"
    );
    assert!(compared > 20_000, "{compared}");
}
