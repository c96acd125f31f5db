//! Wire types and gRPC services of sekisho, package `sekisho.v1`.
//!
//! Kept in a crate of their own (as kanidm keeps `proto`) so that gateways, the CLI,
//! the simulator and future endpoint integrations share one definition of the wire
//! format without pulling in the engine.

/// Generated code for package `sekisho.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sekisho.v1");
}
