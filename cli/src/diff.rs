//! `signalbox policy diff`: how many verdicts a bundle change would flip, by decision pair and
//! by client class, with examples. Two sources:
//!
//! - a request log (`OLD NEW --requests FILE`): both bundles evaluate every request;
//! - the score cache's decision log (`NEW --log`): what the edges decided, replayed against
//!   the candidate from the facts each record kept (`signalbox_pipeline::record`). The
//!   recorded decision is the "before"; records whose throttle came from a rate budget, and
//!   records without facts, are counted and left out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Value, json};
use signalbox_pipeline::Final;
use signalbox_pipeline::record::replay_facts;
use signalbox_policy::{EdgeHeaderNames, RemoteContext};
use signalbox_wire::DecisionRecordV1;

use crate::cache::{self, CacheArgs};
use crate::{files, read_requests, unix_now};

/// `signalbox policy diff …`
#[derive(Args)]
pub struct DiffArgs {
    /// With `--requests`: the bundle in force, then the candidate. With `--log`: the
    /// candidate only (the records say what was in force).
    #[arg(required = true, num_args = 1..=2)]
    bundles: Vec<PathBuf>,
    /// Requests to replay (JSONL, as for `eval`).
    #[arg(long, conflicts_with = "log", required_unless_present = "log")]
    requests: Option<PathBuf>,
    /// Replay the score cache's decision log (`GET /v1/decisions/log`) instead.
    #[arg(long)]
    log: bool,
    /// With `--log`: records of the last DURATION (`90m`, `24h`, `7d`).
    #[arg(long, default_value = "24h", requires = "log")]
    since: String,
    /// With `--log`: only records decided by this revision.
    #[arg(long, requires = "log")]
    revision: Option<u64>,
    /// With `--log`: only records on this route (a bundle route name).
    #[arg(long, requires = "log")]
    route: Option<String>,
    /// With `--log`: only records with this enforced decision.
    #[arg(long, requires = "log")]
    decision: Option<String>,
    /// With `--log`: replay at most this many records (newest first).
    #[arg(long, default_value_t = 10_000, requires = "log")]
    max: usize,
    /// Examples shown per pair.
    #[arg(long, default_value_t = 3)]
    examples: usize,
    /// With `--requests`: evaluation time, unix seconds (default: now). A replayed record is
    /// evaluated at the time it was decided.
    #[arg(long, conflicts_with = "log")]
    now: Option<u64>,
    #[command(flatten)]
    cache: CacheArgs,
}

/// Flips by (before, after) pair, with a few examples each.
#[derive(Default)]
struct Flips {
    pairs: BTreeMap<(String, String), (usize, Vec<String>)>,
}

impl Flips {
    fn add(
        &mut self,
        before: &str,
        after: &str,
        examples: usize,
        example: impl FnOnce() -> String,
    ) {
        let (count, shown) = self
            .pairs
            .entry((before.to_owned(), after.to_owned()))
            .or_default();
        *count += 1;
        if shown.len() < examples {
            shown.push(example());
        }
    }

    fn total(&self) -> usize {
        self.pairs.values().map(|(n, _)| n).sum()
    }

    fn print(&self, width: usize) {
        for ((b, a), (count, shown)) in &self.pairs {
            println!("  {b:>width$} -> {a:<width$} {count}");
            for line in shown {
                println!("      {line}");
            }
        }
    }

    fn to_json(&self) -> Value {
        Value::Array(
            self.pairs
                .iter()
                .map(|((b, a), (count, shown))| {
                    json!({"from": b, "to": a, "count": count, "examples": shown})
                })
                .collect(),
        )
    }
}

/// Runs `policy diff`.
pub fn diff(args: &DiffArgs) -> Result<ExitCode> {
    match (&args.requests, args.bundles.as_slice()) {
        (Some(requests), [old, new]) => over_requests(args, old, new, requests),
        (None, [candidate]) if args.log => over_log(args, candidate),
        (Some(_), _) => bail!("--requests replays a log against two bundles: OLD NEW"),
        (None, _) => bail!("--log replays the decision log against one bundle: the candidate"),
    }
}

