//! `signalbox-harness` — runs proxy-wasm filters in the in-process wasmtime host.
//!
//! `replay --filter F.wasm --config C.json [--bundle B] --requests R.jsonl` runs each request
//! line (the `signalbox eval` format) through the real `.wasm` and prints the verdict lines the
//! filter reports, so they can be diffed with `signalbox eval`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use signalbox_tests::host::{Filter, VmOptions, compile};
use signalbox_tests::replay::{replay_config, replay_line_text};

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
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Replay {
            filter,
            config,
            bundle,
            requests,
        } => replay(&filter, &config, bundle.as_deref(), &requests),
    }
}

/// Bundle JSON: YAML goes through `signalbox policy build` (list includes resolved).
fn bundle_value(path: &Path) -> Result<serde_json::Value> {
    let is_yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let bytes = if is_yaml {
        let out =
            std::env::temp_dir().join(format!("signalbox-harness-{}.json", std::process::id()));
        let cli = std::env::var_os("SIGNALBOX_CLI")
            .map(PathBuf::from)
            .unwrap_or_else(|| signalbox_tests::root().join("target/debug/signalbox"));
        let status = Command::new(&cli)
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
    let bundle = bundle.map(bundle_value).transpose()?;
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
