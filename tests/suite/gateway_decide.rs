//! The gateway's engine client against a real engine: calls made together go out in
//! `Decide` batches, and each caller gets the answer its own call would have had.

use crate::common;

use common::{Backend, TestEngine};
use sekisho_gateway::decide::{DecideError, Decider, Subject};
use sekisho_policy_engine::{Action, Factor, FactorSet, Tier, Via};

fn subject<'a>(user: &'a str, device: &'a str, request_id: &'a str) -> Subject<'a> {
    Subject {
        user,
        device,
        action: Action::Logon,
        via: Via::Console,
        upstream: FactorSet::EMPTY,
        request_id,
    }
}

/// One call's answer, reduced to what can be compared across calls.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Plan(Vec<Vec<String>>, String),
    Authorized(bool, Vec<String>, String),
    UnknownUser,
    UnknownDevice,
    Other(String),
}

fn failed(e: DecideError) -> Outcome {
    match e {
        DecideError::UnknownUser(_) => Outcome::UnknownUser,
        DecideError::UnknownDevice(_) => Outcome::UnknownDevice,
        other => Outcome::Other(other.to_string()),
    }
}

/// Call `n` of a mix: plans and authorizations for a known user, an unknown user
/// (masked plan, NotFound on authorize) and an unknown device.
async fn call(decider: &Decider, n: usize) -> Outcome {
    let id = format!("batch-{n}");
    let card_password = FactorSet::EMPTY.with(Factor::Card).with(Factor::Password);
    let (user, device) = match n % 3 {
        0 => ("u023", "lgwan-desk-17"),
        1 => ("nobody", "lgwan-desk-17"),
        _ => ("u023", "no-such-desk"),
    };
    let s = subject(user, device, &id);
    if n.is_multiple_of(2) {
        match decider.plan(&s, card_password, false).await {
            Ok(p) => Outcome::Plan(
                p.options.into_iter().map(|o| o.factors).collect(),
                p.policy_version,
            ),
            Err(e) => failed(e),
        }
    } else {
        let verified = if n % 4 == 1 {
            card_password
        } else {
            FactorSet::EMPTY.with(Factor::Password)
        };
        match decider.authorize(&s, verified).await {
            Ok(a) => Outcome::Authorized(a.allowed, a.policy_ids, a.policy_version),
            Err(e) => failed(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_go_in_batches_and_each_caller_gets_its_own_answer() {
    let engine = TestEngine::start(Backend::Sqlite, "batches").await;
    engine.load_reference().await;
    let decider = Decider::remote(
        engine.gateway().connect().await.expect("connects"),
        Tier::Lgwan,
    );
    const CALLS: usize = 240;

    // One at a time, each call is a batch of one: the reference answers.
    let mut alone = Vec::with_capacity(CALLS);
    for n in 0..CALLS {
        alone.push(call(&decider, n).await);
    }
    assert_eq!(
        decider.stats().batches,
        CALLS as u64,
        "calls made one at a time go out alone"
    );
    // The mix covers every kind of answer.
    for kind in [
        |o: &Outcome| matches!(o, Outcome::Plan(..)),
        |o: &Outcome| matches!(o, Outcome::Authorized(true, ..)),
        |o: &Outcome| matches!(o, Outcome::Authorized(false, ..)),
        |o: &Outcome| *o == Outcome::UnknownUser,
        |o: &Outcome| *o == Outcome::UnknownDevice,
    ] {
        assert!(alone.iter().any(kind), "{alone:?}");
    }

    // All at once: fewer requests than calls, and the same answer for each call.
    let before = decider.stats();
    let together = futures::future::join_all((0..CALLS).map(|n| call(&decider, n))).await;
    let after = decider.stats();
    assert_eq!(together, alone);
    assert_eq!(after.calls - before.calls, CALLS as u64);
    let batches = after.batches - before.batches;
    assert!(
        batches < CALLS as u64,
        "{CALLS} concurrent calls went in {batches} requests"
    );

    // The engine gone: every waiting caller is told it is unavailable.
    engine.stop().await;
    let gone = futures::future::join_all((0..8).map(|n| call(&decider, n))).await;
    for outcome in gone {
        assert!(
            matches!(&outcome, Outcome::Other(m) if m.contains("unreachable")),
            "{outcome:?}"
        );
    }
}
