//! `sekisho.v1.AuditSink`: gateways ship their journals here.
//!
//! Any client with a valid certificate may ship (gateways use non-admin
//! certificates; the TLS layer already refused everyone else). What a gateway ships
//! is stored as received and judged later by `audit verify`: refusing an altered
//! event here would only stop the forwarder and hide the evidence. Refused are
//! records that are not events at all, that do not say what they are shipped as,
//! or that are a different event (another hash) than the one stored under their
//! gateway and seq: the store keeps one event per seq, so accepting the second
//! would acknowledge an event that is not stored. The error names the gateway and
//! seq.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use sekisho_proto::v1 as pb;
use tokio::sync::Semaphore;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::audit::store::{AuditError, AuditStore, Record, ENGINE_JOURNAL, MAX_EVENT_BYTES};
use crate::config::AuditConfig;
use crate::grpc::{peer_name, Clients};
use crate::store::directory::DIRECTORY_JOURNAL;

/// Most records accepted in one `AuditBatch`. Forwarders send a few hundred; the
/// bound keeps one message from tying up the store (one transaction per batch).
pub const MAX_BATCH_RECORDS: usize = 10_000;

/// Largest `AuditBatch` message accepted (a full batch of long events fits).
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Records of a stream stored per transaction. The acknowledgement only comes at the
/// end of the stream, so batches can be gathered into larger transactions without
/// acknowledging anything uncommitted; on SQLite each transaction rewrites the
/// index pages its rows touch, so 10 batches of 500 in one cost about what one does.
pub const GROUP_RECORDS: usize = 5_000;

/// Bytes of records a stream holds before storing them, whatever their number: a
/// stream of full batches of the longest events would otherwise hold hundreds of
/// MiB until [`GROUP_RECORDS`] of them arrived.
pub const GROUP_BYTES: usize = 8 * 1024 * 1024;

/// Metadata key of a `FAILED_PRECONDITION` refusal of a different event under a
/// stored (gateway, seq): the seq, in decimal, so a forwarder can report which of
/// its events is refused without parsing the message.
pub const CONFLICT_SEQ_METADATA: &str = "sekisho-conflict-seq";

/// `sekisho.v1.AuditSink` over the engine's audit store.
#[derive(Clone, Debug)]
pub struct AuditSinkService {
    audit: AuditStore,
    /// Who may ship; `None` lets any client the TLS layer accepted (tests, a
    /// plaintext test bed).
    clients: Option<Clients>,
    /// One permit per shipment in progress, of `max_shipments`.
    shipments: Arc<Semaphore>,
    max_shipments: usize,
}

impl AuditSinkService {
    pub fn new(audit: AuditStore) -> Self {
        let max_shipments = AuditConfig::default().max_shipments;
        AuditSinkService {
            audit,
            clients: None,
            shipments: Arc::new(Semaphore::new(max_shipments)),
            max_shipments,
        }
    }

    /// Takes at most `shipments` at once (`audit.max_shipments`, at least 1).
    pub fn at_most(self, shipments: usize) -> Self {
        let max_shipments = shipments.max(1);
        AuditSinkService {
            shipments: Arc::new(Semaphore::new(max_shipments)),
            max_shipments,
            ..self
        }
    }

    /// Only gateways and administrators may ship: an endpoint's certificate from
    /// the same CA could otherwise write into any gateway's journal.
    pub fn only_for(self, clients: Option<Clients>) -> Self {
        AuditSinkService { clients, ..self }
    }

    /// Refuses `client` shipping journal `gateway` when another gateway
    /// certificate shipped it first; binds it to `client` when nobody did.
    async fn check_owner(&self, gateway: &str, client: &str) -> Result<(), Status> {
        self.audit.bind_journal(gateway, client).await.map_err(|e| {
            tracing::warn!(%client, %gateway, error = %e, "audit shipment refused");
            audit_status(e)
        })
    }

    /// The service wrapped for a tonic router, with the batch size limit set.
    pub fn server(self) -> pb::audit_sink_server::AuditSinkServer<Self> {
        pb::audit_sink_server::AuditSinkServer::new(self).max_decoding_message_size(MAX_BATCH_BYTES)
    }
}

fn audit_status(e: AuditError) -> Status {
    match e {
        AuditError::NotOwner { .. } => Status::permission_denied(e.to_string()),
        AuditError::Malformed { .. }
        | AuditError::Mismatch { .. }
        | AuditError::InvalidRecord { .. }
        | AuditError::ConflictInShipment { .. } => Status::invalid_argument(e.to_string()),
        // Not the request's fault alone but the stored state's: sending it again
        // cannot succeed until the gateway is renamed (or the store cleaned up).
        AuditError::Conflict { seq, .. } => {
            let mut status = Status::failed_precondition(e.to_string());
            status
                .metadata_mut()
                .insert(CONFLICT_SEQ_METADATA, MetadataValue::from(seq));
            status
        }
        other => {
            tracing::error!(error = %other, "audit store failure");
            Status::unavailable(format!("audit store: {other}"))
        }
    }
}

