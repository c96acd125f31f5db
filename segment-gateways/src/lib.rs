//! The per-tier segment gateway: endpoint-facing logon API, factor verifiers,
//! credential store, sessions and lockout.
//!
//! It depends on `sekisho-policy-engine` so that offline decisions (a signed policy
//! bundle, the engine unreachable) will use the very same plan/authorize code as the
//! engine.

pub mod credentials;
pub mod crypto;
pub mod db;
pub mod factors;
pub mod hashing;
pub mod config;
pub mod tls;
pub mod server;
