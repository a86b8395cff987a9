//! # signalbox-edge-worker
//!
//! Signalbox at CDN edges, without Envoy: the worker receives a request, runs the same
//! request pipeline as the Envoy filter (`signalbox-pipeline`), asks the score cache when the
//! pipeline wants context, and either answers itself (challenge, throttle, block, the verify
//! path) or forwards the request to origin with the same `x-signalbox-*` annotations.
//!
//! This module is host-independent: [`EdgeSettings`] reads the worker's settings from
//! environment-style variables and [`Worker`] drives the pipeline's steps, counting rate
//! buckets itself, so an adapter only performs the outbound calls ([`Next::Lookup`]) and
//! reads a verify body ([`Next::ReadBody`]). The adapters:
//!
//! - `wasi_http` (target `wasm32-wasip2`): a WASIp2 `wasi:http/proxy` component, served by
//!   Spin 3 and 4, SpinKube, wasmtime and jco alike (see `edge-worker/README.md`);
//! - `js` (target `wasm32-unknown-unknown`, wasm-bindgen): JSON plans for the JS module that
//!   does the fetches in Cloudflare Workers (workerd), Deno and other fetch-handler runtimes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use signalbox_pipeline::{
    BucketTake, Effects, LookupAnswer, LookupCall, Outcome, Pending, PendingVerify, Pipeline,
    Reply, Request, Step,
};

mod link;
use link::LinkState;
pub use link::{LinkCall, LinkKind, StoredPoll, StoredPollOutcome};
mod rates;

#[cfg(all(target_os = "wasi", target_env = "p2"))]
mod wasi_http;

#[cfg(all(target_os = "wasi", target_env = "p2", feature = "spin"))]
mod spin_host;

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub mod js;

/// The variable with the plugin configuration (JSON, the same schema as the Envoy filter's
/// `configuration`: bundle, trusted keys, client IP, origin headers, score cache).
pub const CONFIG_VAR: &str = "SIGNALBOX_CONFIG";
/// The variable with origin's base URL (`http://origin.internal:8080`).
pub const ORIGIN_URL_VAR: &str = "SIGNALBOX_ORIGIN_URL";
/// The variable with the score cache's base URL.
pub const CACHE_URL_VAR: &str = "SIGNALBOX_CACHE_URL";
/// The variable naming the header the runtime puts the client's address in.
pub const CLIENT_IP_HEADER_VAR: &str = "SIGNALBOX_CLIENT_IP_HEADER";
/// The variable with the path of a prepared bundle (`signalbox policy prepare`), read in
/// place of an inline `bundle`: the cheap start for hosts that make a fresh instance per
/// request. The WASI build reads it from the component's files (Spin's `files`, a host's
/// preopened directory); the JS build has no files (an isolate parses the inline bundle once).
pub const PREPARED_BUNDLE_VAR: &str = "SIGNALBOX_PREPARED_BUNDLE";
/// Spin's (and our test host's) client address header, the default.
pub const DEFAULT_CLIENT_IP_HEADER: &str = "spin-client-addr";

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded either way.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A base URL split into what an outbound request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// A path prefix without the trailing `/` (often empty).
    pub path: String,
}

