//! The per-tier segment gateway: endpoint-facing logon API, factor verifiers,
//! credential store, sessions, lockout, and the audit journal shipped to the engine.
//!
//! It depends on `sekisho-policy-engine` so that offline decisions (a signed policy
//! bundle, the engine unreachable) will use the very same plan/authorize code as the
//! engine.

pub mod agent;
pub mod cards;
pub mod challenge;
pub mod config;
pub mod credentials;
pub mod crypto;
pub mod db;
pub mod decide;
pub mod effects;
pub mod factors;
pub mod forward;
pub mod grpc;
pub mod hashing;
pub mod import;
pub mod journal;
pub mod lockout;
pub mod logon;
pub mod messages;
pub mod qr;
pub mod ratelimit;
pub mod revoke;
pub mod server;
pub mod session;
pub mod tls;
