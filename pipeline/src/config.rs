//! The plugin configuration (JSON in Envoy's `configuration` field), validated into the
//! settings a worker runs with. Secrets never come from here: `/config_dump` shows the plugin
//! configuration, so challenge and clearance secrets come from VM environment variables
//! (`vm_config.environment_variables`).

use serde::Deserialize;
use signalbox_policy::signing::{LoadContext, TrustedKeys, load_bundle};
use signalbox_policy::trust::HmacKeys;
use signalbox_policy::{EdgeHeaderNames, Policy};

/// Plugin configuration, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfigV1 {
    /// A signed envelope (`{"kid","payload","sig"}`), or — with `allow_unsigned` — a bundle.
    /// Required, except where the adapter loads a prepared bundle instead
    /// ([`parse_with_prepared`]).
    #[serde(default)]
    pub bundle: Option<Box<serde_json::value::RawValue>>,
    /// Trusted public keys.
    #[serde(default)]
    pub trusted_keys: Vec<TrustedKeyV1>,
    /// Accept an unsigned bundle (off by default; for local development).
    #[serde(default)]
    pub allow_unsigned: bool,
    /// How the client IP is found.
    #[serde(default)]
    pub client_ip: ClientIpV1,
    /// Headers a trusted edge in front of Envoy sets.
    #[serde(default)]
    pub edge_headers: EdgeHeadersV1,
    /// Which `x-signalbox-*` headers go to origin.
    #[serde(default)]
    pub origin_headers: OriginHeadersV1,
    /// Put the whole verdict on every reply as `x-signalbox-verdict` (tests only).
    #[serde(default)]
    pub debug_verdict_header: bool,
    /// Envoy route names (`route.name`) whose requests are sensitive, on top of the bundle's
    /// `routes` (sensitive routes ask the score cache and may raise the action).
    #[serde(default)]
    pub sensitive_route_names: Vec<String>,
    /// Environment variable with the current challenge/clearance secret, `kid:base64`.
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
    /// Environment variable with the previous secret (rotation), `kid:base64`.
    #[serde(default = "default_previous_secret_env")]
    pub previous_secret_env: String,
    /// Decision-log lines per second per worker (non-pass verdicts).
    #[serde(default = "default_log_rate")]
    pub decision_log_per_second: u32,
    /// Rate-bucket slots in shared data (the keyspace bound).
    #[serde(default = "default_slots")]
    pub rate_limit_slots: u32,
    /// The score cache, as an upstream the host can call; absent: none (every lookup the
    /// bundle wants is unavailable, and a fail-closed bundle is refused).
    #[serde(default)]
    pub score_cache: Option<ScoreCacheV1>,
    /// Where the user and device keys come from, and whether they are hashed.
    #[serde(default)]
    pub subjects: SubjectsV1,
}

/// Where the subjects come from, for every adapter.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct SubjectsV1 {
    /// A signed user cookie: its value is `<user key>.<base64url HMAC-SHA256(secret, user
    /// key)>`, set by origin at login. Read when no trusted edge header gives the user.
    #[serde(default)]
    pub user_cookie: Option<SignedCookieV1>,
    /// A cookie whose value is the device key (first 128 bytes; an origin-set device id).
    #[serde(default)]
    pub device_cookie: Option<String>,
    /// VM environment variable with a secret (32+ bytes, base64): when set, user and device
    /// keys are replaced by a keyed hash before they leave the edge (score-cache calls, rate
    /// keys, logs), so the cache never learns them.
    #[serde(default)]
    pub privacy_key_env: Option<String>,
}

/// A signed cookie's name and the VM environment variable holding its secret.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SignedCookieV1 {
    /// Cookie name.
    pub name: String,
    /// VM environment variable with the HMAC secret (base64, 32+ bytes).
    pub secret_env: String,
}

/// The subjects configuration as a worker uses it.
#[derive(Clone, Default)]
pub struct Subjects {
    /// Signed user cookie: name and secret.
    pub user_cookie: Option<(String, Vec<u8>)>,
    /// Device cookie name.
    pub device_cookie: Option<String>,
    /// The privacy key, when keys are hashed.
    pub privacy_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Subjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subjects")
            .field(
                "user_cookie",
                &self.user_cookie.as_ref().map(|(name, _)| name),
            )
            .field("device_cookie", &self.device_cookie)
            .field("privacy", &self.privacy_key.is_some())
            .finish()
    }
}

