//! One audit event and the SHA-256 chain over a gateway's journal.
//!
//! `hash = SHA-256(prev_hash ‖ canonical body)`, both as they appear in the JSON
//! line: `prev_hash` as 64 lowercase hex characters, the body as the event's JSON
//! without `prev_hash` and `hash`, fields in declaration order, maps sorted. The
//! first event of a journal has `prev_hash` = 64 zeros. Serialisation is
//! deterministic (no floats, no maps in hash order), so parsing a line and writing
//! it again gives the same bytes, and a verifier needs nothing but the lines.
//!
//! What an event may hold is decided by its type: names, ids, factor names and
//! stable reason codes. There is no field a secret, code, PIN or biometric vector
//! could be put in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest event line an audit store accepts. Events hold names, ids and reason
/// codes; a line this long is not an event but something else pushed through.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Longest text a field of a sealed event keeps (see [`EventBody::make_storable`]).
pub const MAX_FIELD_BYTES: usize = 512;

/// Most entries a list or map of a sealed event keeps.
pub const MAX_FIELD_ENTRIES: usize = 16;

fn fits(text: &str) -> bool {
    text.len() <= MAX_FIELD_BYTES && !text.chars().any(is_replaced)
}

fn is_replaced(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

fn storable(text: &mut String) {
    if text.chars().any(is_replaced) {
        *text = text
            .chars()
            .map(|c| if is_replaced(c) { '\u{FFFD}' } else { c })
            .collect();
    }
    if text.len() > MAX_FIELD_BYTES {
        let was = text.len();
        // Room for the note, which is at most 22 bytes.
        let mut end = MAX_FIELD_BYTES - 24;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(&format!("…[{was} bytes]"));
    }
}

/// `prev_hash` of the first event in a journal.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
    Error,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allow" => Some(Outcome::Allow),
            "deny" => Some(Outcome::Deny),
            "error" => Some(Outcome::Error),
            _ => None,
        }
    }
}

