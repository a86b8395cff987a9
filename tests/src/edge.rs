//! What every edge worker runtime is checked against: a real origin that echoes what it
//! received, the real score cache (`signalbox-cache`, embedded store) behind a relay that can
//! make it slow, the worker's variables for them, and the checks (`check_worker`) each runtime
//! test (WASI HTTP host, workerd, Deno) runs against its own worker on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use crate::http::{Response, send};
use crate::root;
use crate::score_cache::{
    ADMIN_TOKEN, EDGE_TOKEN, ORIGIN_TOKEN, ScoreCache, SlowRelay, golden_json,
};

const GIO_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
/// The challenge secret the workers get (`SIGNALBOX_SECRET`).
pub const SECRET: &str = "k1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";

/// An origin that answers every request with the request head it received (one line per
/// header) and sets an `x-signalbox-score` header of its own, which must never reach the
/// client. Keeps the last request head for the test to read.
pub struct EchoOrigin {
    /// Its loopback port.
    pub port: u16,
    last: Arc<Mutex<Vec<(String, String)>>>,
}

impl EchoOrigin {
    /// Starts it on a free loopback port.
    pub fn start() -> Result<EchoOrigin> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let last: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let seen = last.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let Ok(read_half) = conn.try_clone() else {
                        return;
                    };
                    let mut reader = BufReader::new(read_half);
                    loop {
                        let mut head = Vec::new();
                        let mut line = String::new();
                        let mut length = 0usize;
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let l = line.trim_end();
                            if l.is_empty() {
                                break;
                            }
                            if let Some((n, v)) = l.split_once(':') {
                                let (n, v) = (n.trim().to_ascii_lowercase(), v.trim().to_owned());
                                if n == "content-length" {
                                    length = v.parse().unwrap_or(0);
                                }
                                head.push((n, v));
                            } else {
                                head.push((":request".into(), l.to_owned()));
                            }
                        }
                        let chunked = head.iter().any(|(n, v)| {
                            n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked")
                        });
                        let body = if chunked {
                            match read_chunked(&mut reader) {
                                Some(b) => b,
                                None => return,
                            }
                        } else {
                            let mut body = vec![0u8; length];
                            if reader.read_exact(&mut body).is_err() {
                                return;
                            }
                            body
                        };
                        let text: String =
                            head.iter().map(|(n, v)| format!("{n}: {v}\n")).collect();
                        head.push((":body".into(), String::from_utf8_lossy(&body).into_owned()));
                        if let Ok(mut last) = seen.lock() {
                            *last = head;
                        }
                        let mut w = &conn;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-signalbox-score: 0\r\nx-origin: yes\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if w.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(EchoOrigin { port, last })
    }

    /// The head of the last request it received: (lower-case name, value), the request line
    /// as `:request`.
    pub fn last(&self) -> Vec<(String, String)> {
        self.last.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// A chunked body (RFC 9112 §7.1), trailers skipped.
fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            loop {
                line.clear();
                reader.read_line(&mut line).ok()?;
                if line.trim().is_empty() {
                    return Some(body);
                }
            }
        }
        let mut chunk = vec![0u8; size];
        reader.read_exact(&mut chunk).ok()?;
        body.extend_from_slice(&chunk);
        line.clear();
        reader.read_line(&mut line).ok()?;
    }
}

/// Giovanni's browser (current Chrome on macOS) from `ip`, behind one trusted proxy.
pub fn browser(ip: &str) -> Vec<(String, Vec<u8>)> {
    [
        ("host", "shop.example"),
        ("user-agent", GIO_UA),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "it-IT,it;q=0.9,en;q=0.8"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "none"),
        ("sec-fetch-dest", "document"),
        ("x-forwarded-for", ip),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
    .collect()
}

/// The debug verdict header of a reply (tests only: panics without one).
#[allow(clippy::panic)]
fn verdict(r: &Response) -> Value {
    r.header("x-signalbox-verdict")
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_else(|| panic!("no verdict header (status {}): {}", r.status, r.text()))
}

