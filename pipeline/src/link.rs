//! The edge's background link to the score cache, as pure steps an adapter drives from its
//! timer: which worker leads (a heartbeat in shared data), the decision-stream call and what
//! its answer means. The adapter owns the timer, the calls and shared data.

use signalbox_wire::DecisionPageV1;
pub use signalbox_wire::{CanaryV1, FleetReportV1};

use crate::config::ScoreCache;

/// Shared-data key of the leader's heartbeat (per plugin lineage: `signalbox.leader.<name>`).
pub const LEADER_KEY: &str = "signalbox.leader";
/// Shared-data key of the published decision set's blob.
pub const DECISIONS_KEY: &str = "signalbox.decisions";
/// Shared-data key of the published decision set's generation (8 bytes): what every worker
/// reads on each tick, so the blob is read only when it changed.
pub const DECISIONS_GENERATION_KEY: &str = "signalbox.decisions.generation";
/// Shared-data key of the last verified polled bundle (its bytes as the cache sent them).
pub const BUNDLE_KEY: &str = "signalbox.bundle";
/// Shared-data key of that bundle's revision (8 bytes), read on each tick.
pub const BUNDLE_REVISION_KEY: &str = "signalbox.bundle.revision";
/// The shared queue every worker puts its decision records on (`signalbox.records.<name>`);
/// the leader takes them off on its tick.
pub const RECORDS_QUEUE: &str = "signalbox.records";
/// Records per `POST /v1/decisions/log` (the cache takes at most 1,000).
pub const RECORDS_PER_BATCH: usize = 500;
/// Shared-data key of the verified canary bundle's bytes.
pub const CANARY_KEY: &str = "signalbox.canary";
/// Shared-data key of the canary's revision and percent (9 bytes; revision 0: none).
pub const CANARY_REVISION_KEY: &str = "signalbox.canary.revision";

/// The canary's `(revision, percent)` as stored (`(0, 0)`: none).
pub fn canary_of(stored: Option<&[u8]>) -> (u64, u8) {
    let revision = generation_of(stored);
    let percent = stored.and_then(|b| b.get(8).copied()).unwrap_or(0);
    (revision, percent.min(100))
}

/// The stored form of a canary's revision and percent.
pub fn canary_bytes(revision: u64, percent: u8) -> Vec<u8> {
    let mut b = revision.to_le_bytes().to_vec();
    b.push(percent.min(100));
    b
}

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
    let path = format!(
        "/v1/decisions/stream?since={}",
        crate::percent_encode(cursor)
    );
    call(cache, "GET", path, None, cache.decisions_poll_ms.max(1_000))
}

/// `GET /v1/bundle`, with `If-None-Match` when an ETag was seen.
pub fn bundle_call(cache: &ScoreCache, etag: Option<&str>) -> LinkCall {
    let mut c = call(cache, "GET", "/v1/bundle".to_owned(), None, 5_000);
    if let Some(tag) = etag {
        c.headers.push(("if-none-match".to_owned(), tag.to_owned()));
    }
    c
}

/// `POST /v1/fleet` with this edge's report.
pub fn fleet_call(cache: &ScoreCache, report: &FleetReportV1) -> LinkCall {
    let body = serde_json::to_vec(report).unwrap_or_default();
    call(cache, "POST", "/v1/fleet".to_owned(), Some(body), 5_000)
}

/// `POST /v1/rate` with an edge's rate-bucket counts (JSON `RateCountsV1`), within
/// `timeout_ms`: edge workers that share no memory have the score cache count for them.
pub fn rate_call(cache: &ScoreCache, body: Vec<u8>, timeout_ms: u32) -> LinkCall {
    call(cache, "POST", "/v1/rate".to_owned(), Some(body), timeout_ms)
}

/// `POST /v1/decisions/log` with `records` (each a JSON `DecisionRecordV1`).
pub fn log_call(cache: &ScoreCache, records: &[Vec<u8>]) -> LinkCall {
    let mut body = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 16);
    body.extend_from_slice(b"{\"records\":[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(r);
    }
    body.extend_from_slice(b"]}");
    call(
        cache,
        "POST",
        "/v1/decisions/log".to_owned(),
        Some(body),
        5_000,
    )
}

/// What a bundle poll's answer means.
#[derive(Debug)]
pub enum BundleAnswer {
    /// The envelope (stable, and a canary if one is rolling out) and its ETag.
    Envelope(signalbox_wire::BundleEnvelopeV1, Option<String>),
    /// `304`, or `404` (nothing pushed yet): keep what is served.
    Unchanged,
    /// No answer, a 5xx, or a body that is not an envelope.
    Failed(String),
}

/// Reads a bundle poll's answer.
pub fn bundle_answer(status: u32, body: &[u8], etag: Option<String>) -> BundleAnswer {
    match status {
        200 => match serde_json::from_slice(body) {
            Ok(envelope) => BundleAnswer::Envelope(envelope, etag),
            Err(e) => BundleAnswer::Failed(format!("not a bundle envelope: {e}")),
        },
        304 | 404 => BundleAnswer::Unchanged,
        0 => BundleAnswer::Failed("no answer".to_owned()),
        other => BundleAnswer::Failed(format!("status {other}")),
    }
}

/// A revision as stored under [`BUNDLE_REVISION_KEY`] (0: none).
pub fn revision_of(stored: Option<&[u8]>) -> u64 {
    generation_of(stored)
}

/// Milliseconds the edge's clock is ahead of the cache's, from the answer's `date` header
/// (an IMF-fixdate, second resolution); `None` when it does not parse.
pub fn clock_skew_ms(date: &str, now_ms: u64) -> Option<i64> {
    let cache_ms = imf_fixdate_seconds(date)?.checked_mul(1_000)?;
    Some(i64::try_from(now_ms).ok()? - i64::try_from(cache_ms).ok()?)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` as unix seconds.
fn imf_fixdate_seconds(text: &str) -> Option<u64> {
    let mut parts = text.split_ascii_whitespace().skip(1);
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::try_from(day).ok()? - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()?
        .checked_mul(86_400)?
        .checked_add(h * 3_600 + m * 60 + s)
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
    fn the_cache_clock_from_its_date_header() {
        // 2026-12-02T12:00:00Z = 1796212800.
        assert_eq!(
            imf_fixdate_seconds("Wed, 02 Dec 2026 12:00:00 GMT"),
            Some(1_796_212_800)
        );
        assert_eq!(
            imf_fixdate_seconds("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            clock_skew_ms("Wed, 02 Dec 2026 12:00:00 GMT", 1_796_212_800_250),
            Some(250)
        );
        assert_eq!(clock_skew_ms("yesterday", 0), None);
        assert!(matches!(
            bundle_answer(404, b"", None),
            BundleAnswer::Unchanged
        ));
        assert!(matches!(
            bundle_answer(200, b"[]", None),
            BundleAnswer::Failed(_)
        ));
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