/// The hashed part of an event. Field order is the canonical order: do not reorder,
/// and add new fields only at the end with `#[serde(default)]` readers in mind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// Position in the gateway's journal, from 1, without gaps.
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T05:02:13.120Z`.
    pub ts: String,
    pub tier: String,
    /// The journal's gateway (its configured name).
    pub gateway: String,
    /// The terminal, or "" for an administrative event not tied to one.
    pub device: String,
    /// The account the event is about (who logged on, whose card was enrolled).
    pub user: String,
    /// Who was at the device (shared counter terminals: differs from `user` after an
    /// operator switch), or the administrator for administrative events.
    pub operator: String,
    /// `logon`, `unlock`, `switch_operator`, `elevate`, `lock`, `logoff`, `lockout`,
    /// `enroll`, `emergency_otp_issue`, `device_register`, `unlock_user`, …
    pub action: String,
    pub outcome: Outcome,
    /// Factors verified (sorted factor names).
    pub factors: Vec<String>,
    /// Factor → stable failure code, for each factor that failed.
    pub failed: BTreeMap<String, String>,
    /// Stable deny/error reason code ("" on allow).
    pub reason: String,
    pub policy_version: String,
    pub policy_ids: Vec<String>,
    /// What a shadow-stage policy would have decided, when one is staged.
    pub shadow: Option<String>,
    /// The device session this event opened or changed ("" when none).
    pub session: String,
    pub request_id: String,
    /// Further non-secret facts (e.g. `locked_until`, the enrolled factor).
    pub detail: BTreeMap<String, String>,
}

/// An event as journaled and exported: its body plus its link in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    #[serde(flatten)]
    pub body: EventBody,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("not an audit event: {0}")]
    Malformed(String),
}

impl EventBody {
    /// Bounds what a request can put into an event. A refusal is journaled with
    /// what was sent (a user id of 70 KB, a NUL, which PostgreSQL cannot store in a
    /// column); journaled as sent, the engine would refuse that event, and a
    /// forwarder that never skips a seq would stop shipping the gateway's journal
    /// at it for good. Control characters other than line feed and tab become
    /// U+FFFD; a text longer than [`MAX_FIELD_BYTES`] keeps its start and says how
    /// long it was; a map or list keeps its first [`MAX_FIELD_ENTRIES`] entries.
    /// Last, detail, policy ids and failures are dropped from the end while the body
    /// is over half of [`MAX_EVENT_BYTES`], so the sealed line always fits.
    pub fn make_storable(&mut self) {
        // Bytes of the bounded texts, unescaped, with room for quotes and commas.
        let mut bytes = 0;
        let mut bound = |text: &mut String| {
            storable(text);
            bytes += text.len() + 4;
        };
        [
            &mut self.ts,
            &mut self.tier,
            &mut self.gateway,
            &mut self.device,
            &mut self.user,
            &mut self.operator,
            &mut self.action,
            &mut self.reason,
            &mut self.policy_version,
            &mut self.session,
            &mut self.request_id,
        ]
        .into_iter()
        .chain(self.shadow.as_mut())
        .for_each(&mut bound);
        for list in [&mut self.factors, &mut self.policy_ids] {
            list.truncate(MAX_FIELD_ENTRIES);
            list.iter_mut().for_each(&mut bound);
        }
        for map in [&mut self.failed, &mut self.detail] {
            if map.len() > MAX_FIELD_ENTRIES || map.iter().any(|(k, v)| !fits(k) || !fits(v)) {
                *map = std::mem::take(map)
                    .into_iter()
                    .take(MAX_FIELD_ENTRIES)
                    .map(|(mut k, mut v)| {
                        storable(&mut k);
                        storable(&mut v);
                        (k, v)
                    })
                    .collect();
            }
            bytes += map
                .iter()
                .map(|(k, v)| k.len() + v.len() + 6)
                .sum::<usize>();
        }
        // Escaping at most doubles a text, so a body this small fits without
        // serialising it to find out (every event is sealed on the logon path).
        if 2 * bytes + 4096 <= MAX_EVENT_BYTES / 2 {
            return;
        }
        // What is left after dropping (11 texts and the factors, at most twice
        // their length escaped) stays under half.
        while self.canonical().len() > MAX_EVENT_BYTES / 2
            && (self.detail.pop_last().is_some()
                || self.policy_ids.pop().is_some()
                || self.failed.pop_last().is_some())
        {}
    }

    /// The canonical bytes the hash covers.
    pub fn canonical(&self) -> Vec<u8> {
        // Serialising a struct of strings, integers, vectors and BTreeMaps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The chain hash of this body after `prev_hash`.
    pub fn chain_hash(&self, prev_hash: &str) -> String {
        let mut h = Sha256::new();
        h.update(prev_hash.as_bytes());
        h.update(self.canonical());
        hex::encode(h.finalize())
    }

    /// Links the body after `prev_hash`, first made storable (see
    /// [`EventBody::make_storable`]) so that no journal holds an event the engine
    /// would refuse.
    pub fn seal(mut self, prev_hash: &str) -> AuditEvent {
        self.make_storable();
        let hash = self.chain_hash(prev_hash);
        AuditEvent {
            body: self,
            prev_hash: prev_hash.to_string(),
            hash,
        }
    }

    /// A body with every field empty but these, for building events field by field.
    pub fn new(gateway: &str, tier: &str, action: &str, outcome: Outcome) -> EventBody {
        EventBody {
            seq: 0,
            ts: String::new(),
            tier: tier.into(),
            gateway: gateway.into(),
            device: String::new(),
            user: String::new(),
            operator: String::new(),
            action: action.into(),
            outcome,
            factors: Vec::new(),
            failed: BTreeMap::new(),
            reason: String::new(),
            policy_version: String::new(),
            policy_ids: Vec::new(),
            shadow: None,
            session: String::new(),
            request_id: String::new(),
            detail: BTreeMap::new(),
        }
    }
}

/// RFC 3339 UTC with milliseconds for a Unix time in milliseconds.
pub fn format_ts(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp.
pub fn parse_ts(ts: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.timestamp_millis())
}

impl AuditEvent {
    /// The JSON line (without the newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(line: &str) -> Result<AuditEvent, EventError> {
        serde_json::from_str(line).map_err(|e| EventError::Malformed(e.to_string()))
    }

    /// Unix milliseconds of `ts` (0 when unreadable: such an event fails verification).
    pub fn ts_ms(&self) -> i64 {
        parse_ts(&self.body.ts).unwrap_or(0)
    }

    /// Whether the stored hash is the hash of the body after the stored `prev_hash`.
    pub fn hash_matches(&self) -> bool {
        self.body.chain_hash(&self.prev_hash) == self.hash
    }
}

/// The first link that does not hold, named the way an auditor looks it up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain of gateway '{gateway}' broken at seq {seq}: {why}")]
pub struct BrokenLink {
    pub gateway: String,
    pub seq: u64,
    pub why: String,
}

/// Where one gateway's chain stands while events are checked in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub gateway: String,
    /// The last seq checked (0 before the first).
    pub seq: u64,
    pub hash: String,
}

impl ChainState {
    pub fn start(gateway: &str) -> ChainState {
        ChainState {
            gateway: gateway.into(),
            seq: 0,
            hash: GENESIS_HASH.into(),
        }
    }

    /// Checks that `event` is the next link: the next seq, linked to the previous
    /// hash, with a hash that matches its content. The hash is recomputed from the
    /// parsed body, so only the content counts, not how a line was formatted.
    pub fn check_next(&mut self, event: &AuditEvent) -> Result<(), BrokenLink> {
        let broken = |seq: u64, why: String| BrokenLink {
            gateway: self.gateway.clone(),
            seq,
            why,
        };
        let expected = self.seq + 1;
        if event.body.gateway != self.gateway {
            return Err(broken(
                expected,
                format!("event names gateway '{}'", event.body.gateway),
            ));
        }
        if event.body.seq != expected {
            return Err(broken(
                expected,
                if event.body.seq > expected {
                    format!(
                        "missing: the next stored event is seq {} (deleted events?)",
                        event.body.seq
                    )
                } else {
                    format!("seq {} appears again", event.body.seq)
                },
            ));
        }
        if event.prev_hash != self.hash {
            return Err(broken(
                expected,
                "prev_hash does not match the previous event's hash".into(),
            ));
        }
        if !event.hash_matches() {
            return Err(broken(
                expected,
                "hash does not match the event's content (altered?)".into(),
            ));
        }
        self.seq = event.body.seq;
        self.hash = event.hash.clone();
        Ok(())
    }
}

/// Verifies one gateway's journal given in seq order from its first event.
/// Returns how many events were checked.
pub fn verify_chain<'a>(
    gateway: &str,
    events: impl IntoIterator<Item = &'a AuditEvent>,
) -> Result<u64, BrokenLink> {
    let mut state = ChainState::start(gateway);
    for e in events {
        state.check_next(e)?;
    }
    Ok(state.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let mut b = EventBody::new("lgwan-gateway", "lgwan", "logon", Outcome::Allow);
                b.seq = seq;
                b.ts = format_ts(1_790_000_000_000 + seq as i64);
                b.user = format!("u{seq}");
                b.factors = vec!["card".into(), "password".into()];
                let e = b.seal(&prev);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn a_chain_verifies_and_round_trips_through_json() {
        let events = chain(5);
        assert_eq!(verify_chain("lgwan-gateway", &events), Ok(5));
        for e in &events {
            let line = e.to_json();
            let back = AuditEvent::from_json(&line).unwrap();
            assert_eq!(&back, e);
            assert_eq!(back.to_json(), line, "serialisation is canonical");
        }
        assert_eq!(events[0].prev_hash, GENESIS_HASH);
        assert_eq!(events[0].hash.len(), 64);
    }

    #[test]
    fn the_hash_is_sha256_of_prev_hash_and_body() {
        let e = &chain(1)[0];
        let mut h = Sha256::new();
        h.update(GENESIS_HASH.as_bytes());
        h.update(serde_json::to_vec(&e.body).unwrap());
        assert_eq!(e.hash, hex::encode(h.finalize()));
        // The body's JSON starts with seq and carries no link fields.
        let body = String::from_utf8(e.body.canonical()).unwrap();
        assert!(body.starts_with("{\"seq\":1,\"ts\":"));
        assert!(!body.contains("prev_hash"));
    }

    #[test]
    fn an_altered_event_is_named() {
        let mut events = chain(5);
        events[2].body.user = "mallory".into();
        let err = verify_chain("lgwan-gateway", &events).unwrap_err();
        assert_eq!((err.gateway.as_str(), err.seq), ("lgwan-gateway", 3));
        assert!(err.why.contains("altered"), "{err}");
    }

    #[test]
    fn a_rehashed_alteration_breaks_the_next_link() {
        let mut events = chain(5);
        events[2].body.outcome = Outcome::Deny;
        let prev = events[2].prev_hash.clone();
        events[2] = events[2].body.clone().seal(&prev);
        let err = verify_chain("lgwan-gateway", &events).unwrap_err();
        assert_eq!(err.seq, 4);
        assert!(err.why.contains("prev_hash"), "{err}");
    }

    #[test]
    fn a_deleted_event_is_named() {
        let mut events = chain(5);
        events.remove(1);
        let err = verify_chain("lgwan-gateway", &events).unwrap_err();
        assert_eq!(err.seq, 2);
        assert!(err.why.contains("missing"), "{err}");
        let mut events = chain(3);
        events.remove(0);
        assert_eq!(verify_chain("lgwan-gateway", &events).unwrap_err().seq, 1);
    }

    #[test]
    fn unknown_fields_and_bad_outcomes_are_refused() {
        let line = chain(1)[0].to_json();
        let extra = line.replacen('{', "{\"pin\":\"1234\",", 1);
        assert!(AuditEvent::from_json(&extra).is_err());
        let bad = line.replace("\"allow\"", "\"maybe\"");
        assert!(AuditEvent::from_json(&bad).is_err());
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        let ts = format_ts(1_790_000_000_123);
        assert_eq!(ts, "2026-09-21T14:13:20.123Z");
        assert_eq!(parse_ts(&ts), Some(1_790_000_000_123));
    }

    #[test]
    fn what_a_request_puts_into_an_event_is_bounded_before_sealing() {
        let mut b = EventBody::new("gw", "lgwan", "logon", Outcome::Deny);
        b.user = "u".repeat(70_000);
        b.device = "desk\0\u{1b}[31m".into();
        b.reason = "line one\nline two\tend".into();
        b.request_id = "長".repeat(200);
        for i in 0..100 {
            b.detail.insert(format!("k{i:03}"), "\"".repeat(600));
        }
        let fine = EventBody::new("gw", "lgwan", "logon", Outcome::Allow);
        let mut id256 = fine.clone();
        id256.user = "x".repeat(256);

        let e = b.seal(GENESIS_HASH);
        assert!(
            e.to_json().len() <= MAX_EVENT_BYTES / 2 + 200,
            "{}",
            e.to_json().len()
        );
        assert_eq!(
            e.body.user.len(),
            MAX_FIELD_BYTES - 24 + "…[70000 bytes]".len()
        );
        assert!(e.body.user.ends_with("…[70000 bytes]"));
        assert_eq!(e.body.device, "desk\u{FFFD}\u{FFFD}[31m");
        assert_eq!(e.body.reason, "line one\nline two\tend", "kept as it was");
        assert!(e.body.request_id.starts_with('長') && e.body.request_id.ends_with("…[600 bytes]"));
        assert!(e.body.detail.len() <= MAX_FIELD_ENTRIES);
        // The hash covers what is stored, and what fits is not touched.
        assert!(e.hash_matches());
        assert_eq!(id256.clone().seal(GENESIS_HASH).body, id256);
        assert_eq!(fine.clone().seal(GENESIS_HASH).body, fine);
    }
}
