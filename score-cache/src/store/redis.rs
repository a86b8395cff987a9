//! The Redis store: several cache nodes share one Redis (`--redis redis://host:6379`).
//!
//! **Acknowledged** means Redis executed the write and answered. Whether that survives a crash
//! of Redis is Redis's persistence setting: with `appendonly yes` and `appendfsync always`,
//! Redis fsyncs its append-only file before it answers, so an acknowledged write survives
//! `kill -9` of Redis (tested: `tests/redis_store.rs`); with `appendfsync everysec` (Redis's
//! default when AOF is on) up to a second of acknowledged writes can be lost. At start the
//! cache reads `CONFIG GET appendonly/appendfsync` and warns when writes are not fsynced.
//!
//! **Keys** (all under a prefix, default `sb`) are hash-tagged per subject
//! (`sb:{s:ip:81.62.10.4}`, its events `…:events`, its event ids `…:id:<id>`) and the decision
//! log sits under `{decisions}`, so every multi-key step touches one hash slot. Redis Cluster
//! is therefore possible in principle but untested, and not claimed.
//!
//! **Atomicity** without `WATCH` (the connection is multiplexed): a subject's batch is read,
//! scored in Rust, and written by a Lua script that first checks the state is still what was
//! read and none of the event ids exists yet; otherwise the step is retried. Event ids are
//! unique per subject. Every call has a deadline: a slow or dead Redis answers
//! [`StoreError::Unavailable`] within it, never a hang.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use signalbox_policy::scoring::ScoringSettings;

use super::{IngestOutcome, LogBounds, LogPage, PurgeOutcome, Store, StoreError};
use crate::model::{Decision, Event, LogEntry, SubjectKey};
use crate::scoring::SubjectState;

/// The Redis store.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    retention_ms: u64,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Writes a subject's new state, event ids and events if the state is still `ARGV[1]`
/// (`""`: absent) and no id exists yet. KEYS: state, events; ARGV: expected, new state,
/// retention ms, then (id key, score, member) triples.
const INGEST_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false then current = '' end
if current ~= ARGV[1] then return 0 end
for i = 4, #ARGV, 3 do
  if redis.call('EXISTS', ARGV[i]) == 1 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
for i = 4, #ARGV, 3 do
  redis.call('SET', ARGV[i], '1', 'PX', ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i + 2])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
";

/// Appends a decision. KEYS: seq, log, active; ARGV: id, entry JSON (seq 0). Returns the seq.
const ADD_SCRIPT: &str = r"
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, seq .. '|' .. ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], seq)
return seq
";

/// Lifts a decision added at ARGV[2] if it is still active. KEYS: seq, log, active; ARGV: id,
/// added seq, tombstone JSON (seq 0). Returns the tombstone's seq, or 0.
const DELETE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, seq .. '|' .. ARGV[3])
return seq
";

/// Sets a blob if it is still ARGV[1] (`ARGV[3] == "0"`: expected absent). KEYS: the hash;
/// ARGV: expected, field, expected-present flag, value. Returns 1 when set.
const SWAP_SCRIPT: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[2])
if ARGV[3] == '0' then
  if current ~= false then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
return 1
";