fn over_requests(
    args: &DiffArgs,
    old: &std::path::Path,
    new: &std::path::Path,
    requests: &std::path::Path,
) -> Result<ExitCode> {
    let (old_policy, new_policy) = (files::load_policy(old)?, files::load_policy(new)?);
    let requests = read_requests(requests)?;
    let now = args.now.unwrap_or_else(unix_now);
    let edge = EdgeHeaderNames::conventional();
    let (mut flips, mut classes) = (Flips::default(), Flips::default());
    for request in &requests {
        let facts = request.to_facts(&edge);
        let before = old_policy.evaluate(&facts, None, now);
        let after = new_policy.evaluate(&facts, None, now);
        let (bc, ac) = (before.client.header_value(), after.client.header_value());
        if before.client.class != after.client.class {
            classes.add(
                before.client.class.as_str(),
                after.client.class.as_str(),
                args.examples,
                || {
                    format!(
                        "{} {} {}: {bc} -> {ac}",
                        request.id, request.method, request.path
                    )
                },
            );
        }
        let (b, a) = (before.intended_decision(), after.intended_decision());
        if b != a {
            flips.add(b.as_str(), a.as_str(), args.examples, || {
                format!(
                    "{} {} {} from {}: score {} -> {}",
                    request.id,
                    request.method,
                    request.path,
                    request
                        .client_ip
                        .map_or_else(|| "no address".to_owned(), |ip| ip.to_string()),
                    before.score,
                    after.score
                )
            });
        }
    }
    println!(
        "{} of {} verdicts flip ({}: revision {} -> {}: revision {})",
        flips.total(),
        requests.len(),
        old.display(),
        old_policy.revision(),
        new.display(),
        new_policy.revision()
    );
    flips.print(9);
    println!(
        "{} of {} client classes change",
        classes.total(),
        requests.len()
    );
    classes.print(12);
    Ok(ExitCode::SUCCESS)
}

/// What replaying a set of records found.
#[derive(Default)]
struct LogReplay {
    records: usize,
    replayed: usize,
    rate_limited: usize,
    /// Decided by an operator's manual decision, which overrides any bundle: kept as it was.
    manual: usize,
    without_facts: usize,
    /// The candidate asks the score cache where the recording edge did not: replayed with an
    /// empty answer (what the cache says about a subject it has no events for).
    assumed_empty_context: usize,
    by_revision: BTreeMap<u64, usize>,
    flips: Flips,
    classes: Flips,
    recorded_lists: std::collections::BTreeSet<String>,
}

