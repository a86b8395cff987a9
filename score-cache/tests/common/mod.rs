//! What the score cache's tests share: a bundle with scoring patterns, a real `redis-server`
//! in a temporary directory (Debian's package), the cache binary as a real process, and a
//! small HTTP client.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use signalbox_policy::Policy;

/// The test bundle: a one-day half-life, a failed-login burst and the account-takeover
/// sequence.
pub const BUNDLE: &str = r#"{
  "format_version": 1, "revision": 7, "min_engine_version": "0.1.0",
  "scoring": {
    "half_life_seconds": 86400, "trend_half_life_seconds": 3600, "context_ttl_seconds": 15,
    "velocity": [{"code": "login_burst", "event_type": "failed_login", "at_least": 3, "within_seconds": 300, "points": 20}],
    "sequences": [{"code": "account_takeover", "event_types": ["password_reset", "email_change", "mfa_disabled"], "within_seconds": 3600, "points": 50}]
  }
}"#;

/// The test bundle compiled.
pub fn policy() -> Policy {
    Policy::from_json_slice(BUNDLE.as_bytes()).unwrap()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `redis-server` is installed (`.ci/run` installs Debian's package).
pub fn redis_installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A real Redis in a temporary directory, with AOF fsynced on every write.
pub struct Redis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    /// Starts one and waits until it answers.
    pub fn start() -> Self {
        assert!(
            redis_installed(),
            "redis-server is not installed (apt-get install -y redis-server; .ci/run does)"
        );
        let mut redis = Redis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if redis_ping(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory (its AOF replays).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Tokens every test uses.
pub const READ: &str = "edge-token";
pub const INGEST: &str = "origin-token";
pub const ADMIN: &str = "soc-token";
/// A person's token that only looks (`view`).
pub const VIEW: &str = "analyst-token";

/// A tokens file for the four.
pub fn tokens_file(dir: &Path) -> PathBuf {
    let d = signalbox_score_cache::auth::digest_hex;
    let path = dir.join("tokens.yaml");
    std::fs::write(
        &path,
        format!(
            "tokens:\n  - {{name: edges, sha256: {}, scopes: [read]}}\n  - {{name: origin, sha256: {}, scopes: [ingest]}}\n  - {{name: soc, sha256: {}, scopes: [admin]}}\n  - {{name: analysts, sha256: {}, scopes: [view]}}\n",
            d(READ),
            d(INGEST),
            d(ADMIN),
            d(VIEW)
        ),
    )
    .unwrap();
    path
}

/// The tokens, in memory.
pub fn tokens() -> signalbox_score_cache::auth::Tokens {
    use signalbox_score_cache::auth::{Scope, Tokens};
    let mut t = Tokens::single("edges", READ, &[Scope::Read]);
    t.extend(Tokens::single("origin", INGEST, &[Scope::Ingest]));
    t.extend(Tokens::single("soc", ADMIN, &[Scope::Admin]));
    t.extend(Tokens::single("analysts", VIEW, &[Scope::View]));
    t
}

/// The cache binary running as a real process on loopback.
pub struct CacheProcess {
    pub port: u16,
    child: Child,
    pub args: Vec<String>,
}

impl CacheProcess {
    /// Starts `signalbox-cache serve` with `store_args` (`--data DIR` or `--redis URL`).
    pub fn start(work: &Path, store_args: &[String]) -> Self {
        let bundle = work.join("bundle.json");
        std::fs::write(&bundle, BUNDLE).unwrap();
        let tokens = tokens_file(work);
        let port = free_port();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--bundle".into(),
            bundle.display().to_string(),
            "--allow-unsigned".into(),
            "--tokens".into(),
            tokens.display().to_string(),
            "--follow-ms".into(),
            "100".into(),
            "--bench-routes".into(),
        ];
        args.extend(store_args.iter().cloned());
        let child = Self::spawn(&args);
        let p = CacheProcess { port, child, args };
        if !p.args.iter().any(|a| a == "--tls-cert") {
            p.wait_ready();
        }
        p
    }

    fn spawn(args: &[String]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_signalbox-cache"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok((200, _)) = get(self.port, "/healthz", None) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("signalbox-cache did not start on {}", self.port);
    }

    /// `kill -9`, then start again with the same arguments.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.args);
        self.wait_ready();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CacheProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

fn body_of(mut r: ureq::http::Response<ureq::Body>) -> Result<(u16, String), String> {
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    Ok((status, text))
}

/// GET with an optional bearer token: (status, body).
pub fn get(port: u16, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let mut req = agent().get(&format!("http://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    body_of(req.call().map_err(|e| e.to_string())?)
}

/// POST JSON with a bearer token: (status, body).
pub fn post(port: u16, path: &str, token: &str, body: &str) -> Result<(u16, String), String> {
    let r = agent()
        .post(&format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", &format!("Bearer {token}"))
        .header("content-type", "application/json")
        .send(body)
        .map_err(|e| e.to_string())?;
    body_of(r)
}

/// DELETE with a bearer token.
pub fn delete(port: u16, path: &str, token: &str) -> Result<(u16, String), String> {
    let r = agent()
        .delete(&format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", &format!("Bearer {token}"))
        .call()
        .map_err(|e| e.to_string())?;
    body_of(r)
}
