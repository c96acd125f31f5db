//! The sekisho policy engine: Cedar factor plans and authorization decisions.
//!
//! Gateways embed this library for offline decisions; the `sekisho engine serve`
//! daemon wraps it in gRPC ([`grpc`]). A decision reads straight down:
//! [`policies`] (sources → validated set) → [`analysis`] (what each policy can see) →
//! [`engine`] (slice, plan, authorize) over the [`entities`] directory.

pub mod analysis;
pub mod audit;
pub mod config;
pub mod diagnostics;
pub mod directory;
pub mod engine;
pub mod entities;
pub mod factor;
pub mod grpc;
pub mod import;
pub mod ldap;
pub mod lint;
pub mod model;
pub mod pki;
pub mod policies;
pub mod server;
pub mod store;
pub mod transport;

pub use engine::{
    AuthorizeOutcome, DecisionRequest, Engine, EngineError, Plan, PlanInputs, Unavailability,
    UnavailableSet,
};
pub use factor::{Capabilities, Factor, FactorSet};
pub use model::{Action, DeviceKind, Tier, Via};
pub use policies::{CompiledPolicies, PolicyFile, PolicySources};
