//! `signalbox decisions …` and `signalbox events send`: the score cache's API from a shell, in
//! the spirit of CrowdSec's `cscli decisions`. Human-readable output by default, the cache's
//! JSON with `--json`. Exit codes: 0 done, 1 the cache refused the request (its message is
//! printed), 3 the cache is unreachable or unavailable, 2 anything else (usage, files).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the cache is and which token to present.
///
/// (`policy push` sends the file's bytes as they are: a JSON string value given to `send`
/// goes out raw.)
#[derive(Args, Clone)]
pub struct CacheArgs {
    /// The score cache's base URL.
    #[arg(
        long,
        env = "SIGNALBOX_CACHE_URL",
        default_value = "http://127.0.0.1:7900"
    )]
    cache: String,
    /// The environment variable holding the bearer token (never a flag: it would show in
    /// `ps` and shell history).
    #[arg(long, default_value = "SIGNALBOX_TOKEN")]
    token_env: String,
    /// Print the cache's JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// `signalbox decisions …`
#[derive(Subcommand)]
pub enum DecisionsCommand {
    /// Add a manual decision.
    Add {
        /// `ban`, `challenge`, `throttle` or `allow`.
        #[arg(long)]
        action: String,
        /// `ip`, `range`, `user`, `device`, `country` or `asn`.
        #[arg(long)]
        scope: String,
        /// The address, CIDR, key, country code or AS number.
        #[arg(long)]
        key: String,
        /// How long: `90s`, `15m`, `4h`, `7d`, or seconds.
        #[arg(long, default_value = "4h")]
        duration: String,
        /// Why (shown to operators, never to clients).
        #[arg(long)]
        reason: Option<String>,
        /// Who decides (default `cli`).
        #[arg(long, default_value = "cli")]
        origin: String,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// List the decisions in force.
    List {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Lift a decision by id.
    Delete {
        /// The decision's id (from `add` or `list`).
        id: String,
        #[command(flatten)]
        cache: CacheArgs,
    },
}

/// `signalbox events …`
#[derive(Subcommand)]
pub enum EventsCommand {
    /// Send events: one from flags, or a JSONL file of events in the API's shape.
    Send {
        /// A JSONL file, one event per line (`{"id":…,"subject":{"scope":…,"key":…},"type":…,"severity":…}`).
        #[arg(long, conflicts_with_all = ["subject", "event_type"])]
        file: Option<PathBuf>,
        /// `scope:key`, e.g. `user:alice` or `ip:203.0.113.9`.
        #[arg(long, required_unless_present = "file")]
        subject: Option<String>,
        /// The event type, e.g. `failed_login`.
        #[arg(long = "type", required_unless_present = "file")]
        event_type: Option<String>,
        /// `low`, `medium`, `high` or `critical`.
        #[arg(long, default_value = "medium")]
        severity: String,
        /// Points (0–100); the bundle's points for the severity when absent.
        #[arg(long)]
        impact: Option<u32>,
        /// The event id (makes a retry idempotent); random when absent.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        cache: CacheArgs,
    },
}

/// What went wrong talking to the cache.
enum Failure {
    /// The cache answered 4xx.
    Refused(u16, Value),
    /// It could not be reached, or answered 5xx.
    Unavailable(String),
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    fn new(args: &CacheArgs) -> Result<Self> {
        let token = std::env::var(&args.token_env)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .with_context(|| format!("set {} to the cache token", args.token_env))?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Self {
            agent,
            base: args.cache.trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(b.to_string()),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(match b {
                    Value::String(raw) => raw.clone(),
                    other => other.to_string(),
                }),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            _ => self.agent.get(&url).header("authorization", &auth).call(),
        };
        let mut response = result.map_err(|e| Failure::Unavailable(format!("{url}: {e}")))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        match status {
            200..=299 => Ok(value),
            400..=499 => Err(Failure::Refused(status, value)),
            _ => Err(Failure::Unavailable(format!(
                "{url}: {status} {}",
                at(&value, "message").as_str().unwrap_or_default()
            ))),
        }
    }
}

/// A field of a JSON answer (`null` when absent).
fn at<'a>(value: &'a Value, key: &str) -> &'a Value {
    value.get(key).unwrap_or(&Value::Null)
}