impl BaseUrl {
    /// Parses `scheme://authority[/path]`; the error names the variable.
    pub fn parse(var: &str, text: &str) -> Result<BaseUrl, String> {
        let text = text.trim();
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{var}: not a URL (scheme://host[:port][/path])"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("{var}: scheme must be http or https"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', ' ', '?', '#']) {
            return Err(format!("{var}: bad host"));
        }
        Ok(BaseUrl {
            scheme,
            authority: authority.to_owned(),
            path: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// The worker's settings: the pipeline's, plus where origin and the cache are.
#[derive(Debug)]
pub struct EdgeSettings {
    /// The pipeline's settings (compiled bundle, secrets, client IP mode…).
    pub pipeline: signalbox_pipeline::Settings,
    /// Where passed requests go.
    pub origin: BaseUrl,
    /// The score cache, when the configuration has one.
    pub cache: Option<BaseUrl>,
    /// The header (lower case) the runtime puts the client's address in; removed before
    /// the request goes on.
    pub client_ip_header: String,
    /// The configuration as given, and every variable the settings read (secrets included,
    /// as the pipeline holds them anyway): what a bundle pushed by the score cache is loaded
    /// with, in place of the configured one.
    reload: Reload,
}

/// What the settings were read from, to load them again with a pushed bundle.
#[derive(Debug, Clone, Default)]
struct Reload {
    config_json: String,
    variables: std::collections::BTreeMap<String, String>,
    /// The bundle came from a prepared file (`SIGNALBOX_PREPARED_BUNDLE`), which a stored one
    /// can replace.
    prepared: bool,
}

impl EdgeSettings {
    /// Reads the settings through `env` (WASI environment variables, Spin variables, a JS
    /// worker's `env`) at `now` (unix seconds, for the bundle's validity). Errors name the
    /// variable or the configuration's field path, never a secret's value.
    pub fn from_env(env: impl Fn(&str) -> Option<String>, now: u64) -> Result<Self, String> {
        Self::from_env_with_pushed(env, now, None).map(|(settings, _)| settings)
    }

    /// [`EdgeSettings::from_env`] for a host that keeps a pushed bundle between fresh
    /// instances (the `spin` build's key-value store): `pushed`, a prepared bundle, serves in
    /// place of the `SIGNALBOX_PREPARED_BUNDLE` file when its revision is higher and it loads;
    /// otherwise the file serves. Never a revision below the file's. The second value says
    /// what became of `pushed`.
    pub fn from_env_with_pushed(
        env: impl Fn(&str) -> Option<String>,
        now: u64,
        pushed: Option<&[u8]>,
    ) -> Result<(Self, PushedBundle), String> {
        let mut outcome = PushedBundle::None;
        let read = RefCell::new(std::collections::BTreeMap::new());
        let env = |name: &str| {
            let value = env(name);
            if let (Some(v), Ok(mut read)) = (&value, read.try_borrow_mut()) {
                read.insert(name.to_owned(), v.clone());
            }
            value
        };
        let config = env(CONFIG_VAR).ok_or_else(|| format!("{CONFIG_VAR} is not set"))?;
        let prepared_path = env(PREPARED_BUNDLE_VAR).filter(|p| !p.trim().is_empty());
        let prepared = prepared_path.is_some();
        let pipeline = match prepared_path {
            Some(path) => {
                let path = path.trim();
                let mut from_pushed = None;
                if let Some(pushed) = pushed {
                    let packaged = packaged_revision(path)?;
                    match signalbox_policy::prepared::prepared_revision(pushed) {
                        Some(revision) if revision > packaged => {
                            match signalbox_pipeline::config::parse_with_prepared(
                                config.as_bytes(),
                                pushed,
                                now,
                                env,
                            ) {
                                Ok(settings) => {
                                    outcome = PushedBundle::Served(revision);
                                    from_pushed = Some(settings);
                                }
                                Err(e) => outcome = PushedBundle::Refused(e.0),
                            }
                        }
                        Some(revision) => outcome = PushedBundle::NotAbove(revision, packaged),
                        None => {
                            outcome = PushedBundle::Refused("not a prepared bundle".to_owned());
                        }
                    }
                }
                match from_pushed {
                    Some(settings) => Ok(settings),
                    None => {
                        let prepared = std::fs::read(path).map_err(|e| {
                            format!("{PREPARED_BUNDLE_VAR}: cannot read {path}: {e}")
                        })?;
                        signalbox_pipeline::config::parse_with_prepared(
                            config.as_bytes(),
                            &prepared,
                            now,
                            env,
                        )
                    }
                }
            }
            None => signalbox_pipeline::config::parse(config.as_bytes(), now, env),
        }
        .map_err(|e| format!("{CONFIG_VAR}: {e}"))?;
        let origin = BaseUrl::parse(
            ORIGIN_URL_VAR,
            &env(ORIGIN_URL_VAR).ok_or_else(|| format!("{ORIGIN_URL_VAR} is not set"))?,
        )?;
        let cache = match (&pipeline.score_cache, env(CACHE_URL_VAR)) {
            (Some(_), Some(url)) => Some(BaseUrl::parse(CACHE_URL_VAR, &url)?),
            (Some(_), None) => {
                return Err(format!(
                    "{CACHE_URL_VAR} is not set, and the configuration has a score_cache"
                ));
            }
            (None, _) => None,
        };
        let client_ip_header = env(CLIENT_IP_HEADER_VAR)
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_CLIENT_IP_HEADER.to_owned());
        let reload = Reload {
            config_json: config,
            variables: read.into_inner(),
            prepared,
        };
        Ok((
            EdgeSettings {
                pipeline,
                origin,
                cache,
                client_ip_header,
                reload,
            },
            outcome,
        ))
    }
}

/// What became of a pushed bundle offered to [`EdgeSettings::from_env_with_pushed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushedBundle {
    /// None was offered, or the configuration loads no prepared file (nothing to replace).
    None,
    /// It serves: its revision.
    Served(u64),
    /// Its revision (first) is not above the packaged file's (second): the file serves (a
    /// newer one was deployed since the push).
    NotAbove(u64, u64),
    /// It did not load (why); the file serves.
    Refused(String),
}

/// The revision in the header of the prepared bundle at `path` (only the first bytes are
/// read: the whole file is read once, by the bundle that serves).
fn packaged_revision(path: &str) -> Result<u64, String> {
    use std::io::Read;
    let mut head = [0u8; 32];
    let mut file = std::fs::File::open(path)
        .map_err(|e| format!("{PREPARED_BUNDLE_VAR}: cannot read {path}: {e}"))?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(head.get_mut(filled..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(format!("{PREPARED_BUNDLE_VAR}: cannot read {path}: {e}")),
        }
    }
    signalbox_policy::prepared::prepared_revision(head.get(..filled).unwrap_or_default())
        .ok_or_else(|| {
            format!(
                "{PREPARED_BUNDLE_VAR}: {path} is not a prepared bundle (signalbox policy prepare)"
            )
        })
}

/// What the adapter does next.
#[derive(Debug)]
pub enum Next {
    /// Forward the request to origin: remove `effects.strip_request_headers`, set
    /// `effects.set_request_headers`; on the way back remove origin's `x-signalbox-*` headers
    /// and add `effects.response_header`.
    Forward(Effects),
    /// Answer with this reply; the request never reaches origin.
    Respond(Reply, Effects),
    /// Call the score cache (`url` + the call's headers, within `call.timeout_ms`, enforced by
    /// the adapter), then [`Worker::resume_lookup`] with the answer or `None`.
    Lookup {
        /// The call.
        call: LookupCall,
        /// Its full URL.
        url: String,
        /// What to resume.
        pending: Resume<Pending>,
        /// Effects so far.
        effects: Effects,
    },
    /// Read the whole request body (at most [`signalbox_pipeline::verify::MAX_VERIFY_BODY`]
    /// bytes, else pass `None`), then [`Worker::resume_body`].
    ReadBody(Resume<PendingVerify>, Effects),
    /// Report this request to the score cache's rate counts (a fresh instance per request,
    /// [`RateCounting::PerRequest`]): make `call` within its timeout, then
    /// [`Worker::resume_rates`] with the answer (status 0: none).
    CountRates {
        /// The call (`POST /v1/rate` with its body).
        call: LinkCall,
        /// The buckets the request takes from (hand them back).
        takes: Vec<BucketTake>,
        /// What to resume.
        pending: Resume<Pending>,
        /// Effects so far.
        effects: Effects,
    },
}

/// How an instance has its rate buckets counted when a score cache is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateCounting {
    /// The instance serves many requests: it decides from the cache's last totals plus its
    /// own unreported requests, and reports them in the background ([`Worker::link_calls`]).
    #[default]
    Background,
    /// Each instance serves one request: it reports that request and decides from the
    /// answer ([`Next::CountRates`]).
    PerRequest,
}

/// A paused request: it resumes on the pipeline it started on, even when a pushed bundle
/// replaced that pipeline meanwhile.
#[derive(Debug)]
pub struct Resume<T> {
    pipeline: Rc<Pipeline>,
    state: T,
}

impl<T> Resume<T> {
    fn on(pipeline: &Rc<Pipeline>, state: T) -> Self {
        Resume {
            pipeline: pipeline.clone(),
            state,
        }
    }
}

/// One pipeline per instance, with its rate buckets and its link to the score cache.
#[derive(Debug)]
pub struct Worker {
    /// The pipeline serving new requests (a pushed bundle replaces it).
    pipeline: RefCell<Rc<Pipeline>>,
    origin: BaseUrl,
    cache: Option<BaseUrl>,
    client_ip_header: String,
    /// Rate-bucket slots of this instance (bounded by `rate_limit_slots`: slot keys come from
    /// that keyspace).
    buckets: RefCell<HashMap<String, Vec<u8>>>,
    reload: Reload,
    link: RefCell<LinkState>,
    /// Rate buckets counted by the score cache (when one is configured).
    fleet_buckets: RefCell<rates::FleetBuckets>,
    rate_counting: std::cell::Cell<RateCounting>,
}

impl Worker {
    /// A worker over its settings.
    pub fn new(settings: EdgeSettings) -> Self {
        Worker {
            pipeline: RefCell::new(Rc::new(Pipeline::new(settings.pipeline))),
            origin: settings.origin,
            cache: settings.cache,
            client_ip_header: settings.client_ip_header,
            buckets: RefCell::new(HashMap::new()),
            reload: settings.reload,
            link: RefCell::new(LinkState::default()),
            fleet_buckets: RefCell::new(rates::FleetBuckets::default()),
            rate_counting: std::cell::Cell::new(RateCounting::Background),
        }
    }

