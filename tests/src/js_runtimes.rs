//! The JS runtimes the edge worker's wasm-bindgen build is tested in, serving it on loopback:
//! Cloudflare's `workerd` and Deno, both from npm (`edge-worker/js/node_modules`, `npm ci`
//! there), on the modules in `edge-worker/js` and the glue `scripts/build-edge-js` writes to
//! `edge-worker/js/pkg`. The worker's variables are workerd text bindings (files beside its
//! config) and, for Deno, environment variables with `SIGNALBOX_CONFIG` in a file
//! (`SIGNALBOX_CONFIG_FILE`): an environment string is capped at 128 KiB on Linux.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::envoy::free_port;
use crate::root;

/// Where the JS modules and the runtimes are.
fn js_dir() -> PathBuf {
    root().join("edge-worker/js")
}

/// Fails with the command that fixes it when something the runtimes need is missing.
fn require(path: &Path, fix: &str) -> Result<()> {
    if !path.exists() {
        bail!("{} is missing: {fix}", path.display());
    }
    Ok(())
}

/// A runtime process serving the worker; killed when dropped.
pub struct JsRuntime {
    child: Child,
    /// Where it listens (127.0.0.1).
    pub port: u16,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl JsRuntime {
    /// `workerd serve` running the edge worker (`edge-worker/js/worker.mjs` and the glue).
    pub fn workerd(dir: &Path, variables: &[(String, String)]) -> Result<JsRuntime> {
        let js = js_dir();
        require(
            &js.join("pkg/signalbox_edge_worker_bg.wasm"),
            "scripts/build-edge-js",
        )?;
        let modules = [
            ("worker.mjs", js.join("worker.mjs")),
            ("signalbox.mjs", js.join("signalbox.mjs")),
            (
                "pkg/signalbox_edge_worker.js",
                js.join("pkg/signalbox_edge_worker.js"),
            ),
            (
                "pkg/signalbox_edge_worker_bg.wasm",
                js.join("pkg/signalbox_edge_worker_bg.wasm"),
            ),
        ];
        Self::workerd_with(&dir.join("workerd"), &modules, variables)
    }

    /// `workerd serve` running the pass-through fixture (`tests/fixtures/js-passthrough`),
    /// with `ORIGIN_URL`.
    pub fn workerd_passthrough(dir: &Path, origin_url: &str) -> Result<JsRuntime> {
        let fixture = root().join("tests/fixtures/js-passthrough");
        let modules = [
            ("worker.mjs", fixture.join("worker.mjs")),
            ("passthrough.mjs", fixture.join("passthrough.mjs")),
        ];
        let vars = [("ORIGIN_URL".to_owned(), origin_url.to_owned())];
        Self::workerd_with(&dir.join("workerd-passthrough"), &modules, &vars)
    }

    /// `workerd serve` on a config written to `work` with these modules (the first is the
    /// main one; copied beside the config, as its `embed` paths are relative to it), the
    /// variables as `fromEnvironment` bindings, outbound fetches allowed to loopback.
    fn workerd_with(
        work: &Path,
        modules: &[(&str, PathBuf)],
        variables: &[(String, String)],
    ) -> Result<JsRuntime> {
        let bin = js_dir().join("node_modules/.bin/workerd");
        require(&bin, "npm ci --prefix edge-worker/js")?;
        std::fs::create_dir_all(work.join("pkg"))?;
        let mut entries = Vec::new();
        for (name, source) in modules {
            std::fs::copy(source, work.join(name))
                .with_context(|| format!("copying {}", source.display()))?;
            let kind = if name.ends_with(".wasm") {
                "wasm"
            } else {
                "esModule"
            };
            entries.push(format!("(name = \"{name}\", {kind} = embed \"{name}\")"));
        }
        let port = free_port()?;
        // Each variable as a text binding from a file beside the config: a process
        // environment string is capped at 128 KiB on Linux, less than a bundle with its lists.
        std::fs::create_dir_all(work.join("vars"))?;
        let mut bindings = Vec::new();
        for (k, v) in variables {
            std::fs::write(work.join("vars").join(k), v)?;
            bindings.push(format!("(name = \"{k}\", text = embed \"vars/{k}\")"));
        }
        let config = format!(
            r#"using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    # The default outbound network allows only public addresses; origin and the score cache
    # are on loopback here.
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "main")],
);

const worker :Workerd.Worker = (
  modules = [{modules}],
  compatibilityDate = "2026-11-17",
  bindings = [{bindings}],
  globalOutbound = "internet",
);
"#,
            modules = entries.join(", "),
            bindings = bindings.join(", ")
        );
        std::fs::write(work.join("config.capnp"), config)?;
        let log = work.join("workerd.log");
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg(work.join("config.capnp"))
            .arg("--verbose");
        spawn(cmd, port, log)
    }

    /// `deno serve` on `edge-worker/js/deno.mjs`, allowed the network, the environment and
    /// reading the module's files.
    pub fn deno(dir: &Path, variables: &[(String, String)]) -> Result<JsRuntime> {
        let js = js_dir();
        require(
            &js.join("pkg/signalbox_edge_worker_bg.wasm"),
            "scripts/build-edge-js",
        )?;
        Self::deno_with(dir, &js.join("deno.mjs"), variables, "deno")
    }

    /// `deno serve` running the pass-through fixture, with `ORIGIN_URL`.
    pub fn deno_passthrough(dir: &Path, origin_url: &str) -> Result<JsRuntime> {
        let main = root().join("tests/fixtures/js-passthrough/deno.mjs");
        let vars = [("ORIGIN_URL".to_owned(), origin_url.to_owned())];
        Self::deno_with(dir, &main, &vars, "deno-passthrough")
    }

    fn deno_with(
        dir: &Path,
        main: &Path,
        variables: &[(String, String)],
        name: &str,
    ) -> Result<JsRuntime> {
        let bin = js_dir().join("node_modules/.bin/deno");
        require(&bin, "npm ci --prefix edge-worker/js")?;
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--quiet", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--allow-net", "--allow-env", "--allow-read"])
            .arg(main)
            .env("DENO_NO_UPDATE_CHECK", "1")
            .env("DENO_DIR", dir.join("deno-dir"));
        for (k, v) in variables {
            if k == "SIGNALBOX_CONFIG" {
                let file = dir.join(format!("{name}-config.json"));
                std::fs::write(&file, v)?;
                cmd.env("SIGNALBOX_CONFIG_FILE", file);
            } else {
                cmd.env(k, v);
            }
        }
        spawn(cmd, port, log)
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn spawn(mut cmd: Command, port: u16, log: PathBuf) -> Result<JsRuntime> {
    let out = std::fs::File::create(&log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting the runtime")?;
    let mut runtime = JsRuntime { child, port, log };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(runtime);
        }
        if let Ok(Some(status)) = runtime.child.try_wait() {
            bail!("the runtime exited ({status}): {}", runtime.output());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = runtime.child.kill();
    bail!("the runtime did not listen on {port}: {}", runtime.output())
}

impl Drop for JsRuntime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
