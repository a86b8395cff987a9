//! The measurements behind `signalbox-harness bench`, in one process and one run:
//!
//! - [`filter_vs_noop`]: per-request cost of a filter and of the no-op fixture, two VMs in the
//!   same host, fed the same requests in interleaved rounds;
//! - [`eval_in_wasm`] and [`eval_native`]: the policy core's shared evaluation loop
//!   (`signalbox_test_kit::bench::EvalLoop`) timed inside wasmtime (the
//!   `tests/fixtures/eval-bench` module) and natively (`signalbox bench-eval`, a subprocess —
//!   this crate does not link the core, so the two cannot share anything but the inputs).
//!   Their checksums must agree: that is the proof both evaluated the same verdicts.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use wasmtime::{Engine, Instance, Module, Store, TypedFunc};

use crate::host::{Filter, Request, VmOptions};

/// The middle value (the upper one of an even count); `0.0` for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// A filter's cost against the no-op fixture's.
#[derive(Debug, Clone)]
pub struct FilterCost {
    /// Median ns per request through the no-op fixture.
    pub noop_ns: f64,
    /// Median ns per request through the filter.
    pub filter_ns: f64,
    /// How the filter answered in the last round: `"200 upstream"`, `"403 local"`, … → count.
    pub outcomes: BTreeMap<String, usize>,
    /// Where the filter's time went in one more, profiled pass (not part of the timing).
    pub profile: crate::host::Profile,
}

impl FilterCost {
    /// Filter ÷ no-op.
    pub fn ratio(&self) -> f64 {
        self.filter_ns / self.noop_ns
    }
}

/// One timed pass over the requests: ns per request, and the outcomes.
fn pass(vm: &mut Filter, requests: &[Request]) -> Result<(f64, BTreeMap<String, usize>)> {
    let mut outcomes = BTreeMap::new();
    let started = Instant::now();
    for request in requests {
        let response = vm.request(request)?;
        let key = format!(
            "{} {}",
            response.status,
            if response.local { "local" } else { "upstream" }
        );
        *outcomes.entry(key).or_insert(0) += 1;
    }
    let elapsed = started.elapsed().as_nanos() as f64;
    Ok((elapsed / requests.len().max(1) as f64, outcomes))
}

/// Runs `requests` through a no-op VM and a filter VM (same engine, same plugin
/// configuration): `warmup` untimed passes each, then `rounds` timed passes each, alternating
/// which goes first so drift hits both alike.
pub fn filter_vs_noop(
    engine: &Engine,
    filter: &Module,
    noop: &Module,
    plugin_config: &[u8],
    requests: &[Request],
    warmup: usize,
    rounds: usize,
) -> Result<FilterCost> {
    ensure!(!requests.is_empty() && rounds > 0, "nothing to time");
    let options = VmOptions {
        plugin_config: plugin_config.to_vec(),
        ..VmOptions::default()
    };
    let mut noop_vm = Filter::start(engine, noop, &options).context("starting the no-op")?;
    let mut filter_vm = Filter::start(engine, filter, &options).context("starting the filter")?;
    for _ in 0..warmup {
        pass(&mut noop_vm, requests)?;
        pass(&mut filter_vm, requests)?;
    }
    let (mut noop_ns, mut filter_ns) = (Vec::new(), Vec::new());
    let mut outcomes = BTreeMap::new();
    for round in 0..rounds {
        if round % 2 == 0 {
            noop_ns.push(pass(&mut noop_vm, requests)?.0);
        }
        let (ns, seen) = pass(&mut filter_vm, requests)?;
        filter_ns.push(ns);
        outcomes = seen;
        if round % 2 == 1 {
            noop_ns.push(pass(&mut noop_vm, requests)?.0);
        }
    }
    filter_vm.set_profiling(true);
    pass(&mut filter_vm, requests)?;
    let profile = filter_vm.profile();
    Ok(FilterCost {
        noop_ns: median(&noop_ns),
        filter_ns: median(&filter_ns),
        outcomes,
        profile,
    })
}

/// One side of the evaluation comparison.
#[derive(Debug, Clone)]
pub struct EvalTiming {
    /// Requests per pass.
    pub requests: usize,
    /// Median ns per evaluation.
    pub ns_per_request: f64,
    /// Every sample's ns per evaluation.
    pub samples: Vec<f64>,
    /// `EvalLoop::run(passes)`'s checksum.
    pub checksum: u64,
}

/// The eval-bench module's exports.
struct EvalModule {
    store: Store<()>,
    instance: Instance,
    run: TypedFunc<i32, i64>,
}

impl EvalModule {
    fn start(engine: &Engine, module: &Module) -> Result<Self> {
        let mut store = Store::new(engine, ());
        let instance = Instance::new(&mut store, module, &[])
            .map_err(|e| anyhow!("instantiating the eval-bench module: {e:?}"))?;
        let run = instance
            .get_typed_func::<i32, i64>(&mut store, "run")
            .map_err(|e| anyhow!("export run: {e:?}"))?;
        Ok(EvalModule {
            store,
            instance,
            run,
        })
    }

