//! `signalbox-harness` — runs proxy-wasm filters in the in-process wasmtime host.
//!
//! `replay --filter F.wasm --config C.json [--bundle B] --requests R.jsonl` runs each request
//! line (the `signalbox eval` format) through the real `.wasm` and prints the verdict lines the
//! filter reports, so they can be diffed with `signalbox eval`.
//!
//! `edge-bench [--requests N --rounds R]` measures the edge worker against a pass-through in
//! the same runtime (our wasi-http host, workerd, Deno), from the client.
//!
//! `bench [--quick]` measures, in one run, what the filter costs per request against the
//! no-op fixture in this host (goal ≤ 2×), and the policy core's evaluation inside wasmtime
//! against the same evaluation native (goal ≤ 1.5×); see `tests/README.md`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use signalbox_tests::host::{Filter, VmOptions, compile};
use signalbox_tests::replay::{replay_config, replay_line_text, request_from_line};
use signalbox_tests::{bench, workload};

#[derive(Parser)]
#[command(
    name = "signalbox-harness",
    about = "Run proxy-wasm filters in-process"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replay request lines through a filter and print its verdict lines.
    Replay {
        /// The filter `.wasm`.
        #[arg(long)]
        filter: PathBuf,
        /// Plugin configuration (JSON), e.g. filter/examples/plugin-config.json.
        #[arg(long)]
        config: PathBuf,
        /// A bundle (YAML or JSON, as `signalbox eval` takes it) replacing the config's.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Request lines (JSONL).
        #[arg(long)]
        requests: PathBuf,
    },
    /// Filter vs no-op in this host, and wasm vs native evaluation, measured in one run.
    Bench(BenchArgs),
    /// The edge worker vs a pass-through in the same runtime (our wasi-http host, workerd,
    /// Deno), measured from the client in one run, and the module sizes.
    EdgeBench {
        /// Sequential requests per side per round.
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// Rounds (interleaved).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Serve the edge worker in one runtime on loopback until killed; prints
    /// `{"port": N}` once it listens (the browser suite starts these).
    ServeEdge {
        /// `wasi-http` (the component in our host), `workerd` or `deno`.
        #[arg(long)]
        runtime: String,
        /// A file holding SIGNALBOX_CONFIG (the configuration JSON).
        #[arg(long)]
        config: PathBuf,
        /// More variables, `NAME=VALUE` (SIGNALBOX_ORIGIN_URL, SIGNALBOX_SECRET, …).
        #[arg(long = "var")]
        vars: Vec<String>,
        /// Where the runtime's files and logs go.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The filter `.wasm` [default: target/wasm32-wasip1/wasm-release/signalbox_filter.wasm].
    #[arg(long)]
    filter: Option<PathBuf>,
    /// The no-op fixture `.wasm` [default: …/signalbox_fixture_noop.wasm beside the filter's].
    #[arg(long)]
    noop: Option<PathBuf>,
    /// The eval-bench fixture [default:
    /// target/wasm32-unknown-unknown/wasm-release/signalbox_fixture_eval_bench.wasm].
    #[arg(long)]
    eval_wasm: Option<PathBuf>,
    /// Plugin configuration [default: filter/examples/plugin-config.json].
    #[arg(long)]
    config: Option<PathBuf>,
    /// A bundle (YAML or JSON) replacing the config's.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Request lines (JSONL) [default: a generated, varied set; see --generate].
    #[arg(long)]
    requests: Option<PathBuf>,
    /// How many requests to generate when --requests is not given [default: 2000; --quick 200].
    #[arg(long)]
    generate: Option<usize>,
    /// Timed rounds: filter/no-op passes each, and evaluation samples each side
    /// [default: 15; --quick 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Passes over the requests per evaluation sample [default: 5; --quick 1].
    #[arg(long)]
    passes: Option<u32>,
    /// Small defaults: a smoke run of a few seconds, not a measurement.
    #[arg(long)]
    quick: bool,
    /// Write /tmp/perf-PID.map so `perf record` / `perf report` name the wasm functions
    /// (profiling only; code generation is unchanged).
    #[arg(long)]
    perf_map: bool,
    /// The native `signalbox` CLI [default: $SIGNALBOX_CLI, else `signalbox` beside this
    /// executable].
    #[arg(long)]
    signalbox: Option<PathBuf>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Replay {
            filter,
            config,
            bundle,
            requests,
        } => replay(&filter, &config, bundle.as_deref(), &requests),
        Cmd::Bench(args) => bench(&args),
        Cmd::EdgeBench { requests, rounds } => {
            signalbox_tests::edge::bench_runtimes(requests, rounds)
        }
        Cmd::ServeEdge {
            runtime,
            config,
            vars,
            out,
        } => serve_edge(&runtime, &config, &vars, &out),
    }
}

