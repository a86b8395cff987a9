//! Real Envoy for tests: render a config with `scripts/envoy-config`, start Envoy on free
//! loopback ports, wait until it is ready, and stop it when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::root;

/// Ports of one Envoy instance.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Admin (loopback).
    pub admin: u16,
    /// Edge listener: `use_remote_address: true`, no trusted hops.
    pub edge: u16,
    /// One trusted hop in front.
    pub lb: u16,
    /// Lab listener: client address from `x-forwarded-for` (tests only).
    pub lab: u16,
    /// The demo origin.
    pub origin: u16,
}

/// A free loopback port (bound and released; good enough on a test machine).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `N` distinct free loopback ports: all are held until every one is chosen, so the kernel
/// cannot hand the same port out twice (calling [`free_port`] N times can).
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let held = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&held) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// The Envoy binary: `$SIGNALBOX_ENVOY`, or the one `scripts/install-envoy` installs.
pub fn envoy_binary() -> Result<PathBuf> {
    let path = std::env::var_os("SIGNALBOX_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-envoy/bin/envoy"));
    if !path.exists() {
        bail!(
            "no Envoy at {}: run scripts/install-envoy (or set SIGNALBOX_ENVOY)",
            path.display()
        );
    }
    Ok(path)
}

/// What to render.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bundle file (YAML or JSON).
    pub bundle: PathBuf,
    /// Output directory for the config and keys.
    pub out: PathBuf,
    /// JSON merged into the plugin configuration.
    pub plugin_extra: String,
    /// Envoy worker threads.
    pub concurrency: u32,
    /// A loopback port to add as the `signalbox_cache` cluster (the score cache).
    pub cache_port: Option<u16>,
    /// Extra environment for Envoy (the VM reads `SIGNALBOX_CACHE_TOKEN` from it).
    pub env: Vec<(String, String)>,
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    /// Its ports.
    pub ports: Ports,
    /// Its log file.
    pub log: PathBuf,
    /// Its rendered config directory.
    pub dir: PathBuf,
}

/// Renders the config (lab mode) into `opts.out`.
pub fn render(opts: &Options, ports: &Ports) -> Result<()> {
    let r = root();
    let status = Command::new("python3")
        .arg(r.join("scripts/envoy-config"))
        .args(["--lab", "--bundle"])
        .arg(&opts.bundle)
        .arg("--out")
        .arg(&opts.out)
        .arg("--signalbox")
        .arg(r.join("target/debug/signalbox"))
        .args(["--plugin-extra", &opts.plugin_extra])
        .args([
            "--admin-port",
            &ports.admin.to_string(),
            "--edge-port",
            &ports.edge.to_string(),
        ])
        .args([
            "--lb-port",
            &ports.lb.to_string(),
            "--lab-port",
            &ports.lab.to_string(),
        ])
        .args(["--origin-port", &ports.origin.to_string()])
        .args(
            opts.cache_port
                .map(|p| vec!["--cache-port".to_owned(), p.to_string()])
                .unwrap_or_default(),
        )
        // Another build of the filter (e.g. an older commit's, to show a hole open).
        .args(
            std::env::var_os("SIGNALBOX_FILTER_WASM")
                .map(|w| vec![std::ffi::OsString::from("--wasm"), w])
                .unwrap_or_default(),
        )
        .stdout(Stdio::null())
        .status()
        .context("running scripts/envoy-config")?;
    if !status.success() {
        bail!("scripts/envoy-config failed");
    }
    Ok(())
}

impl Envoy {
    /// Renders and starts Envoy; waits for `/ready`. Fails with Envoy's log if it exits.
    ///
    /// The ports come from [`free_ports`], which releases them before Envoy binds: another
    /// process (a test's outbound connection, another Envoy) can take one in between. When
    /// Envoy exits because an address or base id is taken, it is started again on fresh
    /// ports (three tries); any other exit fails at once.
    pub fn start(opts: &Options) -> Result<Envoy> {
        let mut tries = 0;
        loop {
            tries += 1;
            match Envoy::start_once(opts) {
                Ok(envoy) => return Ok(envoy),
                Err(StartError::Taken(log)) if tries < 3 => {
                    eprintln!(
                        "envoy: a port or base id was taken, retrying: {}",
                        log.trim()
                    );
                }
                Err(StartError::Taken(log)) => {
                    bail!("envoy could not bind after {tries} tries: {log}")
                }
                Err(StartError::Other(e)) => return Err(e),
            }
        }
    }