    /// How rate buckets are counted with a score cache (the WASI component, whose hosts make
    /// a fresh instance per request, sets [`RateCounting::PerRequest`]).
    pub fn set_rate_counting(&self, counting: RateCounting) {
        self.rate_counting.set(counting);
    }

    /// Whether the score cache counts this worker's rate buckets (it is configured, with a URL).
    fn fleet_counted(&self, pipeline: &Pipeline) -> bool {
        self.cache.is_some() && pipeline.settings().score_cache.is_some()
    }

    /// The cache answered a [`Next::CountRates`] report (`status` 0: it did not).
    pub fn resume_rates(
        &self,
        effects: Effects,
        pending: Resume<Pending>,
        takes: &[BucketTake],
        status: u16,
        body: &[u8],
        now_nanos: u128,
    ) -> Next {
        let now_ms = u64::try_from(now_nanos / 1_000_000).unwrap_or(0);
        let refused = self.fleet_buckets.try_borrow_mut().ok().and_then(|mut f| {
            f.answer(status, body);
            f.over(takes, now_ms)
        });
        let Resume { pipeline, state } = pending;
        let outcome = pipeline.resume_buckets(state, refused, now_nanos);
        self.settle(&pipeline, effects, outcome, now_nanos)
    }

    /// The pipeline serving new requests (for its load logs and settings).
    pub fn pipeline(&self) -> Rc<Pipeline> {
        self.pipeline.borrow().clone()
    }