/// Where the score cache is.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ScoreCacheV1 {
    /// The host's upstream cluster for it (an Envoy cluster name).
    pub cluster: String,
    /// `:authority` of the calls.
    #[serde(default = "default_cache_authority")]
    pub authority: String,
    /// VM environment variable holding its bearer token (absent: calls carry none).
    #[serde(default = "default_cache_token_env")]
    pub token_env: String,
    /// How often one worker per process follows `GET /v1/decisions/stream`, milliseconds
    /// (each poll jittered by up to a tenth); every worker picks up a new set within a
    /// quarter of this. 0: no local copy of the decisions (lookups still carry them).
    #[serde(default = "default_decisions_poll_ms")]
    pub decisions_poll_ms: u32,
    /// How often the same worker polls `GET /v1/bundle` (with `If-None-Match`) and reports to
    /// `/v1/fleet`, milliseconds. 0: no polling; the inline bundle serves alone.
    #[serde(default = "default_bundle_poll_ms")]
    pub bundle_poll_ms: u32,
    /// This edge's name in `/v1/fleet` (default: the `SIGNALBOX_NODE_ID` VM environment
    /// variable, else `envoy`); the plugin's name is appended.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Shipping verdict records to the cache's decision log.
    #[serde(default)]
    pub decision_log: DecisionLogV1,
    /// VM environment variable with the fleet's canary secret (any length): the keyed hash
    /// that puts a client in or out of a canary. Every edge of a fleet must share it. Unset: a
    /// built-in constant (clients are still stable; who is in is then predictable).
    #[serde(default = "default_canary_key_env")]
    pub canary_key_env: String,
}

fn default_canary_key_env() -> String {
    "SIGNALBOX_CANARY_KEY".to_owned()
}

/// The canary secret when none is configured.
pub const DEFAULT_CANARY_SECRET: &[u8] = b"signalbox canary buckets";

/// Verdict records shipped to `POST /v1/decisions/log`: every non-pass verdict and a sample
/// of passes, in batches, from a bounded buffer (the oldest records go first when the cache
/// is away, counted in `signalbox.decision_log.dropped`).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogV1 {
    /// VM environment variable with the key (base64, 32+ bytes) that hashes addresses and
    /// user and device keys in records. Unset: no records are shipped (never raw addresses).
    #[serde(default = "default_record_key_env")]
    pub key_env: String,
    /// Percent of passed requests recorded too, 0..=100.
    #[serde(default = "default_pass_sample")]
    pub pass_sample_percent: u8,
    /// How often the buffer is shipped, milliseconds.
    #[serde(default = "default_log_flush_ms")]
    pub flush_ms: u32,
    /// Records buffered at most while the cache is away.
    #[serde(default = "default_log_buffer")]
    pub max_buffered: u32,
}

impl Default for DecisionLogV1 {
    fn default() -> Self {
        DecisionLogV1 {
            key_env: default_record_key_env(),
            pass_sample_percent: default_pass_sample(),
            flush_ms: default_log_flush_ms(),
            max_buffered: default_log_buffer(),
        }
    }
}

fn default_record_key_env() -> String {
    "SIGNALBOX_RECORD_KEY".to_owned()
}
fn default_pass_sample() -> u8 {
    1
}
fn default_log_flush_ms() -> u32 {
    2_000
}
fn default_log_buffer() -> u32 {
    10_000
}

/// Decision-log shipping as a worker runs it.
#[derive(Clone)]
pub struct DecisionLog {
    /// The records' hash key.
    pub key: Vec<u8>,
    /// Percent of passes recorded.
    pub pass_sample_percent: u8,
    /// Flush interval, milliseconds.
    pub flush_ms: u32,
    /// Buffer bound, records.
    pub max_buffered: u32,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("pass_sample_percent", &self.pass_sample_percent)
            .field("flush_ms", &self.flush_ms)
            .field("max_buffered", &self.max_buffered)
            .finish_non_exhaustive()
    }
}

