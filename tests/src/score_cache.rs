//! The real score cache (`target/debug/signalbox-cache`, built by `cargo test --workspace`)
//! as a process on loopback, for end-to-end runs with Envoy: an embedded store in a temporary
//! directory, three tokens (read for edges, ingest for origin, admin for people) passed
//! through the environment, and a small JSON client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::envoy::free_port;
use crate::http;
use crate::root;

/// The edges' token (scope `read`).
pub const EDGE_TOKEN: &str = "edge-token-for-tests";
/// Origin's token (scope `ingest`).
pub const ORIGIN_TOKEN: &str = "origin-token-for-tests";
/// The security team's token (scope `admin`).
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

/// A running cache.
pub struct ScoreCache {
    child: Child,
    /// Its port.
    pub port: u16,
    args: Vec<String>,
}

/// The binary.
pub fn binary() -> Result<PathBuf> {
    let path = root().join("target/debug/signalbox-cache");
    if !path.exists() {
        bail!(
            "{} is missing: cargo build -p signalbox-score-cache (cargo test --workspace builds it)",
            path.display()
        );
    }
    Ok(path)
}

impl ScoreCache {
    /// Starts `signalbox-cache serve` with `bundle` (JSON, unsigned allowed) and its data in
    /// `dir`, following the store every 100 ms.
    pub fn start(dir: &Path, bundle: &Path) -> Result<Self> {
        Self::start_with(dir, bundle, &[])
    }

    /// [`ScoreCache::start`] with more `serve` arguments (e.g. `--trusted-keys FILE`).
    pub fn start_with(dir: &Path, bundle: &Path, extra: &[String]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let tokens = dir.join("tokens.yaml");
        std::fs::write(
            &tokens,
            "tokens:\n  - {name: edges, token_env: SB_TEST_EDGE_TOKEN, scopes: [read]}\n  - {name: origin, token_env: SB_TEST_ORIGIN_TOKEN, scopes: [ingest]}\n  - {name: soc, token_env: SB_TEST_ADMIN_TOKEN, scopes: [admin]}\n",
        )?;
        let port = free_port()?;
        let args = vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--data".to_owned(),
            dir.join("data").display().to_string(),
            "--bundle".to_owned(),
            bundle.display().to_string(),
            "--allow-unsigned".to_owned(),
            "--tokens".to_owned(),
            tokens.display().to_string(),
            "--follow-ms".to_owned(),
            "100".to_owned(),
        ];
        let args: Vec<String> = args.into_iter().chain(extra.iter().cloned()).collect();
        let child = spawn(&args)?;
        let cache = ScoreCache { child, port, args };
        cache.wait_ready()?;
        Ok(cache)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = http::send(self.port, "GET", "/healthz", &host(), b"")
                && r.status == 200
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("signalbox-cache did not start on {}", self.port)
    }

    /// Stops it (SIGKILL).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.child = spawn(&self.args)?;
        self.wait_ready()
    }

    /// A JSON request with `token`: (status, body as JSON or a string).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        self.call_raw(method, path, token, bytes.as_deref())
    }

    /// A request with a raw JSON body (a signed bundle goes out byte for byte).
    pub fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Value)> {
        let mut headers = host();
        headers.push((
            "authorization".to_owned(),
            format!("Bearer {token}").into_bytes(),
        ));
        if body.is_some() {
            headers.push(("content-type".to_owned(), b"application/json".to_vec()));
        }
        let r = http::send(self.port, method, path, &headers, body.unwrap_or_default())?;
        let value = serde_json::from_slice(&r.body).unwrap_or(Value::String(r.text()));
        Ok((r.status, value))
    }
}

fn host() -> Vec<(String, Vec<u8>)> {
    vec![("host".to_owned(), b"signalbox-cache".to_vec())]
}

fn spawn(args: &[String]) -> Result<Child> {
    Command::new(binary()?)
        .args(args)
        .env("SB_TEST_EDGE_TOKEN", EDGE_TOKEN)
        .env("SB_TEST_ORIGIN_TOKEN", ORIGIN_TOKEN)
        .env("SB_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting signalbox-cache")
}

impl Drop for ScoreCache {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay in front of the cache that can hold every request for a while: the score cache
/// "answering slowly", as a congested network or an overloaded cache looks to an edge. Each
/// chunk the edge sends waits `delay` before it is forwarded; answers come back at once.
pub struct SlowRelay {
    /// Where edges connect.
    pub port: u16,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SlowRelay {
    /// Relays 127.0.0.1:`port` (a free one) to 127.0.0.1:`upstream`, without delay at first.
    pub fn start(upstream: u16) -> Result<Self> {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let delay_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let delay = delay_ms.clone();
        std::thread::spawn(move || {
            for edge in listener.incoming().flatten() {
                let Ok(cache) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue; // the cache is down: the edge sees the connection close
                };
                let (Ok(mut edge_read), Ok(mut cache_read)) = (edge.try_clone(), cache.try_clone())
                else {
                    continue;
                };
                let (mut edge_write, mut cache_write) = (edge, cache);
                let delay = delay.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = std::io::Read::read(&mut edge_read, &mut buf) {
                        let ms = delay.load(Ordering::Relaxed);
                        if ms > 0 {
                            std::thread::sleep(std::time::Duration::from_millis(ms));
                        }
                        let chunk = buf.get(..n).unwrap_or_default();
                        if std::io::Write::write_all(&mut cache_write, chunk).is_err() {
                            break;
                        }
                    }
                    let _ = cache_write.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut cache_read, &mut edge_write);
                    let _ = edge_write.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Ok(SlowRelay { port, delay_ms })
    }

    /// Holds every request this long from now on (0: none).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// The golden bundle (`tests/scenarios/bundles/golden.yaml`) as JSON in `dir`, optionally
/// changed by `edit` (e.g. the cache's `scoring`), for a cache's own scoring or an edge's
/// configuration.
pub fn golden_json(dir: &Path, edit: impl FnOnce(&mut Value)) -> Result<PathBuf> {
    let text = std::fs::read_to_string(root().join("tests/scenarios/bundles/golden.yaml"))?;
    let mut value: Value = serde_norway::from_str(&text)?;
    edit(&mut value);
    std::fs::create_dir_all(dir)?;
    let path = dir.join("golden.json");
    std::fs::write(&path, value.to_string())?;
    Ok(path)
}
