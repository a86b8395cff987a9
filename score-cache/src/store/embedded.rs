//! The embedded store: one redb database file in a data directory (`signalbox-cache.redb`).
//!
//! Why redb: a pure-Rust, crash-safe B-tree with MVCC reads (readers never wait for the writer)
//! and copy-on-write commits whose durable commit is a single fsync of the file; no server to
//! run, no C toolchain to build. SQLite in WAL mode would serve too but brings a C library and
//! its SQL layer for what are key-value reads; fjall (an LSM tree) writes faster but reads
//! slower, and context reads are the hot path here.
//!
//! **Group commit.** Every write goes to one writer thread. It takes everything queued when it
//! is free, applies it all in one write transaction and commits once (`Durability::Immediate`:
//! the commit returns after the fsync); only then does each caller get its answer. While one
//! commit's fsync runs, the next writes queue up and share the next commit, so the commit rate
//! is bounded by the disk, not the number of callers, and an acknowledged write is on disk.
//!
//! **Format.** The `meta` table holds `format_version` (1); a database from another version is
//! refused at start rather than misread.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use signalbox_policy::scoring::ScoringSettings;
use tokio::sync::oneshot;

use super::{IngestOutcome, LogBounds, LogPage, PurgeOutcome, Store, StoreError};
use crate::model::{Decision, Event, LogEntry, SubjectKey};
use crate::scoring::SubjectState;

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The database file inside the data directory.
pub const FILE_NAME: &str = "signalbox-cache.redb";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SUBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("subjects");
/// `<subject>\0<at_ms, 20 digits>\0<event id>` → the event as JSON.
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");
/// event id → when it was received (unix ms).
const EVENT_IDS: TableDefinition<&str, u64> = TableDefinition::new("event_ids");
/// seq → log entry as JSON.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("decision_log");
/// id of an active (not lifted) decision → the seq that added it.
const DECISION_IDS: TableDefinition<&str, u64> = TableDefinition::new("decision_ids");
/// `<at_ms, 20 digits>\0<node>\0<request id>` → an edge's verdict record as JSON.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("decision_records");
/// Small named values: the bundles, fleet reports.
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");

const LAST_SEQ: &str = "last_seq";
const COMPACTED_THROUGH: &str = "compacted_through";

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn event_key(subject: &str, at_ms: u64, id: &str) -> String {
    format!("{subject}\0{at_ms:020}\0{id}")
}