#[tonic::async_trait]
impl pb::audit_sink_server::AuditSink for AuditSinkService {
    async fn ship(
        &self,
        request: Request<Streaming<pb::AuditBatch>>,
    ) -> Result<Response<pb::ShipAck>, Status> {
        Clients::check_gateway(self.clients.as_ref(), &request)?;
        let client = peer_name(&request).unwrap_or_default();
        // Refused rather than queued: a waiting stream would hold its connection and
        // what it has sent, which is what the bound is for; the forwarder retries.
        let Ok(_shipping) = self.shipments.clone().try_acquire_owned() else {
            tracing::warn!(client = %client, max_shipments = self.max_shipments, "audit shipment refused: as many are in progress as audit.max_shipments allows");
            return Err(Status::resource_exhausted(format!(
                "{} journal shipments are in progress, as many as this engine takes at once (audit.max_shipments); ship again later",
                self.max_shipments
            )));
        };
        // A gateway ships its own journals only; an administrator may ship any (a
        // standalone tier's journal carried over by hand).
        let bound = self
            .clients
            .as_ref()
            .is_some_and(|c| !c.admins.contains(&client));
        let mut checked: HashSet<String> = HashSet::new();
        let mut stream = request.into_inner();
        let mut stored_through: BTreeMap<String, u64> = BTreeMap::new();
        let mut inserted = 0u64;
        let mut batches = 0u64;
        let mut pending: Vec<Record> = Vec::new();
        let mut pending_bytes = 0usize;
        loop {
            let next = stream.message().await?;
            let done = next.is_none();
            if let Some(batch) = next {
                batches += 1;
                if batch.records.len() > MAX_BATCH_RECORDS {
                    return Err(Status::invalid_argument(format!(
                        "batch {batches} has {} records; at most {MAX_BATCH_RECORDS} per batch",
                        batch.records.len()
                    )));
                }
                // Checked as they arrive, not when a group is stored: 5,000 records
                // of 64 MiB each would be held before anything looked at them.
                for r in &batch.records {
                    if r.json.len() > MAX_EVENT_BYTES {
                        return Err(Status::invalid_argument(format!(
                            "gateway {} seq {}: the event is {} bytes, more than the {MAX_EVENT_BYTES} an event may have",
                            r.gateway,
                            r.seq,
                            r.json.len()
                        )));
                    }
                    // The engine's own journal (directory revocations) is written
                    // only by the engine: a record under its name could stop it.
                    if r.gateway == DIRECTORY_JOURNAL || r.gateway == ENGINE_JOURNAL {
                        return Err(Status::invalid_argument(format!(
                            "'{}' is the engine's own journal; no gateway may ship under that name",
                            r.gateway
                        )));
                    }
                    if bound && !checked.contains(&r.gateway) {
                        self.check_owner(&r.gateway, &client).await?;
                        checked.insert(r.gateway.clone());
                    }
                }
                pending_bytes += batch.records.iter().map(|r| r.json.len()).sum::<usize>();
                pending.extend(batch.records.into_iter().map(|r| Record {
                    gateway: r.gateway,
                    seq: r.seq,
                    json: r.json,
                }));
            }
            if !pending.is_empty()
                && (done || pending.len() >= GROUP_RECORDS || pending_bytes >= GROUP_BYTES)
            {
                pending_bytes = 0;
                // In a task of its own: the server drops this handler when the client
                // hangs up, and a store transaction dropped midway can leave its
                // connection unusable (see `store::connect`). What arrived is stored
                // either way; the gateway ships it again, and it is not stored twice.
                let (audit, records) = (self.audit.clone(), std::mem::take(&mut pending));
                let out = tokio::spawn(async move { audit.ingest(records).await })
                    .await
                    .map_err(|e| Status::internal(format!("storing audit records: {e}")))?
                    .map_err(|e| {
                        tracing::warn!(client = %client, batch = batches, error = %e, "audit records refused");
                        audit_status(e)
                    })?;
                inserted += out.inserted;
                stored_through.extend(out.stored_through);
            }
            if done {
                break;
            }
        }
        tracing::debug!(client = %client, batches, inserted, "audit shipment stored");
        Ok(Response::new(pb::ShipAck {
            stored_through: stored_through.into_iter().collect(),
            inserted,
        }))
    }
}