fn default_decisions_poll_ms() -> u32 {
    1_000
}

fn default_bundle_poll_ms() -> u32 {
    10_000
}

fn default_cache_authority() -> String {
    "signalbox-cache".to_owned()
}

fn default_cache_token_env() -> String {
    "SIGNALBOX_CACHE_TOKEN".to_owned()
}

/// The score cache as a worker calls it.
#[derive(Clone)]
pub struct ScoreCache {
    /// Cluster name.
    pub cluster: String,
    /// `:authority`.
    pub authority: String,
    /// Bearer token, if configured (never logged: `Debug` leaves it out).
    pub token: Option<String>,
    /// Decision stream poll interval, milliseconds (0: off).
    pub decisions_poll_ms: u32,
    /// Bundle poll interval, milliseconds (0: off).
    pub bundle_poll_ms: u32,
    /// The node id for fleet reports.
    pub node_id: String,
    /// Decision-log shipping (`None`: no record key configured).
    pub decision_log: Option<DecisionLog>,
    /// The fleet's canary secret.
    pub canary_secret: Vec<u8>,
}

impl std::fmt::Debug for ScoreCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoreCache")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("decisions_poll_ms", &self.decisions_poll_ms)
            .field("bundle_poll_ms", &self.bundle_poll_ms)
            .field("node_id", &self.node_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn default_secret_env() -> String {
    "SIGNALBOX_SECRET".to_owned()
}
fn default_previous_secret_env() -> String {
    "SIGNALBOX_SECRET_PREVIOUS".to_owned()
}
fn default_log_rate() -> u32 {
    10
}
fn default_slots() -> u32 {
    16_384
}

/// A trusted bundle-signing key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyV1 {
    /// Key id.
    pub kid: String,
    /// Base64 Ed25519 public key.
    pub public: String,
}

/// Client IP resolution.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientIpV1 {
    /// `source_address` (default: what Envoy's connection manager decided, with its
    /// `use_remote_address` / `xff_num_trusted_hops`) or `x_forwarded_for`.
    #[serde(default)]
    pub mode: ClientIpMode,
    /// With `x_forwarded_for`: how many proxies in front of Envoy append to the header.
    #[serde(default)]
    pub trusted_hops: u32,
}

/// Where the client IP comes from.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientIpMode {
    /// `source.address` as Envoy reports it.
    #[default]
    SourceAddress,
    /// `x-forwarded-for`, read right to left, skipping `trusted_hops` entries.
    XForwardedFor,
}

/// Headers an edge in front of Envoy (CDN, load balancer, an auth filter) sets. Envoy's
/// plugin configuration is per listener (filter chain): set `trusted: true` only on a listener
/// whose every request arrives through the edge that sets (and overwrites) these headers, and
/// `trusted: false` everywhere else, where the named headers are stripped from requests so
/// neither Signalbox nor origin reads a client's copy. Once Envoy has applied
/// `x-forwarded-for` the filter no longer sees the direct peer, so this cannot be checked per
/// request: it is configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeHeadersV1 {
    /// Whether requests on this listener arrive through the edge that sets these headers.
    /// Required when any name is set.
    pub trusted: Option<bool>,
    /// Country header.
    pub country: Option<String>,
    /// ASN header.
    pub asn: Option<String>,
    /// TLS fingerprint header.
    pub tls_fingerprint: Option<String>,
    /// Trusted user id header (set by an auth layer before us; stripped if the client sent it
    /// only when it is an `x-signalbox-*` name).
    pub user: Option<String>,
}

/// Opt-in origin headers. Decision, level and request id always go.
#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct OriginHeadersV1 {
    /// `x-signalbox-score`.
    #[serde(default)]
    pub score: bool,
    /// `x-signalbox-reasons`.
    #[serde(default)]
    pub reasons: bool,
    /// `x-signalbox-client-ip`: the client IP the filter resolved (`client_ip`), as text.
    #[serde(default)]
    pub client_ip: bool,
}