    /// Origin's base URL.
    pub fn origin(&self) -> &BaseUrl {
        &self.origin
    }

    /// The header the runtime puts the client's address in.
    pub fn client_ip_header(&self) -> &str {
        &self.client_ip_header
    }

    /// A request's headers arrived. `headers` are the request's (lower-case names) plus the
    /// pseudo-headers `:method`, `:path`, `:authority`, `:scheme`; the client's address is read
    /// from the runtime's header and that header is dropped.
    pub fn start(&self, mut headers: signalbox_pipeline::Headers, now_nanos: u128) -> Next {
        let source = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&self.client_ip_header))
            .and_then(|(_, v)| signalbox_pipeline::request::parse_source_address(v));
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&self.client_ip_header));
        let pipeline = self.pipeline();
        let outcome = pipeline.start(
            Request {
                headers,
                source,
                route_name: None,
                end_of_stream: false,
            },
            now_nanos,
        );
        let mut effects = Effects::default();
        effects
            .strip_request_headers
            .push(self.client_ip_header.clone());
        self.settle(&pipeline, effects, outcome, now_nanos)
    }

    /// The score cache answered (`None`: failed, timed out, or no cache).
    pub fn resume_lookup(
        &self,
        effects: Effects,
        pending: Resume<Pending>,
        answer: Option<LookupAnswer>,
        now_nanos: u128,
    ) -> Next {
        let Resume { pipeline, state } = pending;
        let outcome = pipeline.resume_lookup(state, answer, now_nanos);
        self.settle(&pipeline, effects, outcome, now_nanos)
    }

    /// A verify request's body (`None`: larger than allowed).
    pub fn resume_body(
        &self,
        effects: Effects,
        verify: &Resume<PendingVerify>,
        body: Option<Vec<u8>>,
        now_nanos: u128,
    ) -> Next {
        let size = body
            .as_ref()
            .map_or(signalbox_pipeline::verify::MAX_VERIFY_BODY + 1, Vec::len);
        let pipeline = verify.pipeline.clone();
        let outcome = pipeline.on_body(&verify.state, size, true, || body.unwrap_or_default());
        match outcome {
            Some(outcome) => self.settle(&pipeline, effects, outcome, now_nanos),
            // Never: the whole body was given.
            None => Next::Respond(
                signalbox_pipeline::verify::verify_refused_reply(None),
                effects,
            ),
        }
    }

    /// Runs the steps the worker does itself (rate buckets) until one needs the adapter.
    fn settle(
        &self,
        pipeline: &Rc<Pipeline>,
        mut effects: Effects,
        mut outcome: Outcome,
        now_nanos: u128,
    ) -> Next {
        loop {
            merge(&mut effects, std::mem::take(&mut outcome.effects));
            match outcome.step {
                Step::Forward => {
                    self.keep_records(pipeline, std::mem::take(&mut effects.records));
                    return Next::Forward(effects);
                }
                Step::Respond(reply) => {
                    self.keep_records(pipeline, std::mem::take(&mut effects.records));
                    return Next::Respond(reply, effects);
                }
                Step::ReadBody(verify) => {
                    return Next::ReadBody(Resume::on(pipeline, verify), effects);
                }
                Step::Lookup(call, pending) => {
                    let Some(cache) = &self.cache else {
                        outcome = pipeline.resume_lookup(pending, None, now_nanos);
                        continue;
                    };
                    let url = format!(
                        "{}://{}{}{}",
                        cache.scheme,
                        cache.authority,
                        cache.path,
                        call.key()
                    );
                    return Next::Lookup {
                        call,
                        url,
                        pending: Resume::on(pipeline, pending),
                        effects,
                    };
                }
                Step::TakeBuckets(takes, pending) => {
                    let now_ms = u64::try_from(now_nanos / 1_000_000).unwrap_or(0);
                    if !self.fleet_counted(pipeline) {
                        let refused = self.take_buckets(&takes, now_ms);
                        outcome = pipeline.resume_buckets(pending, refused, now_nanos);
                        continue;
                    }
                    let max =
                        usize::try_from(pipeline.settings().rate_limit_slots).unwrap_or(usize::MAX);
                    let Ok(mut fleet) = self.fleet_buckets.try_borrow_mut() else {
                        outcome = pipeline.resume_buckets(pending, None, now_nanos);
                        continue;
                    };
                    let refused = fleet.take(&takes, now_ms, max);
                    if self.rate_counting.get() == RateCounting::PerRequest
                        && refused.is_none()
                        && let Some(body) = fleet.report(now_ms, true)
                        && let Some(call) = self.rate_call(pipeline, body)
                    {
                        return Next::CountRates {
                            call,
                            takes,
                            pending: Resume::on(pipeline, pending),
                            effects,
                        };
                    }
                    drop(fleet);
                    outcome = pipeline.resume_buckets(pending, refused, now_nanos);
                }
            }
        }
    }

    /// One token from each bucket of this instance: the longest `retry-after` of the refusals.
    fn take_buckets(&self, takes: &[BucketTake], now_ms: u64) -> Option<u32> {
        let Ok(mut buckets) = self.buckets.try_borrow_mut() else {
            return None;
        };
        let mut refused: Option<u32> = None;
        for take in takes {
            let (state, retry) = take.apply(buckets.get(&take.slot).map(Vec::as_slice), now_ms);
            buckets.insert(take.slot.clone(), state);
            if let Some(r) = retry {
                refused = Some(refused.map_or(r, |m| m.max(r)));
            }
        }
        refused
    }
}