/// One queued write and where its answer goes.
enum Write {
    Ingest {
        events: Vec<Event>,
        now_ms: u64,
        scoring: Arc<ScoringSettings>,
        reply: oneshot::Sender<Result<IngestOutcome, StoreError>>,
    },
    AddDecision {
        decision: Decision,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    DeleteDecision {
        id: String,
        now: u64,
        reply: oneshot::Sender<Result<Option<u64>, StoreError>>,
    },
    Erase {
        subject: SubjectKey,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    Purge {
        events_before_ms: u64,
        tombstones_before: u64,
        reply: oneshot::Sender<Result<PurgeOutcome, StoreError>>,
    },
    Records {
        records: Vec<signalbox_wire::DecisionRecordV1>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    PurgeRecords {
        before_ms: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Swap {
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
}

/// What a write computed inside the transaction, sent once the commit is durable.
enum Answer {
    Ingest(
        oneshot::Sender<Result<IngestOutcome, StoreError>>,
        IngestOutcome,
    ),
    Add(oneshot::Sender<Result<u64, StoreError>>, u64),
    Delete(
        oneshot::Sender<Result<Option<u64>, StoreError>>,
        Option<u64>,
    ),
    Erase(oneshot::Sender<Result<bool, StoreError>>, bool),
    Swap(oneshot::Sender<Result<bool, StoreError>>, bool),
    Purge(
        oneshot::Sender<Result<PurgeOutcome, StoreError>>,
        PurgeOutcome,
    ),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Ingest(r, v) => drop(r.send(Ok(v))),
            Answer::Add(r, v) => drop(r.send(Ok(v))),
            Answer::Delete(r, v) => drop(r.send(Ok(v))),
            Answer::Erase(r, v) => drop(r.send(Ok(v))),
            Answer::Purge(r, v) => drop(r.send(Ok(v))),
            Answer::Swap(r, v) => drop(r.send(Ok(v))),
        }
    }

    fn fail(self, message: &str) {
        let e = || StoreError::Unavailable(message.to_owned());
        match self {
            Answer::Ingest(r, _) => drop(r.send(Err(e()))),
            Answer::Add(r, _) => drop(r.send(Err(e()))),
            Answer::Delete(r, _) => drop(r.send(Err(e()))),
            Answer::Erase(r, _) => drop(r.send(Err(e()))),
            Answer::Purge(r, _) => drop(r.send(Err(e()))),
            Answer::Swap(r, _) => drop(r.send(Err(e()))),
        }
    }
}

/// Commit statistics, for `/metrics`.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Commits made.
    pub commits: std::sync::atomic::AtomicU64,
    /// Writes they carried.
    pub writes: std::sync::atomic::AtomicU64,
    /// Total commit time, microseconds.
    pub commit_micros: std::sync::atomic::AtomicU64,
    /// Writes waiting now.
    pub queued: std::sync::atomic::AtomicI64,
}

/// The embedded store.
pub struct EmbeddedStore {
    db: Arc<Database>,
    writes: mpsc::Sender<Write>,
    stats: Arc<CommitStats>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, refusing another format version.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let db = Database::builder()
            .set_cache_size(256 << 20)
            .create(dir.join(FILE_NAME))
            .map_err(unavailable)?;
        let txn = db.begin_write().map_err(unavailable)?;
        {
            let mut meta = txn.open_table(META).map_err(unavailable)?;
            let stored = meta
                .get("format_version")
                .map_err(unavailable)?
                .map(|v| v.value().to_vec());
            match stored {
                Some(v) if v.as_slice() != FORMAT_VERSION.to_be_bytes() => {
                    return Err(StoreError::Format(format!(
                        "{} holds format {:?}; this build reads format {FORMAT_VERSION}",
                        dir.display(),
                        v
                    )));
                }
                Some(_) => {}
                None => {
                    meta.insert("format_version", FORMAT_VERSION.to_be_bytes().as_slice())
                        .map_err(unavailable)?;
                }
            }
            // Every table exists from the start, so readers never meet a missing one.
            txn.open_table(SUBJECTS).map_err(unavailable)?;
            txn.open_table(EVENTS).map_err(unavailable)?;
            txn.open_table(EVENT_IDS).map_err(unavailable)?;
            txn.open_table(LOG).map_err(unavailable)?;
            txn.open_table(DECISION_IDS).map_err(unavailable)?;
            txn.open_table(BLOBS).map_err(unavailable)?;
            txn.open_table(RECORDS).map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        let db = Arc::new(db);
        let (writes, queue) = mpsc::channel();
        let stats = Arc::new(CommitStats::default());
        let (writer_db, writer_stats) = (Arc::clone(&db), Arc::clone(&stats));
        std::thread::Builder::new()
            .name("signalbox-cache-writer".into())
            .spawn(move || writer(&writer_db, &queue, &writer_stats))
            .map_err(unavailable)?;
        Ok(Self { db, writes, stats })
    }

    /// The JSON values of `table` with keys in `from..to`, last key first, at most `limit`
    /// (a value that does not parse is skipped).
    fn newest_first<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        from: &str,
        to: &str,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(table).map_err(unavailable)?;
        let mut out = Vec::new();
        for r in table
            .range(from..to)
            .map_err(unavailable)?
            .rev()
            .take(limit)
        {
            let (_, v) = r.map_err(unavailable)?;
            if let Ok(value) = serde_json::from_slice(v.value()) {
                out.push(value);
            }
        }
        Ok(out)
    }

    /// Commit statistics.
    pub fn stats(&self) -> Arc<CommitStats> {
        Arc::clone(&self.stats)
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.stats
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.writes
            .send(make(tx))
            .map_err(|_| StoreError::Unavailable("the writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }
}

/// The writer thread: group commits until every sender is gone.
fn writer(db: &Database, queue: &mpsc::Receiver<Write>, stats: &CommitStats) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match queue.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let n = batch.len();
        let started = std::time::Instant::now();
        match commit(db, batch) {
            Ok(answers) => answers.into_iter().for_each(Answer::send),
            Err((answers, message)) => {
                tracing::error!(error = %message, "commit failed; {} writes refused", answers.len());
                answers.into_iter().for_each(|a| a.fail(&message));
            }
        }
        stats.commits.fetch_add(1, Relaxed);
        stats.writes.fetch_add(n as u64, Relaxed);
        stats.commit_micros.fetch_add(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
        stats
            .queued
            .fetch_sub(i64::try_from(n).unwrap_or(i64::MAX), Relaxed);
    }
}

type Failed = (Vec<Answer>, String);

/// Applies a batch of writes in one transaction and commits it durably.
fn commit(db: &Database, batch: Vec<Write>) -> Result<Vec<Answer>, Failed> {
    let mut answers = Vec::with_capacity(batch.len());
    let mut pending = batch.into_iter();
    let result = (|| -> Result<(), String> {
        let mut txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| e.to_string())?;
        for write in pending.by_ref() {
            answers.push(apply(&txn, write).map_err(|e| e.to_string())?);
        }
        txn.commit().map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => Ok(answers),
        Err(message) => {
            // The write that failed and those not reached get the error too.
            for w in pending {
                answers.push(match w {
                    Write::Ingest { reply, .. } => Answer::Ingest(reply, IngestOutcome::default()),
                    Write::AddDecision { reply, .. } => Answer::Add(reply, 0),
                    Write::DeleteDecision { reply, .. } => Answer::Delete(reply, None),
                    Write::Erase { reply, .. } => Answer::Erase(reply, false),
                    Write::Purge { reply, .. } => Answer::Purge(reply, PurgeOutcome::default()),
                    Write::Swap { reply, .. } => Answer::Swap(reply, false),
                    Write::Records { reply, .. } => Answer::Swap(reply, false),
                    Write::PurgeRecords { reply, .. } => Answer::Add(reply, 0),
                });
            }
            Err((answers, message))
        }
    }
}

fn read_u64(meta: &redb::Table<&str, &[u8]>, key: &str) -> Result<u64, redb::Error> {
    Ok(meta
        .get(key)?
        .and_then(|v| v.value().try_into().ok())
        .map_or(0, u64::from_be_bytes))
}

fn next_seq(txn: &redb::WriteTransaction) -> Result<u64, redb::Error> {
    let mut meta = txn.open_table(META)?;
    let seq = read_u64(&meta, LAST_SEQ)?.saturating_add(1);
    meta.insert(LAST_SEQ, seq.to_be_bytes().as_slice())?;
    Ok(seq)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, redb::Error> {
    serde_json::to_vec(value).map_err(|e| redb::Error::Corrupted(e.to_string()))
}

/// One write inside the open transaction. A failure here aborts the whole commit.
fn apply(txn: &redb::WriteTransaction, write: Write) -> Result<Answer, redb::Error> {
    Ok(match write {
        Write::Records { records, reply } => {
            let mut table = txn.open_table(RECORDS)?;
            for r in &records {
                let key = format!("{:020}\0{}\0{}", r.at_ms, r.node_id, r.request_id);
                table.insert(key.as_str(), to_json(r)?.as_slice())?;
            }
            Answer::Swap(reply, true)
        }
        Write::PurgeRecords { before_ms, reply } => {
            let mut table = txn.open_table(RECORDS)?;
            let end = format!("{before_ms:020}");
            let old: Vec<String> = table
                .range(..end.as_str())?
                .map(|r| r.map(|(k, _)| k.value().to_owned()))
                .collect::<Result<_, _>>()?;
            for k in &old {
                table.remove(k.as_str())?;
            }
            Answer::Add(reply, old.len() as u64)
        }
        Write::Swap {
            key,
            expected,
            value,
            reply,
        } => {
            let mut blobs = txn.open_table(BLOBS)?;
            let current = blobs.get(key.as_str())?.map(|v| v.value().to_vec());
            let swapped = current == expected;
            if swapped {
                blobs.insert(key.as_str(), value.as_slice())?;
            }
            Answer::Swap(reply, swapped)
        }
        Write::Ingest {
            events,
            now_ms,
            scoring,
            reply,
        } => {
            let mut ids = txn.open_table(EVENT_IDS)?;
            let mut raw = txn.open_table(EVENTS)?;
            let mut outcome = IngestOutcome::default();
            let mut fresh = Vec::with_capacity(events.len());
            for e in events {
                if ids.get(e.id.as_str())?.is_some() {
                    outcome.duplicates += 1;
                    continue;
                }
                ids.insert(e.id.as_str(), e.received_ms)?;
                let key = event_key(&e.subject.storage_key(), e.at_ms, &e.id);
                raw.insert(key.as_str(), to_json(&e)?.as_slice())?;
                fresh.push(e);
            }
            outcome.accepted = fresh.len();
            let mut subjects = txn.open_table(SUBJECTS)?;
            for (subject, group) in super::by_subject(fresh) {
                let key = subject.storage_key();
                let stored = subjects.get(key.as_str())?.map(|v| v.value().to_vec());
                let state = super::apply_events(stored.as_deref(), &group, now_ms, &scoring);
                subjects.insert(key.as_str(), state.as_slice())?;
            }
            Answer::Ingest(reply, outcome)
        }
        Write::AddDecision { decision, reply } => {
            let seq = next_seq(txn)?;
            let entry = LogEntry {
                seq,
                id: decision.id.clone(),
                scope: decision.scope,
                key: decision.key.clone(),
                at: decision.created_at,
                decision: Some(decision),
            };
            txn.open_table(LOG)?
                .insert(seq, to_json(&entry)?.as_slice())?;
            txn.open_table(DECISION_IDS)?
                .insert(entry.id.as_str(), seq)?;
            Answer::Add(reply, seq)
        }
        Write::DeleteDecision { id, now, reply } => {
            let added = txn
                .open_table(DECISION_IDS)?
                .remove(id.as_str())?
                .map(|v| v.value());
            let Some(added) = added else {
                return Ok(Answer::Delete(reply, None));
            };
            let mut log = txn.open_table(LOG)?;
            let original: Option<LogEntry> = log
                .get(added)?
                .and_then(|v| serde_json::from_slice(v.value()).ok());
            let Some(original) = original else {
                return Ok(Answer::Delete(reply, None));
            };
            let seq = next_seq(txn)?;
            let tombstone = LogEntry {
                seq,
                decision: None,
                at: now,
                ..original
            };
            log.insert(seq, to_json(&tombstone)?.as_slice())?;
            Answer::Delete(reply, Some(seq))
        }
        Write::Erase { subject, reply } => {
            let key = subject.storage_key();
            let had_state = txn.open_table(SUBJECTS)?.remove(key.as_str())?.is_some();
            let mut raw = txn.open_table(EVENTS)?;
            let (from, to) = (format!("{key}\0"), format!("{key}\u{1}"));
            let doomed: Vec<String> = raw
                .range(from.as_str()..to.as_str())?
                .map(|r| r.map(|(k, _)| k.value().to_owned()))
                .collect::<Result<_, _>>()?;
            for k in &doomed {
                raw.remove(k.as_str())?;
            }
            Answer::Erase(reply, had_state || !doomed.is_empty())
        }
        Write::Purge {
            events_before_ms,
            tombstones_before,
            reply,
        } => {
            let mut outcome = PurgeOutcome::default();
            let mut raw = txn.open_table(EVENTS)?;
            let old: Vec<String> = raw
                .iter()?
                .filter_map(|r| match r {
                    Ok((k, v)) => {
                        let e: Option<Event> = serde_json::from_slice(v.value()).ok();
                        e.filter(|e| e.received_ms < events_before_ms)
                            .map(|_| Ok(k.value().to_owned()))
                    }
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()?;
            for k in &old {
                raw.remove(k.as_str())?;
            }
            outcome.events = old.len();
            let mut ids = txn.open_table(EVENT_IDS)?;
            ids.retain(|_, received| received >= events_before_ms)?;

            // Lifted decisions: the tombstone and its add go; expired ones: the add goes.
            let mut log = txn.open_table(LOG)?;
            let entries: Vec<LogEntry> = log
                .iter()?
                .filter_map(|r| {
                    r.ok()
                        .and_then(|(_, v)| serde_json::from_slice(v.value()).ok())
                })
                .collect();
            let (doomed, compacted) = super::compactable(&entries, tombstones_before);
            let mut active = txn.open_table(DECISION_IDS)?;
            for e in &doomed {
                log.remove(e.seq)?;
                if e.decision.is_some() {
                    active.remove(e.id.as_str())?;
                }
            }
            outcome.log_entries = doomed.len();
            if compacted > 0 {
                let mut meta = txn.open_table(META)?;
                let before = read_u64(&meta, COMPACTED_THROUGH)?;
                meta.insert(
                    COMPACTED_THROUGH,
                    before.max(compacted).to_be_bytes().as_slice(),
                )?;
            }
            Answer::Purge(reply, outcome)
        }
    })
}

impl Store for EmbeddedStore {
    async fn ingest(
        &self,
        events: Vec<Event>,
        now_ms: u64,
        scoring: Arc<ScoringSettings>,
    ) -> Result<IngestOutcome, StoreError> {
        self.submit(|reply| Write::Ingest {
            events,
            now_ms,
            scoring,
            reply,
        })
        .await
    }

    async fn subjects(
        &self,
        subjects: Vec<SubjectKey>,
    ) -> Result<Vec<Option<SubjectState>>, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(SUBJECTS).map_err(unavailable)?;
        subjects
            .iter()
            .map(|s| {
                Ok(table
                    .get(s.storage_key().as_str())
                    .map_err(unavailable)?
                    .and_then(|v| SubjectState::decode(v.value())))
            })
            .collect()
    }

    async fn events_of(&self, subject: SubjectKey, limit: usize) -> Result<Vec<Event>, StoreError> {
        let key = subject.storage_key();
        self.newest_first(EVENTS, &format!("{key}\0"), &format!("{key}\u{1}"), limit)
    }

    async fn erase_subject(&self, subject: SubjectKey) -> Result<bool, StoreError> {
        self.submit(|reply| Write::Erase { subject, reply }).await
    }

    async fn add_decision(&self, decision: Decision) -> Result<u64, StoreError> {
        self.submit(|reply| Write::AddDecision { decision, reply })
            .await
    }

    async fn delete_decision(&self, id: String, now: u64) -> Result<Option<u64>, StoreError> {
        self.submit(|reply| Write::DeleteDecision { id, now, reply })
            .await
    }

    async fn log_after(&self, after: u64, limit: usize) -> Result<LogPage, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(LOG).map_err(unavailable)?;
        let mut entries = Vec::new();
        let mut more = false;
        for r in table
            .range(after.saturating_add(1)..)
            .map_err(unavailable)?
        {
            if entries.len() >= limit {
                more = true;
                break;
            }
            let (_, v) = r.map_err(unavailable)?;
            let entry: LogEntry =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Format(e.to_string()))?;
            entries.push(entry);
        }
        Ok(LogPage { entries, more })
    }

    async fn log_bounds(&self) -> Result<LogBounds, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let meta = txn.open_table(META).map_err(unavailable)?;
        let get = |key: &str| -> Result<u64, StoreError> {
            Ok(meta
                .get(key)
                .map_err(unavailable)?
                .and_then(|v| v.value().try_into().ok())
                .map_or(0, u64::from_be_bytes))
        };
        Ok(LogBounds {
            last_seq: get(LAST_SEQ)?,
            compacted_through: get(COMPACTED_THROUGH)?,
        })
    }

    async fn purge(
        &self,
        events_before_ms: u64,
        tombstones_before: u64,
    ) -> Result<PurgeOutcome, StoreError> {
        self.submit(|reply| Write::Purge {
            events_before_ms,
            tombstones_before,
            reply,
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.begin_read().map(drop).map_err(unavailable)
    }

    async fn append_records(
        &self,
        records: Vec<signalbox_wire::DecisionRecordV1>,
    ) -> Result<(), StoreError> {
        self.submit(|reply| Write::Records { records, reply })
            .await
            .map(drop)
    }

    async fn records(
        &self,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<signalbox_wire::DecisionRecordV1>, StoreError> {
        self.newest_first(
            RECORDS,
            &format!("{from_ms:020}"),
            &format!("{to_ms:020}\u{1}"),
            limit,
        )
    }

    async fn purge_records(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.submit(|reply| Write::PurgeRecords { before_ms, reply })
            .await
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn all_subjects(&self) -> Result<Vec<(SubjectKey, SubjectState)>, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(SUBJECTS).map_err(unavailable)?;
        let mut out = Vec::new();
        for r in table.iter().map_err(unavailable)? {
            let (k, v) = r.map_err(unavailable)?;
            if let (Some(key), Some(state)) = (
                SubjectKey::from_storage_key(k.value()),
                SubjectState::decode(v.value()),
            ) {
                out.push((key, state));
            }
        }
        Ok(out)
    }

    async fn get_blob(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(BLOBS).map_err(unavailable)?;
        Ok(table
            .get(key.as_str())
            .map_err(unavailable)?
            .map(|v| v.value().to_vec()))
    }

    async fn swap_blob(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, StoreError> {
        self.submit(|reply| Write::Swap {
            key,
            expected,
            value,
            reply,
        })
        .await
    }

    async fn list_blobs(&self, prefix: String) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(BLOBS).map_err(unavailable)?;
        let mut out = Vec::new();
        for r in table.range(prefix.as_str()..).map_err(unavailable)? {
            let (k, v) = r.map_err(unavailable)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }
}