/// What a worker runs with.
#[derive(Debug)]
pub struct Settings {
    /// The compiled bundle.
    pub policy: Policy,
    /// Edge header names read on this listener (all empty unless `edge_headers.trusted`).
    pub edge: EdgeHeaderNames,
    /// Edge header names stripped from requests (configured but not trusted here).
    pub untrusted_edge_headers: Vec<String>,
    /// Client IP resolution.
    pub client_ip: ClientIpV1,
    /// Opt-in origin headers.
    pub origin_headers: OriginHeadersV1,
    /// Whole verdict on replies.
    pub debug_verdict_header: bool,
    /// Envoy route names that are sensitive.
    pub sensitive_route_names: Vec<String>,
    /// Challenge/clearance secrets, if configured (without them no challenge can be served:
    /// challenge decisions fall back to block).
    pub keys: Option<HmacKeys>,
    /// Decision-log lines per second.
    pub decision_log_per_second: u32,
    /// Rate-bucket slots.
    pub rate_limit_slots: u32,
    /// The score cache, if configured.
    pub score_cache: Option<ScoreCache>,
    /// Where the user and device keys come from.
    pub subjects: Subjects,
}

/// Why a configuration was refused. Messages name fields, never values of secrets.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses and validates the plugin configuration. `env` looks up a VM environment variable.
pub fn parse(
    json: &[u8],
    now: u64,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    parse_with_bundle(json, None, now, env)
}

/// A bundle that replaces the configuration's inline one (polled from the score cache), and
/// the revision it must be above.
#[derive(Debug, Clone, Copy)]
pub struct Replacement<'a> {
    /// The bundle's bytes (a signed envelope, or a bundle when `allow_unsigned`).
    pub bundle: &'a [u8],
    /// The revision served now: the replacement must be higher.
    pub above_revision: u64,
}

/// [`parse`], with the inline bundle replaced: the same keys, `allow_unsigned` and checks
/// apply, and a revision not above `above_revision` is refused.
pub fn parse_with_bundle(
    json: &[u8],
    replacement: Option<Replacement<'_>>,
    now: u64,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let source = match replacement {
        Some(r) => BundleSource::Replacement(r),
        None => BundleSource::Inline,
    };
    parse_from(json, source, now, env)
}

/// [`parse`] for an adapter that loads a prepared bundle (`signalbox policy prepare`;
/// `signalbox_policy::prepared`) instead of an inline one: the configuration must not carry a
/// `bundle`, and the prepared one must be signed with one of its `trusted_keys` (or unsigned
/// with `allow_unsigned`).
pub fn parse_with_prepared(
    json: &[u8],
    prepared: &[u8],
    now: u64,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    parse_from(json, BundleSource::Prepared(prepared), now, env)
}

/// The plugin configuration and the bundle-signing keys it trusts; errors name the field path.
fn config_and_keys(json: &[u8]) -> Result<(PluginConfigV1, TrustedKeys), ConfigError> {
    let config: PluginConfigV1 = signalbox_policy::json::from_slice_with_path(json)
        .map_err(|e| ConfigError(format!("{}: {}", e.path, e.message)))?;
    let keys = TrustedKeys::from_base64(
        config
            .trusted_keys
            .iter()
            .map(|k| (k.kid.as_str(), k.public.as_str())),
    )
    .map_err(|e| ConfigError(format!("trusted_keys: {e}")))?;
    Ok((config, keys))
}

/// A pushed bundle (a signed envelope, or plain JSON with `allow_unsigned`) verified with the
/// configuration's keys and turned into its prepared form, for a host that keeps it between
/// fresh instances (Spin's key-value store): `Ok(None)` when it is the revision serving now,
/// its revision and prepared bytes when above, an error (a lower revision, a bad signature, an
/// unknown key, expiry…) otherwise.
pub fn prepare_replacement(
    json: &[u8],
    replacement: Replacement<'_>,
    now: u64,
) -> Result<Option<(u64, Vec<u8>)>, ConfigError> {
    let (config, keys) = config_and_keys(json)?;
    let ctx = LoadContext {
        now,
        active_revision: Some(replacement.above_revision),
        allow_unsigned: config.allow_unsigned,
    };
    let prepared = signalbox_policy::prepared::prepare(replacement.bundle, &keys, &ctx)
        .map_err(|e| ConfigError(format!("bundle: {e}")))?;
    match signalbox_policy::prepared::prepared_revision(&prepared) {
        Some(revision) if revision > replacement.above_revision => Ok(Some((revision, prepared))),
        Some(_) => Ok(None),
        None => Err(ConfigError(
            "bundle: its prepared form has no revision".to_owned(),
        )),
    }
}