    fn start_once(opts: &Options) -> std::result::Result<Envoy, StartError> {
        let [admin, edge, lb, lab, origin] = free_ports()?;
        let ports = Ports {
            admin,
            edge,
            lb,
            lab,
            origin,
        };
        render(opts, &ports)?;
        let secret = std::fs::read_to_string(opts.out.join("secret"))?;
        let log = opts.out.join("envoy.log");
        let child = Command::new(envoy_binary()?)
            .arg("-c")
            .arg(opts.out.join("envoy.yaml"))
            .args(["--concurrency", &opts.concurrency.to_string()])
            .args(["--base-id", &ports.admin.to_string()])
            .args(["--log-level", "info"])
            .env("SIGNALBOX_SECRET", secret.trim())
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log)?,
            ))
            .spawn()
            .context("starting envoy")?;
        let mut envoy = Envoy {
            child,
            ports,
            log,
            dir: opts.out.clone(),
        };
        match envoy.wait_ready() {
            Ok(()) => Ok(envoy),
            Err(e) => {
                let log = envoy.log_text();
                match log.lines().find(|l| is_bind_failure(l)) {
                    Some(line) => Err(StartError::Taken(line.to_owned())),
                    None => Err(StartError::Other(e)),
                }
            }
        }
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                let log = self.log_text();
                bail!(
                    "envoy exited ({status}); its errors:\n{}\nits whole log:\n{log}",
                    error_lines(&log)
                );
            }
            if let Ok(r) =
                crate::http::send(self.ports.admin, "GET", "/ready", &admin_headers(), b"")
                && r.status == 200
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("envoy not ready in time:\n{}", self.log_text())
    }

    /// Envoy's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Envoy's admin `/stats` as text.
    pub fn stats(&self) -> Result<String> {
        Ok(crate::http::send(self.ports.admin, "GET", "/stats", &admin_headers(), b"")?.text())
    }
}

/// Why one start failed: a port or base id another process holds, or anything else.
enum StartError {
    Taken(String),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for StartError {
    fn from(e: E) -> Self {
        StartError::Other(e.into())
    }
}

/// A log line saying Envoy could not bind a listener/admin address or take its base id.
fn is_bind_failure(line: &str) -> bool {
    let line = line.to_ascii_lowercase();
    (line.contains("critical") || line.contains("error"))
        && (line.contains("address already in use")
            || line.contains("cannot bind")
            || line.contains("unable to bind")
            || line.contains("duplicate address")
            || line.contains("base_id")
            || line.contains("base id"))
}

/// Envoy's `[critical]` and `[error]` lines, which say why it exited (the whole log is long).
fn error_lines(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("][critical][") || l.contains("][error]["))
        .collect::<Vec<_>>()
        .join("\n")
}

fn admin_headers() -> Vec<(String, Vec<u8>)> {
    vec![("host".to_owned(), b"localhost".to_vec())]
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs Envoy on a config and returns (exit success, log) — for configs that must be refused.
pub fn run_to_exit(config: &Path, timeout: Duration) -> Result<(bool, String)> {
    let log = config.with_extension("log");
    let mut child = Command::new(envoy_binary()?)
        .arg("-c")
        .arg(config)
        .args(["--concurrency", "1", "--base-id", &free_port()?.to_string()])
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(&log)?,
        ))
        .spawn()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((
                status.success(),
                std::fs::read_to_string(&log).unwrap_or_default(),
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok((true, std::fs::read_to_string(&log).unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An Envoy process on a config file, one worker, messages-only log (`--log-format %v`,
/// `wasm:info`), ready when [`EnvoyProcess::spawn`] returns; killed when dropped.
pub struct EnvoyProcess {
    child: Child,
    /// Its log file.
    pub log: PathBuf,
}

impl EnvoyProcess {
    /// Starts Envoy on `config` and waits until its admin port `admin` reports ready.
    pub fn spawn(config: &Path, log: &Path, admin: u16) -> Result<EnvoyProcess> {
        let child = Command::new(envoy_binary()?)
            .arg("-c")
            .arg(config)
            .args(["--concurrency", "1", "--base-id", &admin.to_string()])
            .args(["--log-level", "warn", "--component-log-level", "wasm:info"])
            .args(["--log-format", "%v"])
            .stdout(Stdio::from(std::fs::File::create(log)?))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(log)?,
            ))
            .spawn()
            .context("starting envoy")?;
        let mut envoy = EnvoyProcess {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = envoy.child.try_wait()? {
                bail!("envoy exited ({status}):\n{}", envoy.log_text());
            }
            let ready = crate::http::send(admin, "GET", "/ready", &admin_headers(), b"")
                .is_ok_and(|r| r.status == 200);
            if ready {
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                bail!("envoy not ready:\n{}", envoy.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