/// The `signalbox` CLI replay uses to build YAML bundles.
fn replay_cli() -> PathBuf {
    std::env::var_os("SIGNALBOX_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| signalbox_tests::root().join("target/debug/signalbox"))
}

/// Bundle JSON: YAML goes through `signalbox policy build` (list includes resolved).
fn bundle_value(path: &Path, cli: &Path) -> Result<serde_json::Value> {
    let is_yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let bytes = if is_yaml {
        let out =
            std::env::temp_dir().join(format!("signalbox-harness-{}.json", std::process::id()));
        let status = Command::new(cli)
            .args(["policy", "build"])
            .arg(path)
            .arg("-o")
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running {} (set SIGNALBOX_CLI)", cli.display()))?;
        if !status.success() {
            bail!("signalbox policy build {} failed", path.display());
        }
        let bytes = std::fs::read(&out)?;
        let _ = std::fs::remove_file(&out);
        bytes
    } else {
        std::fs::read(path)?
    };
    Ok(serde_json::from_slice(&bytes)?)
}

fn replay(filter: &Path, config: &Path, bundle: Option<&Path>, requests: &Path) -> Result<()> {
    let engine = wasmtime::Engine::default();
    let module = compile(&engine, &std::fs::read(filter)?)?;
    let bundle = bundle.map(|b| bundle_value(b, &replay_cli())).transpose()?;
    let plugin_config = replay_config(&std::fs::read(config)?, bundle)?;
    let mut vm = Filter::start(
        &engine,
        &module,
        &VmOptions {
            plugin_config,
            ..VmOptions::default()
        },
    )?;
    let out = std::io::stdout();
    let mut out = out.lock();
    for (n, line) in std::io::BufReader::new(std::fs::File::open(requests)?)
        .lines()
        .enumerate()
    {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("line {}", n + 1))?;
        let verdict = replay_line_text(&mut vm, &value)?;
        writeln!(out, "{verdict}")?;
    }
    Ok(())
}

/// Temporary files removed on drop.
struct Scratch(Vec<PathBuf>);

