//! The audit trail (DESIGN.md §4): the event every gateway journals, the hash chain
//! that makes tampering visible, and what the engine and the CLI do with it.
//!
//! The event and its chain live here, below the gateways, because three parties
//! must agree on every byte: the gateway that appends, the engine that stores, and
//! the auditor's `sekisho audit verify`.

pub mod decisions;
pub mod event;
pub mod query;
pub mod store;

pub use decisions::{DecisionLog, DecisionWriter};
pub use event::{
    format_ts, parse_ts, verify_chain, AuditEvent, BrokenLink, ChainState, EventError, Outcome,
    GENESIS_HASH,
};
pub use query::{Cursor, Filter, Page};
pub use store::{
    AuditError, AuditStore, ChainReport, DecisionEntry, DeviceCount, GatewayStatus, ImportOutcome,
    IngestOutcome, Pages, Record,
};