/// Where the bundle a configuration serves comes from.
#[derive(Debug, Clone, Copy)]
enum BundleSource<'a> {
    /// The configuration's `bundle`.
    Inline,
    /// A polled bundle in its place.
    Replacement(Replacement<'a>),
    /// A prepared bundle; the configuration has none.
    Prepared(&'a [u8]),
}

/// [`parse_with_bundle`] for a polled bundle, with its outcome typed: `Ok(None)` when it is the
/// revision serving now (nothing to do), the settings when above, an error otherwise (a lower
/// revision, a bad signature, an unknown key…).
pub fn parse_replacement(
    json: &[u8],
    replacement: Replacement<'_>,
    now: u64,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Settings>, ConfigError> {
    let settings = settings_from(json, BundleSource::Replacement(replacement), now, env)?;
    let revision = settings.policy.revision();
    if revision == replacement.above_revision {
        return Ok(None);
    }
    not_above(revision, replacement.above_revision)?;
    Ok(Some(settings))
}

/// A replacement must be above the revision serving.
fn not_above(revision: u64, active: u64) -> Result<(), ConfigError> {
    if revision <= active {
        return Err(ConfigError(format!(
            "bundle: revision {revision} is not above the active revision {active}"
        )));
    }
    Ok(())
}

fn parse_from(
    json: &[u8],
    source: BundleSource<'_>,
    now: u64,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let settings = settings_from(json, source, now, env)?;
    if let BundleSource::Replacement(r) = source {
        not_above(settings.policy.revision(), r.above_revision)?;
    }
    Ok(settings)
}

/// The settings from a configuration and its bundle, before any revision comparison.
fn settings_from(
    json: &[u8],
    source: BundleSource<'_>,
    now: u64,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let replacement = match source {
        BundleSource::Replacement(r) => Some(r),
        BundleSource::Inline | BundleSource::Prepared(_) => None,
    };
    let (config, keys) = config_and_keys(json)?;
    let ctx = LoadContext {
        now,
        active_revision: replacement.map(|r| r.above_revision),
        allow_unsigned: config.allow_unsigned,
    };
    let policy = match (source, &config.bundle) {
        (BundleSource::Prepared(bytes), None) => {
            signalbox_policy::prepared::load_prepared(bytes, &keys, &ctx)
                .map(|p| p.policy)
                .map_err(|e| ConfigError(format!("prepared bundle: {e}")))?
        }
        (BundleSource::Prepared(_), Some(_)) => {
            return Err(ConfigError(
                "bundle: this worker loads a prepared bundle; leave `bundle` out of the \
                 configuration (one bundle, one place)"
                    .to_owned(),
            ));
        }
        (BundleSource::Replacement(r), _) => {
            load_bundle(r.bundle, &keys, &ctx).map_err(|e| ConfigError(format!("bundle: {e}")))?
        }
        // The bundle's bytes as they came (no JSON tree of its lists is ever built: the
        // plugin configuration can carry megabytes of them).
        (BundleSource::Inline, Some(inline)) => load_bundle(inline.get().as_bytes(), &keys, &ctx)
            .map_err(|e| ConfigError(format!("bundle: {e}")))?,
        (BundleSource::Inline, None) => {
            return Err(ConfigError("bundle: missing field `bundle`".to_owned()));
        }
    };
    if policy.requires_score_cache() && config.score_cache.is_none() {
        return Err(ConfigError(
            "bundle: cache.on_unavailable is fail_closed, but this filter has no score cache \
             configured: every request the bundle wants context for would be raised to the \
             fail-closed action. Set cache.on_unavailable: fail_open in the bundle"
                .to_owned(),
        ));
    }
    let subjects = Subjects {
        user_cookie: match &config.subjects.user_cookie {
            Some(c) => Some((
                c.name.clone(),
                env_secret(&env, "subjects.user_cookie.secret_env", &c.secret_env)?,
            )),
            None => None,
        },
        device_cookie: config.subjects.device_cookie.clone(),
        privacy_key: match &config.subjects.privacy_key_env {
            Some(var) => Some(env_secret(&env, "subjects.privacy_key_env", var)?),
            None => None,
        },
    };
    if config.rate_limit_slots == 0 || config.rate_limit_slots > 1 << 20 {
        return Err(ConfigError(
            "rate_limit_slots: must be 1..=1048576".to_owned(),
        ));
    }
    let secret = |var: &str| -> Result<Option<(String, Vec<u8>)>, ConfigError> {
        let Some(value) = env(var) else {
            return Ok(None);
        };
        parse_secret(&value).map(Some).ok_or_else(|| {
            ConfigError(format!(
                "environment {var}: must be <kid>:<base64 secret of 32+ bytes>"
            ))
        })
    };
    let current = secret(&config.secret_env)?;
    let previous = secret(&config.previous_secret_env)?;
    let keys = match current {
        Some((kid, bytes)) => Some(
            HmacKeys::new(
                (&kid, &bytes),
                previous.as_ref().map(|(k, b)| (k.as_str(), b.as_slice())),
            )
            .map_err(|e| ConfigError(format!("environment {}: {e}", config.secret_env)))?,
        ),
        None => None,
    };
    // An edge header is read only when configured and trusted on this listener: at the edge a
    // client can send any header (an empty name matches nothing).
    let e = config.edge_headers;
    let lower = |v: Option<String>| v.map(|s| s.trim().to_ascii_lowercase()).unwrap_or_default();
    let named = EdgeHeaderNames {
        country: lower(e.country),
        asn: lower(e.asn),
        tls_fingerprint: lower(e.tls_fingerprint),
        user: lower(e.user),
    };
    if named.names().any(|n| n.starts_with(':')) {
        return Err(ConfigError(
            "edge_headers: a pseudo-header (`:name`) cannot be an edge header".to_owned(),
        ));
    }
    let any_named = named.names().next().is_some();
    let (edge, untrusted_edge_headers) = match (e.trusted, any_named) {
        (_, false) => (EdgeHeaderNames::default(), Vec::new()),
        (Some(true), true) => (named, Vec::new()),
        (Some(false), true) => {
            let names = named.names().map(str::to_owned).collect();
            (EdgeHeaderNames::default(), names)
        }
        (None, true) => {
            return Err(ConfigError(
                "edge_headers.trusted: required when edge header names are set: true on a \
                 listener whose every request arrives through the edge that sets them, false \
                 elsewhere (the named headers are then stripped from requests)"
                    .to_owned(),
            ));
        }
    };
    let score_cache = match config.score_cache {
        None => None,
        Some(c) => {
            let decision_log = match env(&c.decision_log.key_env) {
                None => None,
                Some(_) => Some(DecisionLog {
                    key: env_secret(
                        &env,
                        "score_cache.decision_log.key_env",
                        &c.decision_log.key_env,
                    )?,
                    pass_sample_percent: c.decision_log.pass_sample_percent.min(100),
                    flush_ms: c.decision_log.flush_ms.max(100),
                    max_buffered: c.decision_log.max_buffered.max(1),
                }),
            };
            Some(ScoreCache {
                token: env(&c.token_env)
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty()),
                cluster: c.cluster,
                authority: c.authority,
                decisions_poll_ms: c.decisions_poll_ms,
                bundle_poll_ms: c.bundle_poll_ms,
                node_id: c
                    .node_id
                    .or_else(|| env("SIGNALBOX_NODE_ID"))
                    .unwrap_or_else(|| "envoy".to_owned()),
                decision_log,
                canary_secret: env(&c.canary_key_env)
                    .map(String::into_bytes)
                    .filter(|k| !k.is_empty())
                    .unwrap_or_else(|| DEFAULT_CANARY_SECRET.to_vec()),
            })
        }
    };
    Ok(Settings {
        policy,
        edge,
        untrusted_edge_headers,
        client_ip: config.client_ip,
        origin_headers: config.origin_headers,
        debug_verdict_header: config.debug_verdict_header,
        sensitive_route_names: config.sensitive_route_names,
        keys,
        decision_log_per_second: config.decision_log_per_second,
        rate_limit_slots: config.rate_limit_slots,
        score_cache,
        subjects,
    })
}

/// A base64 secret of at least 32 bytes from the VM environment; `field` names the setting.
fn env_secret(
    env: &impl Fn(&str) -> Option<String>,
    field: &str,
    var: &str,
) -> Result<Vec<u8>, ConfigError> {
    use base64::Engine as _;
    let value =
        env(var).ok_or_else(|| ConfigError(format!("{field}: environment {var} is not set")))?;
    match base64::engine::general_purpose::STANDARD.decode(value.trim()) {
        Ok(bytes) if bytes.len() >= 32 => Ok(bytes),
        _ => Err(ConfigError(format!(
            "{field}: environment {var} must be a base64 secret of 32+ bytes"
        ))),
    }
}

fn parse_secret(value: &str) -> Option<(String, Vec<u8>)> {
    use base64::Engine as _;
    let (kid, b64) = value.trim().split_once(':')?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((kid.to_owned(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_392_000;

    fn bundle() -> serde_json::Value {
        serde_json::json!({"format_version": 1, "revision": 3, "min_engine_version": "0.1.0"})
    }

    /// A polled bundle: above the serving revision it loads, at it nothing happens, below it
    /// is refused; `parse_with_bundle` refuses both of the latter.
    #[test]
    fn replacements_load_only_above_the_serving_revision() {
        let cfg = serde_json::json!({"bundle": bundle(), "allow_unsigned": true}).to_string();
        let at = |revision: u64| {
            let mut b = bundle();
            b["revision"] = revision.into();
            b.to_string()
        };
        let replace = |text: &str| {
            parse_replacement(
                cfg.as_bytes(),
                Replacement {
                    bundle: text.as_bytes(),
                    above_revision: 3,
                },
                NOW,
                |_| None,
            )
        };
        let above = replace(&at(4)).unwrap().expect("revision 4 replaces 3");
        assert_eq!(above.policy.revision(), 4);
        assert!(replace(&at(3)).unwrap().is_none());
        assert!(replace(&at(2)).is_err());
        assert!(replace("{").is_err());
        let same = parse_with_bundle(
            cfg.as_bytes(),
            Some(Replacement {
                bundle: at(3).as_bytes(),
                above_revision: 3,
            }),
            NOW,
            |_| None,
        );
        assert!(
            same.unwrap_err()
                .0
                .contains("is not above the active revision 3")
        );
    }

    #[test]
    fn unsigned_needs_the_switch_and_errors_name_fields() {
        let cfg = serde_json::json!({"bundle": bundle()}).to_string();
        let err = parse(cfg.as_bytes(), NOW, |_| None).unwrap_err();
        assert!(err.0.contains("bundle: bundle is not signed"), "{err}");
        let cfg = serde_json::json!({"bundle": bundle(), "allow_unsigned": true}).to_string();
        assert_eq!(
            parse(cfg.as_bytes(), NOW, |_| None)
                .unwrap()
                .policy
                .revision(),
            3
        );
        let cfg = serde_json::json!({"bundle": bundle(), "allow_unsigned": true, "client_ip": {"mode": "xff"}}).to_string();
        assert!(
            parse(cfg.as_bytes(), NOW, |_| None)
                .unwrap_err()
                .0
                .contains("unknown variant `xff`")
        );
        let cfg = serde_json::json!({"bundle": bundle(), "allow_unsigned": true, "colour": 1})
            .to_string();
        assert!(
            parse(cfg.as_bytes(), NOW, |_| None)
                .unwrap_err()
                .0
                .contains("unknown field `colour`")
        );
    }

    #[test]
    fn the_example_plugin_config_loads() {
        let json = include_bytes!("../../filter/examples/plugin-config.json");
        let s = parse(json, NOW, |_| None).unwrap();
        assert_eq!(s.policy.revision(), 7);
        assert_eq!(s.edge.country, "cf-ipcountry");
        assert_eq!(s.edge.asn, "", "edge headers not configured are not read");
    }

    #[test]
    fn a_fail_closed_bundle_without_a_score_cache_is_refused() {
        let mut b = bundle();
        b["cache"] = serde_json::json!({"on_unavailable": "fail_closed"});
        let cfg = serde_json::json!({"bundle": b, "allow_unsigned": true}).to_string();
        let err = parse(cfg.as_bytes(), NOW, |_| None).unwrap_err();
        assert!(
            err.0.contains("cache.on_unavailable is fail_closed")
                && err.0.contains("no score cache"),
            "{err}"
        );
    }

    #[test]
    fn edge_headers_need_to_say_whether_the_listener_is_behind_the_edge() {
        let with = |edge: serde_json::Value| {
            let cfg = serde_json::json!({"bundle": bundle(), "allow_unsigned": true, "edge_headers": edge});
            parse(cfg.to_string().as_bytes(), NOW, |_| None)
        };
        let err = with(serde_json::json!({"country": "cf-ipcountry"})).unwrap_err();
        assert!(err.0.starts_with("edge_headers.trusted: required"), "{err}");
        let trusted =
            with(serde_json::json!({"trusted": true, "country": "CF-IPCountry"})).unwrap();
        assert_eq!(trusted.edge.country, "cf-ipcountry");
        assert!(trusted.untrusted_edge_headers.is_empty());
        let untrusted = with(serde_json::json!({"trusted": false, "user": "x-user"})).unwrap();
        assert_eq!(untrusted.edge, EdgeHeaderNames::default());
        assert_eq!(untrusted.untrusted_edge_headers, ["x-user"]);
        assert!(with(serde_json::json!({"trusted": true, "user": ":path"})).is_err());
        let none = with(serde_json::json!({})).unwrap();
        assert_eq!(none.edge, EdgeHeaderNames::default());
    }

    #[test]
    fn a_misordered_secret_is_never_shown() {
        let cfg = serde_json::json!({"bundle": bundle(), "allow_unsigned": true}).to_string();
        // `<base64 secret>:<kid>` instead of `<kid>:<base64 secret>`.
        let secret = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
        // The key id `2026` is valid base64: the halves parse, the wrong way round.
        let swapped = format!("{secret}:2026");
        let err = parse(cfg.as_bytes(), NOW, |v| {
            (v == "SIGNALBOX_SECRET").then(|| swapped.clone())
        })
        .unwrap_err();
        assert!(err.0.contains("SIGNALBOX_SECRET"), "{err}");
        assert!(!err.0.contains("QUFB"), "the secret leaked into: {err}");
        // The same for the previous secret, with a valid current one.
        let current = format!("k2:{secret}");
        let err = parse(cfg.as_bytes(), NOW, |v| match v {
            "SIGNALBOX_SECRET" => Some(current.clone()),
            "SIGNALBOX_SECRET_PREVIOUS" => Some(swapped.clone()),
            _ => None,
        })
        .unwrap_err();
        assert!(!err.0.contains("QUFB"), "the secret leaked into: {err}");
    }

    #[test]
    fn secrets_come_from_env_and_are_never_echoed() {
        let cfg = serde_json::json!({"bundle": bundle(), "allow_unsigned": true}).to_string();
        let secret = "k1:QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
        let s = parse(cfg.as_bytes(), NOW, |v| {
            (v == "SIGNALBOX_SECRET").then(|| secret.to_owned())
        })
        .unwrap();
        assert_eq!(s.keys.unwrap().current_kid(), "k1");
        let short = "k1:c2hvcnQ=";
        let err = parse(cfg.as_bytes(), NOW, |v| {
            (v == "SIGNALBOX_SECRET").then(|| short.to_owned())
        })
        .unwrap_err();
        assert!(
            !err.0.contains("c2hvcnQ") && err.0.contains("SIGNALBOX_SECRET"),
            "{err}"
        );
        let garbage = "no colon here";
        let err = parse(cfg.as_bytes(), NOW, |v| {
            (v == "SIGNALBOX_SECRET").then(|| garbage.to_owned())
        })
        .unwrap_err();
        assert!(!err.0.contains(garbage), "{err}");
    }
}
