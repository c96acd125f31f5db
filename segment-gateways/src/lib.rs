//! The per-tier segment gateway (issue 3): endpoint-facing logon API, factor
//! verifiers, sessions, lockout and the audit outbox.
//!
//! Not built yet. It depends on `sekisho-policy-engine` already so that offline
//! decisions (a signed policy bundle, the engine unreachable) use the very same
//! plan/authorize code as the engine.