/// Origin, cache and relay for one runtime's test, in `target/e2e/<name>`.
pub struct EdgeRig {
    /// The echo origin.
    pub origin: EchoOrigin,
    /// The score cache.
    pub cache: ScoreCache,
    /// The relay the worker reaches the cache through.
    pub relay: SlowRelay,
    /// The working directory.
    pub dir: PathBuf,
    golden: Value,
}

impl EdgeRig {
    /// Starts them.
    pub fn start(name: &str) -> Result<EdgeRig> {
        Self::start_with(name, &[])
    }

    /// [`EdgeRig::start`], with more `signalbox-cache serve` arguments (`cache_args`, with
    /// `{dir}` standing for the rig's directory).
    pub fn start_with(name: &str, cache_args: &[&str]) -> Result<EdgeRig> {
        let dir = root().join("target/e2e").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let origin = EchoOrigin::start()?;
        // The cache answers with a one-second TTL (isolates keep answers that long).
        let cache_bundle = golden_json(&dir, |b| b["scoring"] = json!({"context_ttl_seconds": 1}))?;
        let dir_text = dir.display().to_string();
        let cache_args: Vec<String> = cache_args
            .iter()
            .map(|a| a.replace("{dir}", &dir_text))
            .collect();
        let cache = ScoreCache::start_with(&dir.join("cache"), &cache_bundle, &cache_args)?;
        let relay = SlowRelay::start(cache.port)?;
        let golden: Value =
            serde_json::from_slice(&std::fs::read(golden_json(&dir.join("edge"), |_| {})?)?)?;
        Ok(EdgeRig {
            origin,
            cache,
            relay,
            dir,
            golden,
        })
    }