/// Prints the outcome and picks the exit code.
fn finish(
    result: Result<Value, Failure>,
    json_out: bool,
    summary: impl Fn(&Value) -> String,
) -> ExitCode {
    match result {
        Ok(v) => {
            if json_out {
                println!("{v}");
            } else {
                println!("{}", summary(&v));
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Refused(status, v)) => {
            if json_out {
                println!("{v}");
            }
            let field = at(&v, "field")
                .as_str()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default();
            eprintln!(
                "refused ({status}): {}{field}",
                at(&v, "message").as_str().unwrap_or("no message")
            );
            ExitCode::from(1)
        }
        Err(Failure::Unavailable(why)) => {
            eprintln!("the score cache is unavailable: {why}");
            ExitCode::from(3)
        }
    }
}

/// `90s`, `15m`, `4h`, `7d`, or seconds.
pub fn parse_duration(text: &str) -> Result<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (text.get(..i).unwrap_or_default(), c),
        _ => (text, 's'),
    };
    let n: u64 = number
        .parse()
        .with_context(|| format!("duration {text:?}: a number with s, m, h or d"))?;
    let unit = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        other => bail!("duration {text:?}: unknown unit {other:?} (s, m, h, d)"),
    };
    Ok(n.saturating_mul(unit))
}

fn decision_line(d: &Value) -> String {
    format!(
        "{}  {:<9} {:<7} {:<40} until {}{}",
        at(d, "id").as_str().unwrap_or("?"),
        at(d, "action").as_str().unwrap_or("?"),
        at(d, "scope").as_str().unwrap_or("?"),
        at(d, "key").as_str().unwrap_or("?"),
        at(d, "expires_at").as_u64().unwrap_or(0),
        at(d, "reason")
            .as_str()
            .map(|r| format!("  ({r})"))
            .unwrap_or_default()
    )
}

/// Runs a `decisions` subcommand.
pub fn decisions(command: DecisionsCommand) -> Result<ExitCode> {
    match command {
        DecisionsCommand::Add {
            action,
            scope,
            key,
            duration,
            reason,
            origin,
            cache,
        } => {
            let body = json!({
                "action": action, "scope": scope, "key": key,
                "duration_seconds": parse_duration(&duration)?,
                "reason": reason, "origin": origin,
            });
            let client = Client::new(&cache)?;
            Ok(finish(
                client.send("POST", "/v1/decisions", Some(&body)),
                cache.json,
                |v| format!("added {}", decision_line(at(v, "decision"))),
            ))
        }
        DecisionsCommand::List { cache } => {
            let client = Client::new(&cache)?;
            Ok(finish(
                client.send("GET", "/v1/decisions", None),
                cache.json,
                |v| {
                    let list = at(v, "decisions").as_array().cloned().unwrap_or_default();
                    if list.is_empty() {
                        "no decisions in force".to_owned()
                    } else {
                        list.iter()
                            .map(decision_line)
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                },
            ))
        }
        DecisionsCommand::Delete { id, cache } => {
            let client = Client::new(&cache)?;
            Ok(finish(
                client.send("DELETE", &format!("/v1/decisions/{id}"), None),
                cache.json,
                |_| format!("lifted {id}"),
            ))
        }
    }
}

fn random_id() -> Result<String> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs an `events` subcommand.
pub fn events(command: EventsCommand) -> Result<ExitCode> {
    let EventsCommand::Send {
        file,
        subject,
        event_type,
        severity,
        impact,
        id,
        cache,
    } = command;
    let events: Vec<Value> = match file {
        Some(path) => {
            let reader = std::io::BufReader::new(
                std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?,
            );
            reader
                .lines()
                .enumerate()
                .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
                .map(|(i, l)| {
                    let line = l?;
                    serde_json::from_str(&line)
                        .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))
                })
                .collect::<Result<_>>()?
        }
        None => {
            let subject = subject.unwrap_or_default();
            let Some((scope, key)) = subject.split_once(':') else {
                bail!("--subject: scope:key, e.g. user:alice");
            };
            let mut event = json!({
                "id": id.map_or_else(random_id, Ok)?,
                "subject": {"scope": scope, "key": key},
                "type": event_type.unwrap_or_default(),
                "severity": severity,
            });
            if let (Some(i), Some(map)) = (impact, event.as_object_mut()) {
                map.insert("impact".into(), json!(i));
            }
            vec![event]
        }
    };
    let client = Client::new(&cache)?;
    let mut last = json!({"accepted": 0, "duplicates": 0});
    let (mut accepted, mut duplicates) = (0, 0);
    for chunk in events.chunks(1_000) {
        let body = json!({"events": chunk});
        match client.send("POST", "/v1/events", Some(&body)) {
            Ok(v) => {
                accepted += at(&v, "accepted").as_u64().unwrap_or(0);
                duplicates += at(&v, "duplicates").as_u64().unwrap_or(0);
                last = json!({"accepted": accepted, "duplicates": duplicates});
            }
            Err(e) => return Ok(finish(Err(e), cache.json, |_| String::new())),
        }
    }
    Ok(finish(Ok(last), cache.json, |v| {
        format!(
            "{} accepted, {} already stored",
            at(v, "accepted").as_u64().unwrap_or(0),
            at(v, "duplicates").as_u64().unwrap_or(0)
        )
    }))
}