/// Adds a later step's effects to the earlier ones.
fn merge(into: &mut Effects, from: Effects) {
    into.strip_request_headers
        .extend(from.strip_request_headers);
    into.set_request_headers.extend(from.set_request_headers);
    if from.response_header.is_some() {
        into.response_header = from.response_header;
    }
    if from.verdict_summary.is_some() {
        into.verdict_summary = from.verdict_summary;
    }
    into.events.extend(from.events);
    into.logs.extend(from.logs);
    into.records.extend(from.records);
}

/// Whether a request header goes on to origin: not hop-by-hop, not `host` (the outbound
/// request's authority is origin's), not stripped by the pipeline.
pub fn forwards_request_header(name: &str, effects: &Effects) -> bool {
    let lower = name.to_ascii_lowercase();
    !lower.starts_with(':')
        && lower != "host"
        && !HOP_BY_HOP.contains(&lower.as_str())
        && !effects
            .strip_request_headers
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&lower))
        && !effects
            .set_request_headers
            .iter()
            .any(|(s, _)| s.eq_ignore_ascii_case(&lower))
}

/// Whether a response header from origin goes on to the client: not hop-by-hop and never one
/// of ours (origin must not echo them: no scoring oracle).
pub fn forwards_response_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !HOP_BY_HOP.contains(&lower.as_str()) && !lower.starts_with(signalbox_pipeline::request::PREFIX)
}

#[cfg(test)]
mod tests;