    /// The worker's variables: the golden bundle (unsigned, allowed), the verdict on every
    /// reply, the client behind one trusted proxy (the last `x-forwarded-for` entry; the
    /// runtime's own address header is the fallback), origin, the cache through the relay.
    pub fn variables(&self) -> Vec<(String, String)> {
        let config = json!({
            "bundle": self.golden,
            "allow_unsigned": true,
            "debug_verdict_header": true,
            "client_ip": {"mode": "x_forwarded_for", "trusted_hops": 0},
            "score_cache": {"cluster": "signalbox_cache", "bundle_poll_ms": LINK_POLL_MS, "decisions_poll_ms": LINK_POLL_MS,
                "node_id": "edge-test", "decision_log": {"flush_ms": 200}},
        });
        [
            ("SIGNALBOX_CONFIG", config.to_string()),
            (
                "SIGNALBOX_ORIGIN_URL",
                format!("http://127.0.0.1:{}", self.origin.port),
            ),
            (
                "SIGNALBOX_CACHE_URL",
                format!("http://127.0.0.1:{}", self.relay.port),
            ),
            ("SIGNALBOX_CACHE_TOKEN", EDGE_TOKEN.to_owned()),
            ("SIGNALBOX_SECRET", SECRET.to_owned()),
            ("SIGNALBOX_RECORD_KEY", RECORD_KEY.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// The decision records' hash key in the rig's worker variables (base64 of 37 bytes).
const RECORD_KEY: &str = "ZWRnZS10ZXN0LXJlY29yZC1rZXktMDEyMzQ1Njc4OWFiY2RlZg==";

impl EdgeRig {
    /// [`EdgeRig::variables`], with the golden bundle signed (a test key) and prepared
    /// (`signalbox_policy::prepared`) into `<dir>/files/signalbox.prepared`: the configuration
    /// carries the trusted key and no bundle, `SIGNALBOX_PREPARED_BUNDLE` names the file as the
    /// guest sees it with `<dir>/files` mounted at `/`. Returns the variables and that
    /// directory.
    pub fn prepared_variables(&self) -> Result<(Vec<(String, String)>, PathBuf)> {
        let prepared = self.prepared(self.golden_revision())?;
        let files = self.dir.join("files");
        std::fs::create_dir_all(&files)?;
        std::fs::write(files.join("signalbox.prepared"), prepared)?;
        let config = json!({
            "trusted_keys": [{"kid": SIGNING_KID, "public": signing_public(SIGNING_KEY)}],
            "debug_verdict_header": true,
            "client_ip": {"mode": "x_forwarded_for", "trusted_hops": 0},
            "score_cache": {"cluster": "signalbox_cache", "bundle_poll_ms": LINK_POLL_MS, "decisions_poll_ms": LINK_POLL_MS,
                "node_id": "edge-test", "decision_log": {"flush_ms": 200}},
        });
        let mut vars: Vec<(String, String)> = self
            .variables()
            .into_iter()
            .filter(|(k, _)| k != "SIGNALBOX_CONFIG")
            .collect();
        vars.push(("SIGNALBOX_CONFIG".to_owned(), config.to_string()));
        vars.push((
            "SIGNALBOX_PREPARED_BUNDLE".to_owned(),
            "/signalbox.prepared".to_owned(),
        ));
        Ok((vars, files))
    }
}

/// The seed of the key the rig signs bundles with (kid [`SIGNING_KID`]); the prepared
/// variables trust it.
pub const SIGNING_KEY: [u8; 32] = [11; 32];
/// Its key id.
pub const SIGNING_KID: &str = "edge-test";

/// The base64 public key of the signing key with seed `seed`.
pub fn signing_public(seed: [u8; 32]) -> String {
    signalbox_policy::signing::public_key_base64(&ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// A trusted-keys file (`signalbox-cache serve --trusted-keys`) with these (kid, seed) keys.
pub fn write_trusted_keys(path: &std::path::Path, keys: &[(&str, [u8; 32])]) -> Result<()> {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, seed)| json!({"kid": kid, "public": signing_public(*seed)}))
        .collect();
    std::fs::write(path, json!({ "keys": keys }).to_string())?;
    Ok(())
}

impl EdgeRig {
    /// The golden bundle's revision.
    pub fn golden_revision(&self) -> u64 {
        self.golden
            .get("revision")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// The golden bundle at `revision`, as pushed to the cache (which adopts a stable bundle's
    /// scoring: keep its one-second context TTL).
    pub fn golden_for_push(&self, revision: u64) -> Value {
        let mut bundle = self.golden.clone();
        set_field(&mut bundle, "revision", json!(revision));
        set_field(&mut bundle, "scoring", json!({"context_ttl_seconds": 1}));
        bundle
    }

    /// The golden bundle at `revision`, signed with the rig's key and prepared.
    pub fn prepared(&self, revision: u64) -> Result<Vec<u8>> {
        use signalbox_policy::signing::{LoadContext, TrustedKeys};
        let mut bundle = self.golden.clone();
        set_field(&mut bundle, "revision", json!(revision));
        let envelope = signed(&bundle, SIGNING_KID, SIGNING_KEY)?;
        let public = signing_public(SIGNING_KEY);
        let keys = TrustedKeys::from_base64([(SIGNING_KID, public.as_str())])?;
        Ok(signalbox_policy::prepared::prepare(
            &envelope,
            &keys,
            &LoadContext {
                now: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                ..LoadContext::default()
            },
        )?)
    }
}

/// Sets `field` of a JSON object (anything else is left as it is).
fn set_field(object: &mut Value, field: &str, value: Value) {
    if let Some(o) = object.as_object_mut() {
        o.insert(field.to_owned(), value);
    }
}

/// `bundle`, valid until 2099, signed with `(kid, seed)`: the envelope's bytes.
pub fn signed(bundle: &Value, kid: &str, seed: [u8; 32]) -> Result<Vec<u8>> {
    let mut bundle = bundle.clone();
    set_field(&mut bundle, "expires_at", json!("2099-01-01T00:00:00Z"));
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    Ok(serde_json::to_vec(&signalbox_policy::signing::sign(
        bundle.to_string().as_bytes(),
        kid,
        &key,
    ))?)
}

/// The rig's bundle poll and decision stream interval (the JS builds follow both).
pub const LINK_POLL_MS: u64 = 300;

/// What a worker that keeps its instance (a JS isolate) must do with the score cache between
/// requests: a bundle pushed to the cache serves within a few poll intervals; a manual ban
/// blocks a request that never asks the cache (the decision stream, applied locally), and
/// lifting it frees the client. Returns how long the push and the ban took (the next request
/// after each is what notices; requests go every 50 ms). Panics with what went wrong.
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
pub fn check_link(rig: &EdgeRig, port: u16, runtime: &str) -> (Duration, Duration) {
    let cache = &rig.cache;
    let ip = "81.62.7.7";
    let first = send(port, "GET", "/products/1", &browser(ip), b"").unwrap();
    assert_eq!(first.status, 200, "{runtime}: {}", first.text());
    let serving: u64 = verdict(&first)["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{runtime}: no revision in {}", verdict(&first)));
    // Wait until the request's conditions are met (each request lets due polls start).
    let until = |what: &str, ok: &dyn Fn(&Response) -> bool| -> Duration {
        let started = std::time::Instant::now();
        loop {
            let r = send(port, "GET", "/products/1", &browser(ip), b"").unwrap();
            if ok(&r) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_millis(LINK_POLL_MS * 20),
                "{runtime}: {what}: still {} {}",
                r.status,
                r.header("x-signalbox-verdict").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // A newer bundle pushed to the cache serves.
    // The cache adopts a newer stable bundle's scoring: keep its one-second context TTL.
    let mut next = rig.golden.clone();
    next["revision"] = json!(serving + 1);
    next["scoring"] = json!({"context_ttl_seconds": 1});
    let (status, answer) = cache
        .call_raw(
            "PUT",
            "/v1/bundle",
            ADMIN_TOKEN,
            Some(next.to_string().as_bytes()),
        )
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let wanted = (serving + 1).to_string();
    let pushed = until("the pushed bundle", &|r| {
        r.header("x-signalbox-verdict")
            .and_then(|v| serde_json::from_str::<Value>(&v).ok())
            .is_some_and(|v| v["revision"] == json!(wanted))
    });

    // A manual ban blocks a request that does not ask the cache; lifting it frees the client.
    let (status, added) = cache
        .call(
            "POST",
            "/v1/decisions",
            ADMIN_TOKEN,
            Some(&json!({"action": "ban", "scope": "ip", "key": ip, "duration_seconds": 600, "reason": "edge link test"})),
        )
        .unwrap();
    assert_eq!(status, 201, "{added}");
    let banned = until("the ban", &|r| r.status == 403);
    // The isolate reports the revision it serves to the fleet, and ships its block records:
    // the cache's answer at `path` must pass `shows` within 5 s (requests keep the link going).
    let until_cache = |what: &str, path: &str, shows: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (status, answer) = cache.call("GET", path, ADMIN_TOKEN, None).unwrap();
            assert_eq!(status, 200, "{answer}");
            if shows(&answer) {
                return answer;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{runtime}: {what}: {answer}"
            );
            let _ = send(port, "GET", "/products/1", &browser("81.62.7.8"), b"");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until_cache(
        &format!("no fleet report of revision {wanted}"),
        "/v1/fleet",
        &|fleet| {
            fleet["nodes"].as_array().into_iter().flatten().any(|n| {
                n["node_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("edge-test/"))
                    && n["stable_revision"] == json!(serving + 1)
            })
        },
    );
    let log = until_cache(
        "no block record shipped",
        "/v1/decisions/log?decision=block",
        &|log| log["total"].as_u64().unwrap_or(0) >= 1,
    );
    let text = log.to_string();
    assert!(
        !text.contains(ip),
        "{runtime}: a raw address in the decision log: {text}"
    );
    let id = added["decision"]["id"].as_str().unwrap().to_owned();
    let (status, lifted) = cache
        .call("DELETE", &format!("/v1/decisions/{id}"), ADMIN_TOKEN, None)
        .unwrap();
    assert!(status == 200 || status == 204, "{status} {lifted}");
    until("the lifted ban", &|r| r.status == 200);
    println!(
        "{runtime}: pushed revision {wanted} served after {pushed:?}, a ban blocked after {banned:?} (polls every {LINK_POLL_MS} ms)"
    );
    (pushed, banned)
}

/// Rate buckets counted by the score cache across instances: `ports` are workers in front of
/// the rig (each its own instance, or a fresh instance per request), and requests to the
/// golden bundle's `/burst` route (5 per 60 s per client) from one client alternate among
/// them. `exact`:
/// every request reports itself and is decided on the fleet's total (a fresh instance per
/// request), so exactly 5 pass; otherwise instances report in the background and may each
/// pass one more than the fleet allows, at most. Then, with the cache too slow to answer, an
/// `exact` worker passes the request (it cannot count; a budget never blocks traffic for an
/// outage). Returns how many passed.
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
pub fn check_rates(rig: &EdgeRig, ports: &[u16], exact: bool, runtime: &str) -> usize {
    // The cache counts in windows aligned to the minute: keep the run inside one.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if into_minute > 50 {
        std::thread::sleep(Duration::from_secs(61 - into_minute));
    }
    let mut statuses = Vec::new();
    for i in 0..14 {
        let port = ports[i % ports.len()];
        let r = send(port, "GET", "/burst", &browser("81.62.9.1"), b"").unwrap();
        assert!(
            r.status == 200 || r.status == 429,
            "{runtime}: /burst answered {}: {}",
            r.status,
            r.text()
        );
        statuses.push(r.status);
        // Background reports go out when the next request comes: give them time to land.
        std::thread::sleep(Duration::from_millis(120));
    }
    let passed = statuses.iter().filter(|s| **s == 200).count();
    if exact {
        assert_eq!(passed, 5, "{runtime}: {statuses:?}");
        assert!(
            statuses[5..].iter().all(|s| *s == 429),
            "{runtime}: {statuses:?}"
        );
    } else {
        assert!(
            (5..=5 + ports.len()).contains(&passed),
            "{runtime}: {passed} passed of a fleet budget of 5 ({} instances): {statuses:?}",
            ports.len()
        );
        assert_eq!(statuses[13], 429, "{runtime}: {statuses:?}");
    }
    if exact {
        rig.relay.set_delay(Duration::from_millis(400));
        let r = send(ports[0], "GET", "/burst", &browser("81.62.9.1"), b"").unwrap();
        rig.relay.set_delay(Duration::ZERO);
        assert_eq!(r.status, 200, "{runtime}: with the cache too slow to count");
    }
    println!(
        "{runtime}: {passed} of 14 requests passed a fleet budget of 5 per minute across {} worker(s): {statuses:?}",
        ports.len()
    );
    passed
}

/// Everything a worker on `port` must do in front of the rig (stops the rig's cache at the
/// end); `runtime` names it in the output. Panics with what went wrong (tests only).
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
pub fn check_worker(rig: &mut EdgeRig, port: u16, runtime: &str) {
    let (origin, cache, relay) = (&rig.origin, &mut rig.cache, &rig.relay);
    let server_port = port;

    // A browser passes to origin, annotated; forged and runtime headers stay behind.
    let mut headers = browser("81.62.0.1");
    headers.push(("x-signalbox-decision".into(), b"pass-forged".to_vec()));
    headers.push(("connection".into(), b"keep-alive, x-hop".to_vec()));
    let r = send(server_port, "GET", "/products/1?color=red", &headers, b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(verdict(&r)["decision"], "pass");
    assert_eq!(r.header("x-origin").as_deref(), Some("yes"));
    assert_eq!(
        r.header("x-signalbox-score"),
        None,
        "origin's own x-signalbox-* header leaked"
    );
    let seen = origin.last();
    let at_origin = |name: &str| -> Vec<String> {
        seen.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        at_origin(":request"),
        ["GET /products/1?color=red HTTP/1.1"]
    );
    assert_eq!(at_origin("x-signalbox-decision"), ["pass"], "{seen:?}");
    assert!(at_origin("spin-client-addr").is_empty(), "{seen:?}");
    assert!(
        at_origin("x-hop").is_empty() && at_origin("connection").is_empty(),
        "{seen:?}"
    );
    assert_eq!(at_origin("accept-language"), ["it-IT,it;q=0.9,en;q=0.8"]);
    assert!(
        at_origin("transfer-encoding").is_empty(),
        "a GET went out with a body: {seen:?}"
    );
    // A POST's body reaches origin whole.
    let mut post = browser("81.62.0.1");
    post.push((
        "content-type".into(),
        b"application/x-www-form-urlencoded".to_vec(),
    ));
    let r = send(server_port, "POST", "/cart", &post, b"item=42&qty=2").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = origin.last();
    let body: Vec<&str> = seen
        .iter()
        .filter(|(n, _)| n == ":body")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(body, ["item=42&qty=2"], "{seen:?}");

    // Automation is challenged and a denied address blocked; neither reaches origin.
    let mut curl = browser("81.62.0.2");
    curl.retain(|(n, _)| n == "host" || n == "x-forwarded-for");
    curl.push(("user-agent".into(), b"curl/8.5.0".to_vec()));
    curl.push(("accept".into(), b"*/*".to_vec()));
    let r = send(server_port, "GET", "/products/1", &curl, b"").unwrap();
    assert_eq!(verdict(&r)["decision"], "challenge", "{}", r.text());
    assert_ne!(r.header("x-origin").as_deref(), Some("yes"));
    let r = send(server_port, "GET", "/", &browser("198.51.100.66"), b"").unwrap();
    assert_eq!(
        (r.status, verdict(&r)["decision"].as_str()),
        (403, Some("block"))
    );

    // A sensitive route asks the cache (which answers through the relay).
    let ip = "81.62.0.50";
    let r = send(server_port, "GET", "/signup", &browser(ip), b"").unwrap();
    let v = verdict(&r);
    assert_eq!(
        (v["decision"].as_str(), v["remote"].as_str()),
        (Some("pass"), Some("used")),
        "{v}"
    );
    // Chargebacks reported for the address: within the answer's TTL (1 s) its requests are
    // challenged (a runtime that keeps its instance keeps the earlier answer that long).
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("cb-{i}"), "subject": {"scope": "ip", "key": ip}, "type": "chargeback", "severity": "critical", "impact": 100}))
        .collect();
    let (status, answer) = cache
        .call(
            "POST",
            "/v1/events",
            ORIGIN_TOKEN,
            Some(&json!({"events": events})),
        )
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let started = Instant::now();
    loop {
        let r = send(server_port, "GET", "/signup", &browser(ip), b"").unwrap();
        if verdict(&r)["decision"] != "pass" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still passing 3 s after the events: {}",
            verdict(&r)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{runtime}: events -> challenged after {:?}",
        started.elapsed()
    );
    // A manual ban comes back in the cache's answer for another address: blocked.
    let banned = "81.62.0.51";
    let (status, _) = cache
        .call(
            "POST",
            "/v1/decisions",
            ADMIN_TOKEN,
            Some(&json!({"action": "ban", "scope": "ip", "key": banned, "duration_seconds": 600})),
        )
        .unwrap();
    assert_eq!(status, 201);
    let r = send(server_port, "GET", "/signup", &browser(banned), b"").unwrap();
    assert_eq!(
        (r.status, verdict(&r)["decision"].as_str()),
        (403, Some("block"))
    );

    // The cache slow: requests pass (fail-open) without its answer, so without waiting for it.
    relay.set_delay(Duration::from_millis(400));
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let started = Instant::now();
        let r = send(
            server_port,
            "GET",
            "/signup",
            &browser(&format!("81.62.1.{i}")),
            b"",
        )
        .unwrap();
        slowest = slowest.max(started.elapsed());
        let v = verdict(&r);
        assert_eq!(
            (v["decision"].as_str(), v["remote"].as_str()),
            (Some("pass"), Some("unavailable_fail_open")),
            "{v}"
        );
    }
    println!(
        "{runtime}: cache slow (400 ms, timeout 50 ms): 5 requests passed, slowest {slowest:?}"
    );
    relay.set_delay(Duration::ZERO);

    // The cache stopped: the same.
    cache.stop();
    let r = send(server_port, "GET", "/signup", &browser("81.62.2.1"), b"").unwrap();
    let v = verdict(&r);
    assert_eq!(
        (v["decision"].as_str(), v["remote"].as_str()),
        (Some("pass"), Some("unavailable_fail_open")),
        "{v}"
    );
}

/// One runtime's pair for `signalbox-harness edge-bench`: the worker and the pass-through.
struct Pair {
    runtime: &'static str,
    worker: u16,
    passthrough: u16,
}

/// Per-request time, client side, of `n` sequential requests (a new connection each, as a
/// CDN's edge-to-worker hop looks to the worker), and how many were passed to origin.
fn timed(port: u16, headers: &[(String, Vec<u8>)], n: usize) -> Result<(Duration, usize)> {
    let started = Instant::now();
    let mut passed = 0;
    for _ in 0..n {
        let r = send(port, "GET", "/products/42", headers, b"")?;
        if r.status == 200 {
            passed += 1;
        }
    }
    Ok((
        started.elapsed() / u32::try_from(n.max(1)).unwrap_or(1),
        passed,
    ))
}

/// `signalbox-harness edge-bench`: the edge worker against a pass-through in the same
/// runtime — the WASI HTTP component and the pass-through component in our wasi-http host
/// (a fresh instance per request), the JS build and a pass-through in workerd and in Deno —
/// on the default bundle, Giovanni's browser from `x-forwarded-for`, no score cache. Rounds
/// interleave the runtimes and both sides; the medians are printed with their ratio, then the
/// module sizes. Timing is from the client, as workerd freezes its clock during CPU work.
pub fn bench_runtimes(requests: usize, rounds: usize) -> Result<()> {
    let dir = root().join("target/edge-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let origin = crate::upstream::Upstream::start()?;
    let origin_url = format!("http://127.0.0.1:{}", origin.addr.port());
    let bundle = crate::conformance::bundle_file(&root().join("policy/examples/default.yaml"))?;
    let bundle_bytes = bundle.to_string().len();
    let config = json!({
        "bundle": bundle,
        "allow_unsigned": true,
        "client_ip": {"mode": "x_forwarded_for", "trusted_hops": 0},
    });
    let vars: Vec<(String, String)> = [
        ("SIGNALBOX_CONFIG", config.to_string()),
        ("SIGNALBOX_ORIGIN_URL", origin_url.clone()),
        ("SIGNALBOX_SECRET", SECRET.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let wasm = root().join("target/wasm32-wasip2/edge-release");
    let component = wasm.join("signalbox_edge_worker.wasm");
    let passthrough = wasm.join("signalbox_fixture_wasi_passthrough.wasm");
    let wasi = crate::wasi_http::Server::start(&component, &vars, &dir.join("wasi.log"))?;
    // The same bundle prepared (`signalbox policy prepare`), as the component's files.
    let files = dir.join("files");
    std::fs::create_dir_all(&files)?;
    let prepared = signalbox_policy::prepared::prepare(
        bundle.to_string().as_bytes(),
        &signalbox_policy::signing::TrustedKeys::default(),
        &signalbox_policy::signing::LoadContext {
            allow_unsigned: true,
            ..Default::default()
        },
    )?;
    let prepared_bytes = prepared.len();
    std::fs::write(files.join("signalbox.prepared"), prepared)?;
    let mut prepared_config = config.clone();
    if let Some(c) = prepared_config.as_object_mut() {
        c.remove("bundle");
    }
    let prepared_vars: Vec<(String, String)> = vars
        .iter()
        .filter(|(k, _)| k != "SIGNALBOX_CONFIG")
        .cloned()
        .chain([
            ("SIGNALBOX_CONFIG".to_owned(), prepared_config.to_string()),
            (
                "SIGNALBOX_PREPARED_BUNDLE".to_owned(),
                "/signalbox.prepared".to_owned(),
            ),
        ])
        .collect();
    let wasi_prepared = crate::wasi_http::Server::start_with_files(
        &component,
        &prepared_vars,
        Some(&files),
        &dir.join("wasi-prepared.log"),
    )?;
    let wasi_pass = crate::wasi_http::Server::start(
        &passthrough,
        &[("ORIGIN_URL".to_owned(), origin_url.clone())],
        &dir.join("wasi-passthrough.log"),
    )?;
    use crate::js_runtimes::JsRuntime;
    let workerd = JsRuntime::workerd(&dir, &vars)?;
    let workerd_pass = JsRuntime::workerd_passthrough(&dir, &origin_url)?;
    let deno = JsRuntime::deno(&dir, &vars)?;
    let deno_pass = JsRuntime::deno_passthrough(&dir, &origin_url)?;
    let pairs = [
        Pair {
            runtime: "wasi-http (fresh instance per request)",
            worker: wasi.port,
            passthrough: wasi_pass.port,
        },
        Pair {
            runtime: "wasi-http, prepared bundle",
            worker: wasi_prepared.port,
            passthrough: wasi_pass.port,
        },
        Pair {
            runtime: "workerd",
            worker: workerd.port,
            passthrough: workerd_pass.port,
        },
        Pair {
            runtime: "deno",
            worker: deno.port,
            passthrough: deno_pass.port,
        },
    ];
    let headers = browser("81.62.10.4");
    // Warm up (JIT, the isolate's one-time load), and check both sides reach origin.
    for p in &pairs {
        for port in [p.worker, p.passthrough] {
            let (_, passed) = timed(port, &headers, 20)?;
            if passed != 20 {
                anyhow::bail!(
                    "{}: {passed} of 20 warm-up requests reached origin on port {port}",
                    p.runtime
                );
            }
        }
    }
    let mut samples: Vec<(Vec<Duration>, Vec<Duration>)> =
        vec![(Vec::new(), Vec::new()); pairs.len()];
    for _ in 0..rounds {
        for (p, (worker, pass)) in pairs.iter().zip(samples.iter_mut()) {
            worker.push(timed(p.worker, &headers, requests)?.0);
            pass.push(timed(p.passthrough, &headers, requests)?.0);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    println!(
        "{rounds} rounds x {requests} sequential requests per side (new connection each), default bundle ({bundle_bytes} bytes of JSON), Giovanni's browser, no score cache:"
    );
    println!(
        "{:<40}{:>18}{:>14}{:>14}{:>8}",
        "runtime", "pass-through µs", "signalbox µs", "overhead µs", "ratio"
    );
    for (p, (worker, pass)) in pairs.iter().zip(samples.iter_mut()) {
        let (w, t) = (median(worker), median(pass));
        println!(
            "{:<40}{:>18}{:>14}{:>14}{:>8.2}",
            p.runtime,
            t.as_micros(),
            w.as_micros(),
            w.as_micros().saturating_sub(t.as_micros()),
            w.as_secs_f64() / t.as_secs_f64().max(1e-9)
        );
    }
    let js = root().join("edge-worker/js/pkg");
    for (what, path) in [
        ("WASI HTTP component", component.clone()),
        ("pass-through component", passthrough.clone()),
        ("JS build: wasm", js.join("signalbox_edge_worker_bg.wasm")),
        ("JS build: glue", js.join("signalbox_edge_worker.js")),
    ] {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!(
            "{what:<26}{size:>10} bytes  ({:.2} MiB)",
            size as f64 / 1_048_576.0
        );
    }
    println!(
        "(the modules hold code only: the bundle and its lists come in SIGNALBOX_CONFIG, {bundle_bytes} bytes here, or as a prepared file, {prepared_bytes} bytes)"
    );
    drop((wasi, wasi_pass, wasi_prepared));
    Ok(())
}
