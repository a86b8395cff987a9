//! Where the score cache keeps what it knows. One trait, [`Store`], two implementations:
//! [`embedded::EmbeddedStore`] (redb in a data directory, group-committed, the default) and
//! [`redis::RedisStore`] (several cache nodes sharing one Redis). The same test suite
//! (`tests/store_suite.rs`) runs against both.
//!
//! A store keeps, per subject, its hot scoring state ([`crate::scoring::SubjectState`]), the
//! subject's raw events for history (kept `retention_days`), the ids of stored events (so a
//! retried batch is not counted twice), and the decision log: every manual decision added or
//! lifted, in one monotonic sequence that edges follow with a cursor.

pub mod embedded;
pub mod redis;

use std::future::Future;
use std::sync::Arc;

use signalbox_policy::scoring::ScoringSettings;

use crate::model::{Decision, Event, LogEntry, SubjectKey};
use crate::scoring::SubjectState;

/// What went wrong in a store. Its text is for logs, never for clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed or is unreachable (clients get 503).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data this build cannot read (a newer format).
    #[error("storage format: {0}")]
    Format(String),
}

/// What a batch of events did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Events stored and counted.
    pub accepted: usize,
    /// Events whose id was already stored (acknowledged, not counted again).
    pub duplicates: usize,
}

/// One page of the decision log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogPage {
    /// Entries after the asked sequence, oldest first.
    pub entries: Vec<LogEntry>,
    /// More entries are waiting after the last one.
    pub more: bool,
}

/// The decision log's bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogBounds {
    /// The last sequence written (0: none).
    pub last_seq: u64,
    /// Entries up to this sequence may have been compacted away: a cursor below it cannot be
    /// served (410) and the client resyncs.
    pub compacted_through: u64,
}

/// What a retention sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeOutcome {
    /// Raw events past retention.
    pub events: usize,
    /// Log entries of decisions lifted or expired past the tombstone retention.
    pub log_entries: usize,
}

