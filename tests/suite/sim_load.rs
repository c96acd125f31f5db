//! `sekisho-sim load` against live services: a real engine and lgwan gateway (mutual
//! TLS on loopback), driven at a fixed rate for one second each.

use crate::common;

use std::time::Duration;

use common::gateway::{device_tls, TestGateway};
use sekisho_gateway::tls::ClientTls;
use sekisho_policy_engine::Tier;
use sekisho_simulator::load::{self, LoadOptions, Target};

const DEVICE: &str = "lgwan-desk-17";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_mode_drives_an_engine_and_a_gateway() {
    let gw = TestGateway::start(Tier::Lgwan, |_| {}).await;
    gw.register(DEVICE, "desktop", &["card"]).await;
    let pki = gw.pki();
    let options = LoadOptions {
        targets: vec![
            Target::Engine {
                url: gw.engine.url(),
                tls: ClientTls {
                    ca: pki.ca(),
                    cert: pki.gateway_cert(),
                    key: pki.gateway_key(),
                },
            },
            Target::Gateway {
                tier: "lgwan".into(),
                url: gw.url(),
                tls: device_tls(pki, DEVICE),
            },
        ],
        rate: 100.0,
        duration: Duration::from_secs(1),
        max_in_flight: 64,
        user: "u007".into(),
        device: DEVICE.into(),
        action: "logon".into(),
    };
    let results = load::run(options).await.expect("load run");
    assert_eq!(results.len(), 2);
    for r in &results {
        let text = r.render();
        assert_eq!(r.errors, 0, "{text}");
        assert!(r.sent >= 90 && r.ok + r.shed == r.sent, "{text}");
        assert!(r.ok > 0 && r.p50_ms > 0.0 && r.p99_ms >= r.p50_ms, "{text}");
        assert!(r.achieved_per_sec > 0.0, "{text}");
    }
    gw.stop().await;
}