impl Scratch {
    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = std::env::temp_dir().join(format!(
            "signalbox-harness-bench-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        self.0.push(path.clone());
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn compile_file(engine: &wasmtime::Engine, path: &Path) -> Result<wasmtime::Module> {
    let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    compile(engine, &wasm).with_context(|| path.display().to_string())
}

fn bench(args: &BenchArgs) -> Result<()> {
    let root = signalbox_tests::root();
    let wasip1 = root.join("target/wasm32-wasip1/wasm-release");
    let filter = args
        .filter
        .clone()
        .unwrap_or_else(|| wasip1.join("signalbox_filter.wasm"));
    let noop = args.noop.clone().unwrap_or_else(|| {
        filter
            .parent()
            .unwrap_or(&wasip1)
            .join("signalbox_fixture_noop.wasm")
    });
    let eval_wasm = args.eval_wasm.clone().unwrap_or_else(|| {
        root.join("target/wasm32-unknown-unknown/wasm-release/signalbox_fixture_eval_bench.wasm")
    });
    let config = args
        .config
        .clone()
        .unwrap_or_else(|| root.join("filter/examples/plugin-config.json"));
    let signalbox = match (&args.signalbox, std::env::var_os("SIGNALBOX_CLI")) {
        (Some(path), _) => path.clone(),
        (None, Some(path)) => PathBuf::from(path),
        (None, None) => std::env::current_exe()?
            .parent()
            .context("this executable has no directory")?
            .join("signalbox"),
    };
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 15 });
    let passes = args.passes.unwrap_or(if args.quick { 1 } else { 5 });
    let mut scratch = Scratch(Vec::new());

    // One bundle for both halves: --bundle, else the configuration's own.
    let config_bytes =
        std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
    let bundle = match &args.bundle {
        Some(path) => bundle_value(path, &signalbox)?,
        None => serde_json::from_slice::<serde_json::Value>(&config_bytes)?
            .get("bundle")
            .cloned()
            .with_context(|| format!("{} has no bundle; pass --bundle", config.display()))?,
    };
    let bundle_json = serde_json::to_vec(&bundle)?;
    let bundle_path = scratch.write("bundle.json", &bundle_json)?;
    // The filter as deployed: replay's edge headers, but no debug verdict header.
    let mut plugin_config: serde_json::Value =
        serde_json::from_slice(&replay_config(&config_bytes, Some(bundle))?)?;
    if let Some(settings) = plugin_config.as_object_mut() {
        settings.insert("debug_verdict_header".into(), false.into());
    }
    let plugin_config = serde_json::to_vec(&plugin_config)?;

    let (requests_path, requests_jsonl) = match &args.requests {
        Some(path) => (
            path.clone(),
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => {
            let n = args.generate.unwrap_or(if args.quick { 200 } else { 2000 });
            let text = workload::jsonl(&workload::requests(n));
            (
                scratch.write("requests.jsonl", text.as_bytes())?,
                text.into_bytes(),
            )
        }
    };
    let requests = String::from_utf8_lossy(&requests_jsonl)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            let value: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("request line {}", n + 1))?;
            Ok(request_from_line(&value)?.1)
        })
        .collect::<Result<Vec<_>>>()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();

    // The host's engine configuration (the default), plus an optional perf map.
    let mut engine_config = wasmtime::Config::new();
    if args.perf_map {
        engine_config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = wasmtime::Engine::new(&engine_config).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // Cranelift compiles one module per thread; the three at once take the longest one's time.
    let (filter_module, noop_module, eval_module) = std::thread::scope(|scope| {
        let compile_in = |path: &Path| {
            let engine = &engine;
            let path = path.to_path_buf();
            scope.spawn(move || compile_file(engine, &path))
        };
        let joined = |handle: std::thread::ScopedJoinHandle<'_, Result<wasmtime::Module>>| {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a compile thread panicked"))?
        };
        let (f, n, e) = (
            compile_in(&filter),
            compile_in(&noop),
            compile_in(&eval_wasm),
        );
        Ok::<_, anyhow::Error>((joined(f)?, joined(n)?, joined(e)?))
    })?;
    let cost = bench::filter_vs_noop(
        &engine,
        &filter_module,
        &noop_module,
        &plugin_config,
        &requests,
        if args.quick { 1 } else { 2 },
        rounds,
    )?;
    let wasm = bench::eval_in_wasm(
        &engine,
        &eval_module,
        &bundle_json,
        &requests_jsonl,
        now,
        passes,
        rounds,
    )?;
    let native = bench::eval_native(
        &signalbox,
        &bundle_path,
        &requests_path,
        now,
        passes,
        rounds,
    )?;
    if wasm.checksum != native.checksum || wasm.requests != native.requests {
        bail!(
            "wasm and native evaluations disagree: {} requests, checksum {:016x} vs {} requests, checksum {:016x}",
            wasm.requests,
            wasm.checksum,
            native.requests,
            native.checksum
        );
    }
    let eval_ratio = wasm.ns_per_request / native.ns_per_request;
    let verdict = |ratio: f64, goal: f64| if ratio <= goal { "met" } else { "missed" };
    let outcomes = cost
        .outcomes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");

    println!(
        "signalbox-harness bench: {} requests, {rounds} rounds, wasmtime (Cranelift), one thread{}",
        requests.len(),
        if args.quick {
            " (--quick: not a measurement)"
        } else {
            ""
        }
    );
    println!();
    println!("  {:<34} {:>12} {:>8}   goal", "", "ns/request", "ratio");
    println!(
        "  {:<34} {:>12.0}",
        "no-op fixture in the host", cost.noop_ns
    );
    println!(
        "  {:<34} {:>12.0} {:>7.2}×   ≤ 2×   {}",
        "Signalbox filter in the host",
        cost.filter_ns,
        cost.ratio(),
        verdict(cost.ratio(), 2.0)
    );
    println!(
        "  {:<34} {:>12.0}",
        "evaluation, native", native.ns_per_request
    );
    println!(
        "  {:<34} {:>12.0} {:>7.2}×   ≤ 1.5× {}",
        "evaluation, wasm",
        wasm.ns_per_request,
        eval_ratio,
        verdict(eval_ratio, 1.5)
    );
    println!();
    println!("  filter answers in the last round: {outcomes}");
    let per_request = |nanos: u64| nanos as f64 / requests.len().max(1) as f64;
    println!("  where the filter's time goes (one profiled pass, ns per request):");
    for (name, calls, nanos) in &cost.profile.callbacks {
        println!(
            "    {:<36} {:>8.0}   {calls} calls",
            name,
            per_request(*nanos)
        );
    }
    let host: u64 = cost.profile.imports.iter().map(|(_, _, n)| n).sum();
    println!(
        "    of which in host functions         {:>8.0}",
        per_request(host)
    );
    for (name, calls, nanos) in cost.profile.imports.iter().take(8) {
        println!(
            "      {:<34} {:>8.0}   {calls} calls",
            name,
            per_request(*nanos)
        );
    }
    println!(
        "  evaluation: assess + decide, no remote context, {passes} passes per sample; checksum {:016x} on both sides",
        wasm.checksum
    );
    println!(
        "{}",
        serde_json::json!({
            "requests": requests.len(),
            "rounds": rounds,
            "passes": passes,
            "quick": args.quick,
            "noop_ns": cost.noop_ns,
            "filter_ns": cost.filter_ns,
            "filter_over_noop": cost.ratio(),
            "filter_outcomes": cost.outcomes,
            "native_eval_ns": native.ns_per_request,
            "wasm_eval_ns": wasm.ns_per_request,
            "wasm_over_native": eval_ratio,
            "checksum": format!("{:016x}", wasm.checksum),
        })
    );
    Ok(())
}