    fn write_input(&mut self, kind: i32, bytes: &[u8]) -> Result<()> {
        let input = self
            .instance
            .get_typed_func::<(i32, i32), i32>(&mut self.store, "input")
            .map_err(|e| anyhow!("export input: {e:?}"))?;
        let len = i32::try_from(bytes.len()).context("input larger than 2 GiB")?;
        let at = input
            .call(&mut self.store, (kind, len))
            .map_err(|e| anyhow!("input: {e:?}"))?;
        let at = usize::try_from(at).map_err(|_| anyhow!("input refused kind {kind}"))?;
        self.memory()?
            .write(&mut self.store, at, bytes)
            .map_err(|e| anyhow!("writing input {kind}: {e}"))
    }

    fn memory(&mut self) -> Result<wasmtime::Memory> {
        self.instance
            .get_memory(&mut self.store, "memory")
            .context("the module exports no memory")
    }

    fn call_i32(&mut self, name: &str) -> Result<i32> {
        self.instance
            .get_typed_func::<(), i32>(&mut self.store, name)
            .and_then(|f| f.call(&mut self.store, ()))
            .map_err(|e| anyhow!("{name}: {e:?}"))
    }

    /// Loads the inputs; the number of requests.
    fn setup(&mut self, bundle_json: &[u8], requests_jsonl: &[u8], now: u64) -> Result<usize> {
        self.write_input(0, bundle_json)?;
        self.write_input(1, requests_jsonl)?;
        let setup = self
            .instance
            .get_typed_func::<i64, i32>(&mut self.store, "setup")
            .map_err(|e| anyhow!("export setup: {e:?}"))?;
        let now = i64::try_from(now).context("now")?;
        let n = setup
            .call(&mut self.store, now)
            .map_err(|e| anyhow!("setup: {e:?}"))?;
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let (at, len) = (self.call_i32("message_ptr")?, self.call_i32("message_len")?);
        let mut message = vec![0; usize::try_from(len).unwrap_or(0)];
        self.memory()?
            .read(&self.store, usize::try_from(at).unwrap_or(0), &mut message)
            .map_err(|e| anyhow!("reading the setup error: {e}"))?;
        bail!("eval-bench setup: {}", String::from_utf8_lossy(&message))
    }

    fn run(&mut self, passes: u32) -> Result<u64> {
        let passes = i32::try_from(passes).context("passes")?;
        let checksum = self
            .run
            .call(&mut self.store, passes)
            .map_err(|e| anyhow!("run: {e:?}"))?;
        Ok(u64::from_ne_bytes(checksum.to_ne_bytes()))
    }
}

/// Times the shared evaluation loop inside wasmtime: one untimed pass, then `samples` calls
/// of `run(passes)`.
pub fn eval_in_wasm(
    engine: &Engine,
    module: &Module,
    bundle_json: &[u8],
    requests_jsonl: &[u8],
    now: u64,
    passes: u32,
    samples: usize,
) -> Result<EvalTiming> {
    let mut vm = EvalModule::start(engine, module)?;
    let requests = vm.setup(bundle_json, requests_jsonl, now)?;
    ensure!(requests > 0 && passes > 0 && samples > 0, "nothing to time");
    vm.run(1)?;
    let evaluations = requests as f64 * f64::from(passes);
    let mut times = Vec::new();
    let mut checksum = 0;
    for _ in 0..samples {
        let started = Instant::now();
        checksum = vm.run(passes)?;
        times.push(started.elapsed().as_nanos() as f64 / evaluations);
    }
    Ok(EvalTiming {
        requests,
        ns_per_request: median(&times),
        samples: times,
        checksum,
    })
}

/// Times the same loop natively: runs `signalbox bench-eval` and reads its JSON line.
pub fn eval_native(
    signalbox: &Path,
    bundle: &Path,
    requests: &Path,
    now: u64,
    passes: u32,
    samples: usize,
) -> Result<EvalTiming> {
    let output = Command::new(signalbox)
        .arg("bench-eval")
        .arg("--bundle")
        .arg(bundle)
        .arg("--requests")
        .arg(requests)
        .args(["--rounds", &passes.to_string()])
        .args(["--samples", &samples.to_string()])
        .args(["--now", &now.to_string()])
        .output()
        .with_context(|| format!("running {}", signalbox.display()))?;
    if !output.status.success() {
        bail!(
            "{} bench-eval failed: {}",
            signalbox.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let report: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{} bench-eval printed no JSON", signalbox.display()))?;
    let field = |key: &str| {
        report
            .get(key)
            .with_context(|| format!("bench-eval: no {key}"))
    };
    let checksum = field("checksum")?.as_str().context("checksum")?;
    Ok(EvalTiming {
        requests: usize::try_from(field("requests")?.as_u64().context("requests")?)?,
        ns_per_request: field("ns_per_request")?
            .as_f64()
            .context("ns_per_request")?,
        samples: field("samples")?
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default(),
        checksum: u64::from_str_radix(checksum, 16).context("checksum")?,
    })
}