impl RedisStore {
    /// Connects lazily (the cache starts, and `/readyz` says not ready, while Redis is down);
    /// `timeout` bounds every call.
    pub fn open(
        url: &str,
        prefix: &str,
        timeout: Duration,
        retention_days: u32,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            retention_ms: u64::from(retention_days.max(1)) * 86_400_000,
        })
    }

    /// Warns (in the log) when Redis does not fsync before it answers.
    pub async fn check_durability(&self) -> Option<String> {
        let mut conn = self.conn.clone();
        let get = |name: &'static str| {
            let mut conn = conn.clone();
            async move {
                let v: Vec<String> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                v.get(1).cloned()
            }
        };
        let aof = self
            .deadline(async { Ok(get("appendonly").await) })
            .await
            .ok()??;
        let fsync = self
            .deadline(async { Ok(get("appendfsync").await) })
            .await
            .ok()??;
        let _ = &mut conn;
        (aof != "yes" || fsync != "always").then(|| {
            format!(
                "Redis has appendonly={aof}, appendfsync={fsync}: an acknowledged write can be lost if Redis crashes (set appendonly yes, appendfsync always)"
            )
        })
    }

    fn subject_key(&self, subject: &SubjectKey) -> String {
        format!("{}:{{s:{}}}", self.prefix, subject.storage_key())
    }

    /// Every key matching `pattern` (SCAN, within one deadline).
    async fn scan_keys(&self, pattern: String) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        self.deadline(async {
            let mut iter: redis::AsyncIter<'_, String> =
                conn.scan_match(&pattern).await.map_err(unavailable)?;
            let mut keys = Vec::new();
            while let Some(k) = iter.next_item().await {
                keys.push(k.map_err(unavailable)?);
            }
            Ok(keys)
        })
        .await
    }

    fn records_key(&self) -> String {
        format!("{}:{{records}}", self.prefix)
    }

    fn blobs(&self) -> String {
        format!("{}:{{blobs}}", self.prefix)
    }

    fn decisions(&self, part: &str) -> String {
        format!("{}:{{decisions}}:{part}", self.prefix)
    }

    async fn deadline<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| StoreError::Unavailable("Redis did not answer in time".into()))?
    }

    fn parse_member(member: &str) -> Option<LogEntry> {
        let (seq, json) = member.split_once('|')?;
        let mut entry: LogEntry = serde_json::from_str(json).ok()?;
        entry.seq = seq.parse().ok()?;
        Some(entry)
    }

    async fn ingest_subject(
        &self,
        subject: &SubjectKey,
        events: &[Event],
        now_ms: u64,
        scoring: &ScoringSettings,
    ) -> Result<usize, StoreError> {
        let key = self.subject_key(subject);
        let events_key = format!("{key}:events");
        let script = redis::Script::new(INGEST_SCRIPT);
        for _ in 0..16 {
            let mut conn = self.conn.clone();
            let id_keys: Vec<String> = events
                .iter()
                .map(|e| format!("{key}:id:{}", e.id))
                .collect();
            let (current, exists): (Option<Vec<u8>>, Vec<bool>) = self
                .deadline(async {
                    let mut pipe = redis::pipe();
                    pipe.get(&key);
                    for k in &id_keys {
                        pipe.exists(k);
                    }
                    let mut values: Vec<redis::Value> =
                        pipe.query_async(&mut conn).await.map_err(unavailable)?;
                    let current = if values.is_empty() {
                        None
                    } else {
                        redis::from_redis_value(values.remove(0)).map_err(unavailable)?
                    };
                    let exists = values
                        .into_iter()
                        .map(|v| redis::from_redis_value::<bool>(v).map_err(unavailable))
                        .collect::<Result<_, _>>()?;
                    Ok((current, exists))
                })
                .await?;
            let fresh: Vec<(&Event, &String)> = events
                .iter()
                .zip(&id_keys)
                .zip(&exists)
                .filter(|(_, seen)| !**seen)
                .map(|(pair, _)| pair)
                .collect();
            if fresh.is_empty() {
                return Ok(0);
            }
            let owned: Vec<Event> = fresh.iter().map(|(e, _)| (*e).clone()).collect();
            let state = super::apply_events(current.as_deref(), &owned, now_ms, scoring);
            let mut invocation = script.prepare_invoke();
            invocation
                .key(&key)
                .key(&events_key)
                .arg(current.unwrap_or_default())
                .arg(state)
                .arg(self.retention_ms);
            for (e, id_key) in &fresh {
                let member = serde_json::to_string(e).map_err(unavailable)?;
                invocation.arg(*id_key).arg(e.at_ms).arg(member);
            }
            let written: i64 = self
                .deadline(async {
                    let mut conn = self.conn.clone();
                    invocation
                        .invoke_async(&mut conn)
                        .await
                        .map_err(unavailable)
                })
                .await?;
            if written == 1 {
                return Ok(fresh.len());
            }
        }
        Err(StoreError::Unavailable(
            "too much contention on one subject".into(),
        ))
    }
}

impl Store for RedisStore {
    async fn ingest(
        &self,
        events: Vec<Event>,
        now_ms: u64,
        scoring: Arc<ScoringSettings>,
    ) -> Result<IngestOutcome, StoreError> {
        let total = events.len();
        let mut accepted = 0;
        for (subject, group) in super::by_subject(events) {
            accepted += self
                .ingest_subject(&subject, &group, now_ms, &scoring)
                .await?;
        }
        Ok(IngestOutcome {
            accepted,
            duplicates: total - accepted,
        })
    }