fn serve_edge(runtime: &str, config: &Path, vars: &[String], out: &Path) -> Result<()> {
    use signalbox_tests::js_runtimes::JsRuntime;
    std::fs::create_dir_all(out)?;
    let mut variables = vec![(
        "SIGNALBOX_CONFIG".to_owned(),
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?,
    )];
    for v in vars {
        let Some((k, v)) = v.split_once('=') else {
            bail!("--var {v}: expected NAME=VALUE");
        };
        variables.push((k.to_owned(), v.to_owned()));
    }
    // Each arm keeps its server alive until the process is killed.
    let (port, _keep): (u16, Box<dyn std::any::Any>) = match runtime {
        "wasi-http" => {
            let component = signalbox_tests::root()
                .join("target/wasm32-wasip2/edge-release/signalbox_edge_worker.wasm");
            let server = signalbox_tests::wasi_http::Server::start(
                &component,
                &variables,
                &out.join("wasi-http.log"),
            )?;
            (server.port, Box::new(server))
        }
        "workerd" => {
            let r = JsRuntime::workerd(out, &variables)?;
            (r.port, Box::new(r))
        }
        "deno" => {
            let r = JsRuntime::deno(out, &variables)?;
            (r.port, Box::new(r))
        }
        other => bail!("--runtime {other}: expected wasi-http, workerd or deno"),
    };
    println!("{}", serde_json::json!({ "port": port }));
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
