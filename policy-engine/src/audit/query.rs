//! What an auditor asks for: a filter over events and a page of the answer.
//!
//! The same [`Filter`] serves the engine's store (translated to SQL there) and
//! journal files read into memory ([`Filter::matches`]), so `sekisho audit query`
//! means the same thing against either.

use super::event::{AuditEvent, Outcome};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub user: Option<String>,
    pub device: Option<String>,
    pub tier: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<Outcome>,
    pub gateway: Option<String>,
    /// Inclusive lower bound, Unix milliseconds.
    pub since_ms: Option<i64>,
    /// Exclusive upper bound, Unix milliseconds.
    pub until_ms: Option<i64>,
}

impl Filter {
    pub fn matches(&self, e: &AuditEvent) -> bool {
        let b = &e.body;
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let ts = e.ts_ms();
        eq(&self.user, &b.user)
            && eq(&self.device, &b.device)
            && eq(&self.tier, &b.tier)
            && eq(&self.action, &b.action)
            && eq(&self.gateway, &b.gateway)
            && self.outcome.is_none_or(|o| o == b.outcome)
            && self.since_ms.is_none_or(|s| ts >= s)
            && self.until_ms.is_none_or(|u| ts < u)
    }
}

/// Where an ordered listing stands: events are ordered by (time, gateway, seq), and
/// a page starts strictly after its cursor, so paging is stable while events arrive.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub ts_ms: i64,
    pub gateway: String,
    pub seq: u64,
}

impl Cursor {
    pub fn of(e: &AuditEvent) -> Cursor {
        Cursor {
            ts_ms: e.ts_ms(),
            gateway: e.body.gateway.clone(),
            seq: e.body.seq,
        }
    }

    /// The printable form handed to `--after`: `TS_MS:SEQ:GATEWAY`.
    pub fn token(&self) -> String {
        format!("{}:{}:{}", self.ts_ms, self.seq, self.gateway)
    }

    pub fn parse(token: &str) -> Option<Cursor> {
        let mut parts = token.splitn(3, ':');
        let ts_ms = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let gateway = parts.next()?.to_string();
        Some(Cursor {
            ts_ms,
            gateway,
            seq,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub after: Option<Cursor>,
    pub limit: usize,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            after: None,
            limit: 100,
        }
    }
}

/// Filters, orders and pages events held in memory (a journal file).
pub fn select(events: &[AuditEvent], filter: &Filter, page: &Page) -> Vec<AuditEvent> {
    let mut hits: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| filter.matches(e))
        .filter(|e| page.after.as_ref().is_none_or(|a| Cursor::of(e) > *a))
        .collect();
    hits.sort_by_key(|e| Cursor::of(e));
    hits.into_iter().take(page.limit).cloned().collect()
}