fn revisions(v: &Value) -> String {
    let rev = |k: &str| {
        at(v, k)
            .as_u64()
            .map_or_else(|| "none".to_owned(), |r| r.to_string())
    };
    format!(
        "stable revision {}, canary revision {}{}",
        rev("stable_revision"),
        rev("canary_revision"),
        at(v, "canary_percent")
            .as_u64()
            .map(|p| format!(" at {p}%"))
            .unwrap_or_default()
    )
}

/// `signalbox policy push FILE [--canary PERCENT]`.
pub fn push(file: &std::path::Path, canary: Option<u8>, cache: &CacheArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let client = Client::new(cache)?;
    let result = match canary {
        None => client.send("PUT", "/v1/bundle", Some(&Value::String(text))),
        Some(percent) => {
            let bundle: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", file.display()))?;
            let body = json!({"bundle": bundle, "percent": percent});
            client.send("PUT", "/v1/bundle/canary", Some(&body))
        }
    };
    Ok(finish(result, cache.json, |v| {
        format!("pushed: {}", revisions(v))
    }))
}

/// `signalbox policy promote` (`promote`) or `signalbox policy abort`.
pub fn promote(cache: &CacheArgs, promote: bool) -> Result<ExitCode> {
    let client = Client::new(cache)?;
    let result = if promote {
        client.send("POST", "/v1/bundle/promote", Some(&json!({})))
    } else {
        client.send("DELETE", "/v1/bundle/canary", None)
    };
    let verb = if promote { "promoted" } else { "aborted" };
    Ok(finish(result, cache.json, |v| {
        format!("{verb}: {}", revisions(v))
    }))
}

/// The decision log's records matching `query` (`from`, `revision`, `route`, `decision`),
/// newest first, at most `max`, fetched page by page. `Err(code)` when the cache refused or
/// could not be reached (already reported).
pub fn fetch_log(
    cache: &CacheArgs,
    query: &[(&str, String)],
    max: usize,
) -> Result<Result<Vec<signalbox_wire::DecisionRecordV1>, ExitCode>> {
    const PAGE: usize = 200;
    let client = Client::new(cache)?;
    let mut filters = String::new();
    for (name, value) in query {
        filters.push('&');
        filters.push_str(name);
        filters.push('=');
        filters.push_str(&signalbox_pipeline::percent_encode(value));
    }
    let mut records = Vec::new();
    for page in 1.. {
        let path = format!("/v1/decisions/log?page={page}&limit={PAGE}{filters}");
        let answer = match client.send("GET", &path, None) {
            Ok(v) => v,
            Err(failure) => return Ok(Err(finish(Err(failure), false, |_| String::new()))),
        };
        let rows: Vec<signalbox_wire::DecisionRecordV1> =
            serde_json::from_value(at(&answer, "records").clone())
                .context("the cache's decision log answer")?;
        let total = at(&answer, "total").as_u64().unwrap_or(0);
        let done = rows.len() < PAGE;
        records.extend(rows);
        if done || records.len() >= max || records.len() as u64 >= total {
            break;
        }
    }
    records.truncate(max);
    Ok(Ok(records))
}

/// Unix seconds as an RFC 3339 UTC time (the dashboard shows the same), or the number itself.
fn utc_time(unix_seconds: u64) -> String {
    i64::try_from(unix_seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_seconds.to_string())
}

/// `signalbox fleet`.
pub fn fleet(cache: &CacheArgs) -> Result<ExitCode> {
    let client = Client::new(cache)?;
    Ok(finish(
        client.send("GET", "/v1/fleet", None),
        cache.json,
        |v| {
            let mut lines = vec![revisions(v)];
            for n in at(v, "nodes").as_array().cloned().unwrap_or_default() {
                lines.push(format!(
                    "{:<30} stable {:<6} canary {:<6} skew {:>6} ms  last seen {}{}{}",
                    at(&n, "node_id").as_str().unwrap_or("?"),
                    at(&n, "stable_revision").as_u64().unwrap_or(0),
                    at(&n, "canary_revision")
                        .as_u64()
                        .map_or_else(|| "-".to_owned(), |r| r.to_string()),
                    at(&n, "clock_skew_ms").as_i64().unwrap_or(0),
                    utc_time(at(&n, "last_seen").as_u64().unwrap_or(0)),
                    if at(&n, "stale").as_bool() == Some(true) {
                        "  STALE"
                    } else {
                        ""
                    },
                    at(&n, "last_error")
                        .as_str()
                        .map(|e| format!("  error: {e}"))
                        .unwrap_or_default(),
                ));
            }
            lines.join("\n")
        },
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("4h").unwrap(), 14_400);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_duration("120").unwrap(), 120);
        assert!(parse_duration("4w").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
