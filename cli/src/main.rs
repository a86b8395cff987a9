//! `signalbox` — the command-line tool for security engineers: lint, build and test policy
//! bundles, and evaluate request logs against them.

mod cache;
mod diff;
mod files;
mod keys;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use signalbox_policy::{EdgeHeaderNames, Policy, RemoteContext};
use signalbox_test_kit::bench::EvalLoop;
use signalbox_test_kit::cases::{Case, DEFAULT_CASE_NOW};
use signalbox_test_kit::labels::LabelReport;
use signalbox_test_kit::requests::{RequestLine, VerdictLine};

#[derive(Parser)]
#[command(name = "signalbox", version, about = "Signalbox policy tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with policy bundles.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Evaluate requests (JSONL) against a bundle; one verdict line per request on stdout,
    /// a summary on stderr. A request log is taken as it arrived through your edge: the
    /// conventional edge headers are read (`cf-ipcountry`, `x-signalbox-edge-asn`,
    /// `x-signalbox-edge-ja4`, `x-signalbox-edge-user`); `policy diff` reads them too.
    Eval {
        /// Bundle file (YAML or JSON).
        #[arg(long)]
        bundle: PathBuf,
        /// Requests, one JSON object per line.
        #[arg(long)]
        requests: PathBuf,
        /// Score-cache answers per request id (`{"id":"r1","ip":{...},"user":{...}}` per line);
        /// a request without a line is evaluated as if the cache did not answer.
        #[arg(long)]
        remote: Option<PathBuf>,
        /// Evaluation time, unix seconds (default: now).
        #[arg(long)]
        now: Option<u64>,
        /// Labels per request id (`{"id":"r1","label":"human"}` per line; `human`, or any bot
        /// class such as `crawler` or `automation`): prints decisions per label, the share
        /// not passed, and precision/recall of not passing bots, on stderr.
        #[arg(long)]
        labels: Option<PathBuf>,
    },
    /// Manual decisions in the score cache (ban, challenge, throttle, allow).
    #[command(subcommand)]
    Decisions(cache::DecisionsCommand),
    /// Events for the score cache (failed logins, chargebacks, …).
    #[command(subcommand)]
    Events(cache::EventsCommand),
    /// The edges that poll the score cache: revisions, last error, clock skew, staleness.
    Fleet {
        #[command(flatten)]
        cache: cache::CacheArgs,
    },
    /// Time the shared evaluation loop natively (the native half of `signalbox-harness
    /// bench`); prints one JSON line: ns per request (median of the samples) and the checksum.
    #[command(hide = true)]
    BenchEval {
        /// Bundle file (YAML or JSON).
        #[arg(long)]
        bundle: PathBuf,
        /// Requests, one JSON object per line.
        #[arg(long)]
        requests: PathBuf,
        /// Passes over the requests per sample.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// Timed samples (after one warm-up pass).
        #[arg(long, default_value_t = 7)]
        samples: usize,
        /// Evaluation time, unix seconds (default: now).
        #[arg(long)]
        now: Option<u64>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Push a signed bundle (the envelope `policy sign` writes) to the score cache as the
    /// stable bundle, or with --canary as a canary for that percent of clients.
    Push {
        /// The signed bundle file.
        file: PathBuf,
        /// Stage it as a canary for this percent of clients (1–100).
        #[arg(long)]
        canary: Option<u8>,
        #[command(flatten)]
        cache: cache::CacheArgs,
    },
    /// Make the canary the stable bundle.
    Promote {
        #[command(flatten)]
        cache: cache::CacheArgs,
    },
    /// Abort the canary (the stable bundle keeps serving).
    Abort {
        #[command(flatten)]
        cache: cache::CacheArgs,
    },
    /// Validate a bundle; print every error with its field path.
    Lint {
        /// Bundle file (YAML or JSON).
        file: PathBuf,
        /// Judge range ages at this time (unix seconds) instead of now.
        #[arg(long)]
        now: Option<u64>,
    },
    /// Compile YAML/JSON (with list includes) into canonical JSON and print its digest.
    Build {
        /// Bundle file (YAML or JSON).
        file: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Make an Ed25519 signing key; print its public key, optionally add it to a keys file.
    Keygen {
        /// Key id (e.g. `2026-11`).
        #[arg(long)]
        kid: String,
        /// Where to write the secret key (created with mode 0600; never overwritten).
        #[arg(long)]
        secret_out: PathBuf,
        /// A trusted-keys file to add the public key to (created if missing).
        #[arg(long)]
        public_out: Option<PathBuf>,
    },
    /// Sign a bundle (YAML/JSON, built to canonical JSON first) into an envelope.
    Sign {
        /// Bundle file; must set `expires_at`.
        file: PathBuf,
        /// Secret key file from `policy keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Output envelope.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Verify a signed bundle (or a prepared one) as an edge would; exit 1 with the reason if
    /// refused.
    Verify {
        /// Envelope, prepared bundle (or plain bundle, with --allow-unsigned).
        file: PathBuf,
        /// Trusted-keys file (`{"keys":[{"kid":..,"public":..}]}`).
        #[arg(long)]
        keys: PathBuf,
        /// Revision the edge serves now.
        #[arg(long)]
        active_revision: Option<u64>,
        /// Accept a plain, unsigned bundle.
        #[arg(long)]
        allow_unsigned: bool,
        /// Time of the check, unix seconds (default: now).
        #[arg(long)]
        now: Option<u64>,
    },
    /// Verify a signed bundle as an edge would and write its prepared form: what a host that
    /// makes a fresh instance per request loads instead (no signature check, JSON or list
    /// parsing per instance; see edge-worker/README.md). `policy verify` checks one.
    Prepare {
        /// Envelope (or plain bundle, with --allow-unsigned).
        file: PathBuf,
        /// Trusted-keys file (`{"keys":[{"kid":..,"public":..}]}`).
        #[arg(long)]
        keys: PathBuf,
        /// Accept a plain, unsigned bundle.
        #[arg(long)]
        allow_unsigned: bool,
        /// Time of the check, unix seconds (default: now).
        #[arg(long)]
        now: Option<u64>,
        /// Output file (conventionally `*.prepared`).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// How many verdicts a bundle change would flip, by decision pair, with examples: over a
    /// request log (`OLD NEW --requests FILE`), or over the score cache's decision log, what
    /// the edges really decided, replayed against a candidate (`NEW --log`).
    Diff(diff::DiffArgs),
    /// Run scenario cases against a bundle, like `opa test`.
    Test {
        /// Bundle for cases that do not name their own.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Directory of case files (`*.yaml`, `*.yml`, `*.json`).
        #[arg(long)]
        cases: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(PolicyCommand::Push {
            file,
            canary,
            cache,
        }) => cache::push(&file, canary, &cache),
        Command::Policy(PolicyCommand::Promote { cache }) => cache::promote(&cache, true),
        Command::Policy(PolicyCommand::Abort { cache }) => cache::promote(&cache, false),
        Command::Fleet { cache } => cache::fleet(&cache),
        Command::Policy(PolicyCommand::Lint { file, now }) => {
            lint(&file, now.unwrap_or_else(unix_now))
        }
        Command::Policy(PolicyCommand::Build { file, output }) => build(&file, &output),
        Command::Policy(PolicyCommand::Test { bundle, cases }) => test(bundle.as_deref(), &cases),
        Command::Policy(PolicyCommand::Keygen {
            kid,
            secret_out,
            public_out,
        }) => keys::keygen(&kid, &secret_out, public_out.as_deref()),
        Command::Policy(PolicyCommand::Sign { file, key, output }) => {
            keys::sign(&file, &key, &output)
        }
        Command::Policy(PolicyCommand::Verify {
            file,
            keys: k,
            active_revision,
            allow_unsigned,
            now,
        }) => keys::verify(
            &file,
            &k,
            active_revision,
            allow_unsigned,
            now.unwrap_or_else(unix_now),
        ),
        Command::Policy(PolicyCommand::Prepare {
            file,
            keys: k,
            allow_unsigned,
            now,
            output,
        }) => keys::prepare(
            &file,
            &k,
            allow_unsigned,
            now.unwrap_or_else(unix_now),
            &output,
        ),
        Command::Policy(PolicyCommand::Diff(args)) => diff::diff(&args),
        Command::Eval {
            bundle,
            requests,
            remote,
            now,
            labels,
        } => eval(
            &bundle,
            &requests,
            remote.as_deref(),
            labels.as_deref(),
            now,
        ),
        Command::Decisions(command) => cache::decisions(command),
        Command::Events(command) => cache::events(command),
        Command::BenchEval {
            bundle,
            requests,
            rounds,
            samples,
            now,
        } => bench_eval(
            &bundle,
            &requests,
            rounds,
            samples,
            now.unwrap_or_else(unix_now),
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn lint(file: &Path, now: u64) -> Result<ExitCode> {
    let json = files::bundle_json(file)?;
    match Policy::from_json_slice(&json) {
        Ok(policy) => {
            for warning in policy.warnings() {
                println!("{}: warning: {warning}", file.display());
            }
            for stale in policy.stale_ranges(now) {
                println!(
                    "{}: warning: lists.{}: ranges dated {} ({} days old) are past \
                     crawlers.max_ranges_age_days: {} can be neither verified nor shown \
                     spoofed, so they count as declared bots of their category; refresh \
                     the list (policy/data/refresh.py)",
                    file.display(),
                    stale.list,
                    stale.as_of.as_deref().unwrap_or("never"),
                    stale
                        .age_days
                        .map_or_else(|| "unknown".to_owned(), |d| d.to_string()),
                    stale.crawlers.join(", ")
                );
            }
            println!("{}: ok (revision {})", file.display(), policy.revision());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            for err in e.field_errors() {
                println!("{}: {err}", file.display());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn build(file: &Path, output: &Path) -> Result<ExitCode> {
    let json = files::bundle_json(file)?;
    let policy = match Policy::from_json_slice(&json) {
        Ok(p) => p,
        Err(e) => {
            for err in e.field_errors() {
                eprintln!("{}: {err}", file.display());
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    for warning in policy.warnings() {
        eprintln!("{}: warning: {warning}", file.display());
    }
    std::fs::write(output, &json).with_context(|| format!("writing {}", output.display()))?;
    let digest = policy.digest_hex();
    println!(
        "{}: {} bytes, revision {}",
        output.display(),
        json.len(),
        policy.revision()
    );
    println!("sha256:{digest}");
    for list in policy.lists() {
        println!("  list {:<12} {}", list.name, list.set);
    }
    Ok(ExitCode::SUCCESS)
}

fn test(default_bundle: Option<&Path>, dir: &Path) -> Result<ExitCode> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("no case files in {}", dir.display());
    }
    let default_policy = default_bundle.map(files::load_policy).transpose()?;
    let mut loaded: HashMap<PathBuf, Policy> = HashMap::new();
    let (mut passed, mut failed) = (0usize, 0usize);
    for path in &paths {
        let case: Case = files::read_yaml_or_json(path)?;
        let name = case.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let policy = match &case.bundle {
            Some(reference) => {
                let (key, policy) = files::case_policy(path, reference)?;
                loaded.entry(key).or_insert(policy)
            }
            None => match &default_policy {
                Some(p) => p,
                None => bail!(
                    "{}: case names no bundle and --bundle is not given",
                    path.display()
                ),
            },
        };
        let now = case.now.unwrap_or(DEFAULT_CASE_NOW);
        let facts = case.request.to_facts(&case.edge_header_names());
        let verdict = policy.evaluate(&facts, case.remote.as_ref(), now);
        let mismatches = case.expect.mismatches(&verdict);
        if mismatches.is_empty() {
            passed += 1;
            println!("ok    {name}");
        } else {
            failed += 1;
            println!("FAIL  {name}  ({})", path.display());
            for m in &mismatches {
                println!("      - {m}");
            }
            println!(
                "      verdict: {}",
                serde_json::to_string(&VerdictLine::new(&case.request.id, &verdict))?
            );
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteLine {
    id: String,
    #[serde(flatten)]
    context: RemoteContext,
}

/// A line of `eval --labels`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelLine {
    id: String,
    label: String,
}

fn eval(
    bundle: &Path,
    requests: &Path,
    remote: Option<&Path>,
    labels: Option<&Path>,
    now: Option<u64>,
) -> Result<ExitCode> {
    let policy = files::load_policy(bundle)?;
    let now = now.unwrap_or_else(unix_now);
    let mut remote_by_id = HashMap::new();
    if let Some(path) = remote {
        for (n, line) in files::lines(path)?.into_iter().enumerate() {
            let r: RemoteLine = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}", path.display(), n + 1))?;
            remote_by_id.insert(r.id, r.context);
        }
    }
    let mut label_by_id = HashMap::new();
    if let Some(path) = labels {
        for (n, line) in files::lines(path)?.into_iter().enumerate() {
            let l: LabelLine = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}", path.display(), n + 1))?;
            label_by_id.insert(l.id, l.label);
        }
    }
    let mut report = LabelReport::default();
    let edge = EdgeHeaderNames::conventional();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut decisions: BTreeMap<&str, usize> = BTreeMap::new();
    let mut levels: BTreeMap<&str, usize> = BTreeMap::new();
    let mut nanos = Vec::new();
    let reader = std::io::BufReader::new(
        std::fs::File::open(requests).with_context(|| format!("opening {}", requests.display()))?,
    );
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let request: RequestLine = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}", requests.display(), n + 1))?;
        let facts = request.to_facts(&edge);
        let started = Instant::now();
        let verdict = policy.evaluate(&facts, remote_by_id.get(&request.id), now);
        nanos.push(started.elapsed().as_nanos());
        *decisions.entry(verdict.decision.as_str()).or_default() += 1;
        if labels.is_some() {
            report.add(
                label_by_id.get(&request.id).map(String::as_str),
                verdict.intended_decision(),
                verdict.client.class,
            );
        }
        *levels.entry(verdict.level.as_str()).or_default() += 1;
        serde_json::to_writer(&mut out, &VerdictLine::new(&request.id, &verdict))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    nanos.sort_unstable();
    let pct = |p: usize| {
        nanos
            .get((nanos.len().saturating_sub(1)) * p / 100)
            .copied()
            .unwrap_or(0)
    };
    eprintln!(
        "{} requests; decisions {:?}; levels {:?}; eval p50 {:.1} µs, p99 {:.1} µs",
        nanos.len(),
        decisions,
        levels,
        pct(50) as f64 / 1000.0,
        pct(99) as f64 / 1000.0
    );
    if labels.is_some() {
        eprint!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_eval(
    bundle: &Path,
    requests: &Path,
    rounds: u32,
    samples: usize,
    now: u64,
) -> Result<ExitCode> {
    let requests_jsonl =
        std::fs::read(requests).with_context(|| format!("reading {}", requests.display()))?;
    let eval = EvalLoop::new(&files::bundle_json(bundle)?, &requests_jsonl, now)?;
    if eval.is_empty() || rounds == 0 || samples == 0 {
        bail!("nothing to time: no requests, rounds or samples");
    }
    let evaluations = eval.len() as f64 * f64::from(rounds);
    std::hint::black_box(eval.run(1));
    let mut checksum = 0;
    let mut per_request: Vec<f64> = (0..samples)
        .map(|_| {
            let started = Instant::now();
            checksum = eval.run(rounds);
            started.elapsed().as_nanos() as f64 / evaluations
        })
        .collect();
    per_request.sort_by(f64::total_cmp);
    let median = per_request
        .get(per_request.len() / 2)
        .copied()
        .unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({
            "requests": eval.len(),
            "rounds": rounds,
            "samples": per_request,
            "ns_per_request": median,
            "checksum": format!("{checksum:016x}"),
        })
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn read_requests(path: &Path) -> Result<Vec<RequestLine>> {
    files::lines(path)?
        .iter()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), n + 1))
        })
        .collect()
}