/// Storage for the score cache. Every write is acknowledged only once it is durable in the
/// backend's sense (see each implementation).
pub trait Store: Send + Sync + 'static {
    /// Stores a validated batch: each event whose id is new is recorded and applied to its
    /// subject's state at `now_ms` under `scoring`; ids already stored are skipped.
    fn ingest(
        &self,
        events: Vec<Event>,
        now_ms: u64,
        scoring: Arc<ScoringSettings>,
    ) -> impl Future<Output = Result<IngestOutcome, StoreError>> + Send;

    /// The scoring states of `subjects` (`None`: nothing known), in order.
    fn subjects(
        &self,
        subjects: Vec<SubjectKey>,
    ) -> impl Future<Output = Result<Vec<Option<SubjectState>>, StoreError>> + Send;

    /// A subject's stored events, newest first, at most `limit`.
    fn events_of(
        &self,
        subject: SubjectKey,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// Erases everything about a subject (state and events). `true` if anything was there.
    fn erase_subject(
        &self,
        subject: SubjectKey,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Appends a decision to the log; returns its sequence.
    fn add_decision(
        &self,
        decision: Decision,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Lifts a decision at `now` (unix seconds) by appending a tombstone; returns the
    /// tombstone's sequence, or `None` when no active decision has that id.
    fn delete_decision(
        &self,
        id: String,
        now: u64,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Log entries with a sequence above `after`, oldest first, at most `limit`.
    fn log_after(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<LogPage, StoreError>> + Send;

    /// The log's bounds.
    fn log_bounds(&self) -> impl Future<Output = Result<LogBounds, StoreError>> + Send;

    /// Removes events older than `events_before_ms`, and the log entries (add and tombstone)
    /// of decisions lifted or expired before `tombstones_before` (unix seconds).
    fn purge(
        &self,
        events_before_ms: u64,
        tombstones_before: u64,
    ) -> impl Future<Output = Result<PurgeOutcome, StoreError>> + Send;

    /// Whether the backend answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every subject with stored state, in storage-key order (the people-facing listing; a
    /// full scan).
    fn all_subjects(
        &self,
    ) -> impl Future<Output = Result<Vec<(SubjectKey, SubjectState)>, StoreError>> + Send;

    /// Appends edges' verdict records to the decision log (durable, like every write).
    fn append_records(
        &self,
        records: Vec<signalbox_wire::DecisionRecordV1>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Verdict records with `from_ms <= at_ms <= to_ms`, newest first, at most `limit`.
    fn records(
        &self,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<signalbox_wire::DecisionRecordV1>, StoreError>> + Send;

    /// Removes verdict records older than `before_ms`; how many.
    fn purge_records(
        &self,
        before_ms: u64,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// A small named value (the bundles, a fleet report), if set.
    fn get_blob(
        &self,
        key: String,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Sets `key` to `value` if it is still `expected` (`None`: absent); `false` when another
    /// writer got there first. Durable like every write.
    fn swap_blob(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every value whose key starts with `prefix`.
    fn list_blobs(
        &self,
        prefix: String,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;
}

/// The two stores behind one type, for the server and the binary.
pub enum AnyStore {
    /// redb in a data directory.
    Embedded(embedded::EmbeddedStore),
    /// Redis.
    Redis(redis::RedisStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Embedded($s) => $call.await,
            AnyStore::Redis($s) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn ingest(
        &self,
        events: Vec<Event>,
        now_ms: u64,
        scoring: Arc<ScoringSettings>,
    ) -> Result<IngestOutcome, StoreError> {
        dispatch!(self, s => s.ingest(events, now_ms, scoring))
    }
    async fn subjects(
        &self,
        subjects: Vec<SubjectKey>,
    ) -> Result<Vec<Option<SubjectState>>, StoreError> {
        dispatch!(self, s => s.subjects(subjects))
    }
    async fn events_of(&self, subject: SubjectKey, limit: usize) -> Result<Vec<Event>, StoreError> {
        dispatch!(self, s => s.events_of(subject, limit))
    }
    async fn erase_subject(&self, subject: SubjectKey) -> Result<bool, StoreError> {
        dispatch!(self, s => s.erase_subject(subject))
    }
    async fn add_decision(&self, decision: Decision) -> Result<u64, StoreError> {
        dispatch!(self, s => s.add_decision(decision))
    }
    async fn delete_decision(&self, id: String, now: u64) -> Result<Option<u64>, StoreError> {
        dispatch!(self, s => s.delete_decision(id, now))
    }
    async fn log_after(&self, after: u64, limit: usize) -> Result<LogPage, StoreError> {
        dispatch!(self, s => s.log_after(after, limit))
    }
    async fn log_bounds(&self) -> Result<LogBounds, StoreError> {
        dispatch!(self, s => s.log_bounds())
    }
    async fn purge(
        &self,
        events_before_ms: u64,
        tombstones_before: u64,
    ) -> Result<PurgeOutcome, StoreError> {
        dispatch!(self, s => s.purge(events_before_ms, tombstones_before))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping())
    }
    async fn get_blob(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self, s => s.get_blob(key))
    }
    async fn all_subjects(&self) -> Result<Vec<(SubjectKey, SubjectState)>, StoreError> {
        dispatch!(self, s => s.all_subjects())
    }
    async fn append_records(
        &self,
        records: Vec<signalbox_wire::DecisionRecordV1>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.append_records(records))
    }
    async fn records(
        &self,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<signalbox_wire::DecisionRecordV1>, StoreError> {
        dispatch!(self, s => s.records(from_ms, to_ms, limit))
    }
    async fn purge_records(&self, before_ms: u64) -> Result<usize, StoreError> {
        dispatch!(self, s => s.purge_records(before_ms))
    }
    async fn swap_blob(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.swap_blob(key, expected, value))
    }
    async fn list_blobs(&self, prefix: String) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        dispatch!(self, s => s.list_blobs(prefix))
    }
}

/// Groups a batch's new events by subject, keeping their order.
pub(crate) fn by_subject(events: Vec<Event>) -> Vec<(SubjectKey, Vec<Event>)> {
    let mut groups: Vec<(SubjectKey, Vec<Event>)> = Vec::new();
    let mut index: std::collections::HashMap<SubjectKey, usize> = std::collections::HashMap::new();
    for e in events {
        match index.get(&e.subject) {
            Some(&i) => {
                if let Some((_, group)) = groups.get_mut(i) {
                    group.push(e);
                }
            }
            None => {
                index.insert(e.subject.clone(), groups.len());
                groups.push((e.subject.clone(), vec![e]));
            }
        }
    }
    groups
}

/// Applies a subject's new events to its stored state.
pub(crate) fn apply_events(
    stored: Option<&[u8]>,
    events: &[Event],
    now_ms: u64,
    scoring: &ScoringSettings,
) -> Vec<u8> {
    let mut state = stored.and_then(SubjectState::decode).unwrap_or_default();
    let scored: Vec<crate::scoring::Event<'_>> = events
        .iter()
        .map(|e| crate::scoring::Event {
            event_type: &e.event_type,
            points: e.points,
            at_ms: e.at_ms,
        })
        .collect();
    state.apply(&scored, now_ms, scoring);
    state.encode()
}

/// What compaction removes from the decision log at `before` (unix seconds): the tombstone of
/// every decision lifted before it and the add it cancels, and the add of every decision that
/// expired before it without being lifted. Also the highest tombstone sequence removed: a
/// cursor below it would miss a removal, so it can no longer be served (410).
pub(crate) fn compactable(entries: &[LogEntry], before: u64) -> (Vec<&LogEntry>, u64) {
    let lifted: std::collections::HashMap<&str, &LogEntry> = entries
        .iter()
        .filter(|e| e.decision.is_none())
        .map(|e| (e.id.as_str(), e))
        .collect();
    let doomed: Vec<&LogEntry> = entries
        .iter()
        .filter(|e| match (&e.decision, lifted.get(e.id.as_str())) {
            (None, _) => e.at < before,
            (Some(_), Some(tombstone)) => tombstone.at < before,
            (Some(d), None) => d.expires_at < before,
        })
        .collect();
    let compacted_through = doomed
        .iter()
        .filter(|e| e.decision.is_none())
        .map(|e| e.seq)
        .max()
        .unwrap_or(0);
    (doomed, compacted_through)
}
