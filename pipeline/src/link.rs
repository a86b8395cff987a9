//! The edge's background link to the score cache, as pure steps an adapter drives from its
//! timer: which worker leads (a heartbeat in shared data), the decision-stream call and what
//! its answer means. The adapter owns the timer, the calls and shared data.

use signalbox_wire::DecisionPageV1;

use crate::config::ScoreCache;

/// Shared-data key of the leader's heartbeat (per plugin lineage: `signalbox.leader.<name>`).
pub const LEADER_KEY: &str = "signalbox.leader";
/// Shared-data key of the published decision set's blob.
pub const DECISIONS_KEY: &str = "signalbox.decisions";
/// Shared-data key of the published decision set's generation (8 bytes): what every worker
/// reads on each tick, so the blob is read only when it changed.
pub const DECISIONS_GENERATION_KEY: &str = "signalbox.decisions.generation";
/// Shared-data key handing out worker ids.
pub const WORKER_IDS_KEY: &str = "signalbox.worker_ids";

/// A call the link makes: method, path (with query), body; the adapter adds nothing.
#[derive(Clone)]
pub struct LinkCall {
    /// The host's cluster.
    pub cluster: String,
    /// Headers, pseudo-headers first.
    pub headers: Vec<(String, String)>,
    /// Body, if any.
    pub body: Option<Vec<u8>>,
    /// Milliseconds.
    pub timeout_ms: u32,
}

impl std::fmt::Debug for LinkCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self
            .headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map(|(_, v)| v.as_str());
        f.debug_struct("LinkCall")
            .field("cluster", &self.cluster)
            .field("path", &path)
            .finish_non_exhaustive()
    }
}

fn call(
    cache: &ScoreCache,
    method: &str,
    path: String,
    body: Option<Vec<u8>>,
    timeout_ms: u32,
) -> LinkCall {
    let mut headers = vec![
        (":method".to_owned(), method.to_owned()),
        (":path".to_owned(), path),
        (":authority".to_owned(), cache.authority.clone()),
        ("accept".to_owned(), "application/json".to_owned()),
    ];
    if body.is_some() {
        headers.push(("content-type".to_owned(), "application/json".to_owned()));
    }
    if let Some(token) = &cache.token {
        headers.push(("authorization".to_owned(), format!("Bearer {token}")));
    }
    LinkCall {
        cluster: cache.cluster.clone(),
        headers,
        body,
        timeout_ms,
    }
}

/// `GET /v1/decisions/stream?since=CURSOR`, with a timeout of the poll interval (at least a
/// second: a snapshot page is large).
pub fn stream_call(cache: &ScoreCache, cursor: &str) -> LinkCall {
    let mut path = String::from("/v1/decisions/stream?since=");
    for b in cursor.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    call(cache, "GET", path, None, cache.decisions_poll_ms.max(1_000))
}

/// What a stream answer means.
#[derive(Debug)]
pub enum StreamAnswer {
    /// A page to apply; `more`: ask again at once.
    Page(DecisionPageV1),
    /// `304`: nothing new.
    Unchanged,
    /// `410`: the cursor is older than compaction; start over from a snapshot.
    Gone,
    /// Anything else (no answer, 5xx, a body that is not a page): try on the next poll.
    Failed(String),
}

/// Reads a stream answer (`status` 0: no answer).
pub fn stream_answer(status: u32, body: &[u8]) -> StreamAnswer {
    match status {
        200 => match serde_json::from_slice::<DecisionPageV1>(body) {
            Ok(page) => StreamAnswer::Page(page),
            Err(e) => StreamAnswer::Failed(format!("not a decision page: {e}")),
        },
        304 => StreamAnswer::Unchanged,
        410 => StreamAnswer::Gone,
        0 => StreamAnswer::Failed("no answer".to_owned()),
        other => StreamAnswer::Failed(format!("status {other}")),
    }
}

/// The leader heartbeat: `(worker id, unix ms)`, 16 bytes.
fn heartbeat(stored: Option<&[u8]>) -> Option<(u64, u64)> {
    let b = stored?;
    Some((
        u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
        u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
    ))
}

/// One leadership step for worker `me` at `now_ms`: the leader renews its heartbeat; anyone
/// takes over a heartbeat older than `stale_after_ms` (or none). Returns what to write (with
/// the read's CAS) and whether `me` leads.
pub fn lead(
    stored: Option<&[u8]>,
    me: u64,
    now_ms: u64,
    stale_after_ms: u64,
) -> (Option<Vec<u8>>, bool) {
    let take = match heartbeat(stored) {
        Some((holder, _)) if holder == me => true,
        Some((_, at)) => now_ms.saturating_sub(at) > stale_after_ms,
        None => true,
    };
    if !take {
        return (None, false);
    }
    let mut write = Vec::with_capacity(16);
    write.extend_from_slice(&me.to_le_bytes());
    write.extend_from_slice(&now_ms.to_le_bytes());
    (Some(write), true)
}

/// The next worker id from the shared counter (ids start at 1).
pub fn next_worker_id(stored: Option<&[u8]>) -> (Vec<u8>, u64) {
    let current = stored
        .and_then(|b| b.get(..8)?.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let next = current.wrapping_add(1).max(1);
    (next.to_le_bytes().to_vec(), next)
}

/// A generation as stored under [`DECISIONS_GENERATION_KEY`].
pub fn generation_of(stored: Option<&[u8]>) -> u64 {
    stored
        .and_then(|b| b.get(..8)?.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_leader_until_its_heartbeat_goes_stale() {
        let (write, leads) = lead(None, 1, 1_000, 3_000);
        assert!(leads);
        let stored = write.unwrap();
        assert_eq!(lead(Some(&stored), 2, 2_000, 3_000), (None, false));
        let (renewed, leads) = lead(Some(&stored), 1, 2_500, 3_000);
        assert!(leads);
        let stored = renewed.unwrap();
        assert!(!lead(Some(&stored), 2, 5_500, 3_000).1);
        let (taken, leads) = lead(Some(&stored), 2, 5_501, 3_000);
        assert!(leads);
        assert_eq!(heartbeat(taken.as_deref()), Some((2, 5_501)));
        // Garbage is no heartbeat.
        assert!(lead(Some(b"x"), 3, 0, 3_000).1);
    }

    #[test]
    fn answers_and_ids() {
        assert!(matches!(stream_answer(410, b""), StreamAnswer::Gone));
        assert!(matches!(stream_answer(304, b""), StreamAnswer::Unchanged));
        assert!(matches!(stream_answer(200, b"{}"), StreamAnswer::Failed(_)));
        assert!(matches!(
            stream_answer(200, br#"{"decisions":[],"cursor":"c1","more":false}"#),
            StreamAnswer::Page(p) if p.cursor == "c1"
        ));
        assert!(matches!(stream_answer(503, b""), StreamAnswer::Failed(_)));
        let (stored, id) = next_worker_id(None);
        assert_eq!(id, 1);
        assert_eq!(next_worker_id(Some(&stored)).1, 2);
        assert_eq!(generation_of(Some(&7u64.to_le_bytes())), 7);
        assert_eq!(generation_of(Some(b"abc")), 0);
    }
}