fn over_log(args: &DiffArgs, candidate_path: &std::path::Path) -> Result<ExitCode> {
    let candidate = files::load_policy(candidate_path)?;
    let since = cache::parse_duration(&args.since)?;
    let from_ms = unix_now().saturating_sub(since).saturating_mul(1_000);
    let mut query = vec![("from", from_ms.to_string())];
    if let Some(r) = args.revision {
        query.push(("revision", r.to_string()));
    }
    if let Some(r) = &args.route {
        query.push(("route", r.clone()));
    }
    if let Some(d) = &args.decision {
        query.push(("decision", d.clone()));
    }
    let records = match cache::fetch_log(&args.cache, &query, args.max)? {
        Ok(records) => records,
        Err(code) => return Ok(code),
    };
    let mut replay = LogReplay::default();
    for record in &records {
        replay.add(&candidate, record, args.examples);
    }
    let unrecorded: Vec<&str> = candidate
        .lists()
        .iter()
        .map(|l| &*l.name)
        .filter(|name| !replay.recorded_lists.contains(*name))
        .collect();
    if args.cache.json {
        println!(
            "{}",
            json!({
                "candidate": candidate_path.display().to_string(),
                "candidate_revision": candidate.revision(),
                "records": replay.records,
                "recorded_by_revision": replay.by_revision,
                "replayed": replay.replayed,
                "rate_limited": replay.rate_limited,
                "manual_decision": replay.manual,
                "without_facts": replay.without_facts,
                "assumed_empty_context": replay.assumed_empty_context,
                "flipped": replay.flips.total(),
                "flips": replay.flips.to_json(),
                "class_changes": replay.classes.to_json(),
                "lists_in_no_record": unrecorded,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let revisions: Vec<String> = replay
        .by_revision
        .iter()
        .map(|(rev, n)| format!("{rev} ({n})"))
        .collect();
    println!(
        "replayed {} of {} logged verdicts of the last {} against {} (revision {}); decided by revision {}",
        replay.replayed,
        replay.records,
        args.since,
        candidate_path.display(),
        candidate.revision(),
        if revisions.is_empty() {
            "-".to_owned()
        } else {
            revisions.join(", ")
        }
    );
    if replay.rate_limited + replay.manual + replay.without_facts > 0 {
        println!(
            "  not replayed: {} throttled by a rate budget (bucket state is not recorded), {} decided by a manual decision (it overrides any bundle), {} without facts (from an older edge)",
            replay.rate_limited, replay.manual, replay.without_facts
        );
    }
    if replay.assumed_empty_context > 0 {
        println!(
            "  {} replayed with an empty score-cache answer: the candidate asks the cache where the recording edge did not",
            replay.assumed_empty_context
        );
    }
    if !unrecorded.is_empty() {
        println!(
            "  lists no replayed address was in: {} (a record keeps only the lists its address was in when it was decided: a list the candidate adds or widens counts as holding none of these addresses)",
            unrecorded.join(", ")
        );
    }
    println!(
        "{} of {} verdicts flip",
        replay.flips.total(),
        replay.replayed
    );
    replay.flips.print(9);
    println!(
        "{} of {} client classes change",
        replay.classes.total(),
        replay.replayed
    );
    replay.classes.print(12);
    Ok(ExitCode::SUCCESS)
}

impl LogReplay {
    fn add(
        &mut self,
        candidate: &signalbox_policy::Policy,
        record: &DecisionRecordV1,
        examples: usize,
    ) {
        self.records += 1;
        *self.by_revision.entry(record.revision).or_default() += 1;
        self.recorded_lists.extend(record.ip_lists.iter().cloned());
        if record.rate_limited {
            self.rate_limited += 1;
            return;
        }
        if record.manual_decision.is_some() {
            self.manual += 1;
            return;
        }
        let Some(replay) = replay_facts(record) else {
            self.without_facts += 1;
            return;
        };
        self.replayed += 1;
        let assessment = candidate.assess(&replay.facts, replay.now);
        let context = match (assessment.lookup().is_some(), replay.context_asked) {
            (false, _) => None,
            (true, true) => replay.context,
            (true, false) => {
                self.assumed_empty_context += 1;
                Some(RemoteContext::default())
            }
        };
        let after = candidate.decide(assessment, context.as_ref(), replay.now);
        let before = record
            .shadow_decision
            .as_deref()
            .unwrap_or(&record.decision);
        let after_decision = Final::of(&after, false).intended();
        let after_client = after.client.header_value();
        let class = |client: &str| client.split(';').next().unwrap_or_default().to_owned();
        let (bc, ac) = (class(&record.client), class(&after_client));
        if bc != ac {
            self.classes.add(&bc, &ac, examples, || {
                format!(
                    "{} {} {}: {} -> {after_client}",
                    record.request_id, record.method, record.path, record.client
                )
            });
        }
        if before != after_decision.as_str() {
            self.flips
                .add(before, after_decision.as_str(), examples, || {
                    format!(
                        "{} {} {} ({}): score {} -> {}",
                        record.request_id,
                        record.method,
                        record.path,
                        ac,
                        record.score,
                        after.score
                    )
                });
        }
    }
}