    async fn subjects(
        &self,
        subjects: Vec<SubjectKey>,
    ) -> Result<Vec<Option<SubjectState>>, StoreError> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = subjects.iter().map(|s| self.subject_key(s)).collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<Vec<u8>>> = self
            .deadline(async {
                // One GET per key (not MGET), so keys in different slots stay valid.
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.get(k);
                }
                pipe.query_async(&mut conn).await.map_err(unavailable)
            })
            .await?;
        Ok(values
            .into_iter()
            .map(|v| v.and_then(|b| SubjectState::decode(&b)))
            .collect())
    }

    async fn events_of(&self, subject: SubjectKey, limit: usize) -> Result<Vec<Event>, StoreError> {
        let key = format!("{}:events", self.subject_key(&subject));
        let mut conn = self.conn.clone();
        let members: Vec<String> = self
            .deadline(async {
                conn.zrevrange(&key, 0, isize::try_from(limit).unwrap_or(isize::MAX) - 1)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect())
    }

    async fn erase_subject(&self, subject: SubjectKey) -> Result<bool, StoreError> {
        let key = self.subject_key(&subject);
        let mut conn = self.conn.clone();
        let removed: i64 = self
            .deadline(async {
                conn.del(&[key.clone(), format!("{key}:events")])
                    .await
                    .map_err(unavailable)
            })
            .await?;
        Ok(removed > 0)
    }

    async fn add_decision(&self, decision: Decision) -> Result<u64, StoreError> {
        let entry = LogEntry {
            seq: 0,
            id: decision.id.clone(),
            scope: decision.scope,
            key: decision.key.clone(),
            at: decision.created_at,
            decision: Some(decision),
        };
        let json = serde_json::to_string(&entry).map_err(unavailable)?;
        let mut conn = self.conn.clone();
        self.deadline(async {
            redis::Script::new(ADD_SCRIPT)
                .key(self.decisions("seq"))
                .key(self.decisions("log"))
                .key(self.decisions("active"))
                .arg(&entry.id)
                .arg(json)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)
        })
        .await
    }

    async fn delete_decision(&self, id: String, now: u64) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let added: Option<u64> = self
            .deadline(async {
                conn.hget(self.decisions("active"), &id)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        let Some(added) = added else {
            return Ok(None);
        };
        let members: Vec<String> = self
            .deadline(async {
                conn.zrangebyscore(self.decisions("log"), added, added)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        let Some(original) = members.iter().find_map(|m| Self::parse_member(m)) else {
            return Ok(None);
        };
        let tombstone = LogEntry {
            seq: 0,
            decision: None,
            at: now,
            ..original
        };
        let json = serde_json::to_string(&tombstone).map_err(unavailable)?;
        let seq: u64 = self
            .deadline(async {
                redis::Script::new(DELETE_SCRIPT)
                    .key(self.decisions("seq"))
                    .key(self.decisions("log"))
                    .key(self.decisions("active"))
                    .arg(&id)
                    .arg(added)
                    .arg(json)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        Ok((seq > 0).then_some(seq))
    }

    async fn log_after(&self, after: u64, limit: usize) -> Result<LogPage, StoreError> {
        let mut conn = self.conn.clone();
        let members: Vec<String> = self
            .deadline(async {
                redis::cmd("ZRANGE")
                    .arg(self.decisions("log"))
                    .arg(format!("({after}"))
                    .arg("+inf")
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit.saturating_add(1).min(1 << 40))
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        let mut entries: Vec<LogEntry> = members
            .iter()
            .map(|m| {
                Self::parse_member(m)
                    .ok_or_else(|| StoreError::Format("a decision log entry".into()))
            })
            .collect::<Result<_, _>>()?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        Ok(LogPage { entries, more })
    }

    async fn log_bounds(&self) -> Result<LogBounds, StoreError> {
        let mut conn = self.conn.clone();
        let (last, compacted): (Option<u64>, Option<u64>) = self
            .deadline(async {
                redis::pipe()
                    .get(self.decisions("seq"))
                    .get(self.decisions("compacted"))
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        Ok(LogBounds {
            last_seq: last.unwrap_or(0),
            compacted_through: compacted.unwrap_or(0),
        })
    }

    async fn purge(
        &self,
        events_before_ms: u64,
        tombstones_before: u64,
    ) -> Result<PurgeOutcome, StoreError> {
        let mut outcome = PurgeOutcome::default();
        // Events: every subject's sorted set, trimmed by time (idle ones also expire).
        let keys = self
            .scan_keys(format!("{}:{{s:*}}:events", self.prefix))
            .await?;
        for key in keys {
            let removed: usize = self
                .deadline(async {
                    let mut conn = self.conn.clone();
                    conn.zrembyscore(&key, 0, events_before_ms.saturating_sub(1))
                        .await
                        .map_err(unavailable)
                })
                .await?;
            outcome.events += removed;
        }
        // The decision log, as the embedded store compacts it.
        let page = self.log_after(0, usize::MAX / 2).await?;
        let (doomed, compacted) = super::compactable(&page.entries, tombstones_before);
        for e in doomed {
            let mut conn = self.conn.clone();
            self.deadline(async {
                let mut pipe = redis::pipe();
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(self.decisions("log"))
                    .arg(e.seq)
                    .arg(e.seq);
                if e.decision.is_some() {
                    pipe.hdel(self.decisions("active"), &e.id);
                }
                pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
            })
            .await?;
            outcome.log_entries += 1;
        }
        if compacted > 0 {
            let mut conn = self.conn.clone();
            let before: Option<u64> = self
                .deadline(async {
                    conn.get(self.decisions("compacted"))
                        .await
                        .map_err(unavailable)
                })
                .await?;
            if before.unwrap_or(0) < compacted {
                self.deadline(async {
                    conn.set::<_, _, ()>(self.decisions("compacted"), compacted)
                        .await
                        .map_err(unavailable)
                })
                .await?;
            }
        }
        Ok(outcome)
    }

    async fn append_records(
        &self,
        records: Vec<signalbox_wire::DecisionRecordV1>,
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for r in &records {
            let member = serde_json::to_string(r).map_err(unavailable)?;
            pipe.zadd(self.records_key(), member, r.at_ms);
        }
        let mut conn = self.conn.clone();
        self.deadline(async { pipe.query_async::<()>(&mut conn).await.map_err(unavailable) })
            .await
    }

    async fn records(
        &self,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<signalbox_wire::DecisionRecordV1>, StoreError> {
        let mut conn = self.conn.clone();
        let members: Vec<String> = self
            .deadline(async {
                redis::cmd("ZRANGE")
                    .arg(self.records_key())
                    .arg(to_ms)
                    .arg(from_ms)
                    .arg("BYSCORE")
                    .arg("REV")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit.min(1 << 40))
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect())
    }

    async fn purge_records(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut conn = self.conn.clone();
        self.deadline(async {
            conn.zrembyscore(self.records_key(), 0, before_ms.saturating_sub(1))
                .await
                .map_err(unavailable)
        })
        .await
    }

    async fn all_subjects(&self) -> Result<Vec<(SubjectKey, SubjectState)>, StoreError> {
        let keys = self.scan_keys(format!("{}:{{s:*}}", self.prefix)).await?;
        let head = format!("{}:{{s:", self.prefix);
        let subjects: Vec<SubjectKey> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&head)?.strip_suffix('}'))
            .filter_map(SubjectKey::from_storage_key)
            .collect();
        let states = self.subjects(subjects.clone()).await?;
        let mut out: Vec<(SubjectKey, SubjectState)> = subjects
            .into_iter()
            .zip(states)
            .filter_map(|(k, s)| Some((k, s?)))
            .collect();
        out.sort_by_key(|(k, _)| k.storage_key());
        Ok(out)
    }

    async fn get_blob(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        self.deadline(async { conn.hget(self.blobs(), &key).await.map_err(unavailable) })
            .await
    }

    async fn swap_blob(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let present = if expected.is_some() { "1" } else { "0" };
        let set: i64 = self
            .deadline(async {
                redis::Script::new(SWAP_SCRIPT)
                    .key(self.blobs())
                    .arg(expected.unwrap_or_default())
                    .arg(&key)
                    .arg(present)
                    .arg(value)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        Ok(set == 1)
    }

    async fn list_blobs(&self, prefix: String) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, Vec<u8>)> = self
            .deadline(async { conn.hgetall(self.blobs()).await.map_err(unavailable) })
            .await?;
        let mut out: Vec<(String, Vec<u8>)> = all
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        out.sort();
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.deadline(async {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
                .map_err(unavailable)
        })
        .await
    }
}
