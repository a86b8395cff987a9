//! Session tool: runs the Rust SDK's own examples (`http_headers`, `http_auth_random`,
//! `http_config`, built from the SDK's repository, not the crates.io package) in the wasmtime
//! host and in real Envoy, and checks what each example's README says it does.
//!
//! ```sh
//! cargo run -p signalbox-tests --example sdk_examples -- /tmp/sdk-target/wasm32-wasip1/release [--no-envoy]
//! ```
//!
//! Prints a PASS or FAIL line per check and exits non-zero if any check failed. Each example
//! gets the plugin configuration and clusters of its `envoy.yaml` (moved to loopback): the
//! `httpbin` cluster of `http_auth_random` answers `GET /bytes/1` with one random byte.
#![allow(missing_docs)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a session tool: a poisoned lock or a broken fixture should stop it loudly"
)]

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use signalbox_tests::host::{
    CallRequest, Cluster, Filter, Outcome, Request, Scripted, VmOptions, compile,
};

/// What `http_config`'s envoy.yaml puts in the plugin configuration.
const SECRET: &str = "The secret to life is meaningless unless you discover it yourself";
/// The direct responses of the examples' envoy.yaml routes.
const HEADERS_ROUTE_BODY: &str = "Request /hello and be welcomed!\n";
const CONFIG_ROUTE_BODY: &str = "Inspect the HTTP header: custom-header.\n";
/// How many requests `http_auth_random` gets (both outcomes are all but certain).
const AUTH_REQUESTS: usize = 40;

/// One response as a client saw it, with the log lines the filter wrote meanwhile.
#[derive(Debug, Default)]
struct Seen {
    status: u32,
    headers: Vec<(String, String)>,
    body: String,
    logs: Vec<String>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs the checks and counts them.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn check(&mut self, what: &str, ok: bool, detail: impl std::fmt::Debug) {
        if ok {
            self.passed += 1;
            println!("PASS {what}");
        } else {
            self.failed += 1;
            println!("FAIL {what}: {detail:?}");
        }
    }

    /// Compares log lines and names the first difference.
    fn lines(&mut self, what: &str, got: &[String], want: &[String]) {
        let first = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i));
        let detail = first.map(|i| {
            format!(
                "line {}: got {:?}, want {:?} (all: {got:?})",
                i + 1,
                got.get(i),
                want.get(i)
            )
        });
        self.check(what, first.is_none(), detail.unwrap_or_default());
    }

    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        let ok = got == want;
        self.check(what, ok, format!("got {got:?}, want {want:?}"));
    }
}

/// The proxy an example runs in.
enum Proxy {
    Host(Box<Filter>),
    Envoy(EnvoyRun),
}

impl Proxy {
    fn name(&self) -> &'static str {
        match self {
            Proxy::Host(_) => "host",
            Proxy::Envoy(_) => "envoy",
        }
    }

    /// Sends `GET path` as curl would (`host`, `user-agent`, `accept`); in the host, the
    /// request carries the headers Envoy's connection manager would hand the filter.
    fn get(&mut self, path: &str) -> Result<Seen> {
        match self {
            Proxy::Host(filter) => {
                let mark = filter.logs().len();
                let headers = [
                    (":authority", "localhost:10000"),
                    (":path", path),
                    (":method", "GET"),
                    (":scheme", "http"),
                    ("user-agent", "curl/7.81.0"),
                    ("accept", "*/*"),
                    ("x-forwarded-proto", "http"),
                    ("x-request-id", "3ed6eb3b-ddce-4fdc-8862-ddb8f168d406"),
                ];
                let req = Request {
                    headers: headers
                        .iter()
                        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                        .collect(),
                    source_address: "127.0.0.1:50000".to_owned(),
                    ..Request::default()
                };
                let r = filter.request(&req)?;
                if let Some(why) = filter.failure() {
                    bail!("the VM failed: {why}");
                }
                Ok(Seen {
                    status: r.status,
                    headers: text_pairs(&r.headers),
                    body: String::from_utf8_lossy(&r.body).into_owned(),
                    logs: filter
                        .logs()
                        .get(mark..)
                        .unwrap_or_default()
                        .iter()
                        .map(|(_, m)| m.clone())
                        .collect(),
                })
            }
            Proxy::Envoy(envoy) => envoy.get(path),
        }
    }
}

fn text_pairs(pairs: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// A random byte (std's per-instance SipHash keys are random).
fn random_byte(counter: u64) -> u8 {
    RandomState::new().hash_one(counter).to_le_bytes()[0]
}

/// What the `httpbin` cluster served: `(path, authority, byte)` per `/bytes/1` call.
type Served = Arc<Mutex<Vec<(String, String, u8)>>>;

// ---------------------------------------------------------------------------------------------
// The examples.

fn http_headers(report: &mut Report, proxy: &mut Proxy, upstream_body: &str) -> Result<()> {
    let p = proxy.name();
    let hello = proxy.get("/hello")?;
    report.eq(
        &format!("{p} http_headers /hello: local 200"),
        hello.status,
        200,
    );
    report.eq(
        &format!("{p} http_headers /hello: body"),
        hello.body.as_str(),
        "Hello, World!\n",
    );
    report.eq(
        &format!("{p} http_headers /hello: hello header"),
        hello.header("hello"),
        Some("World"),
    );
    report.eq(
        &format!("{p} http_headers /hello: powered-by header"),
        hello.header("powered-by"),
        Some("proxy-wasm"),
    );
    // The README's "Expected Envoy logs", line for line (x-request-id is random in Envoy).
    let want: Vec<String> = [
        "#2 -> :authority: localhost:10000",
        "#2 -> :path: /hello",
        "#2 -> :method: GET",
        "#2 -> :scheme: http",
        "#2 -> user-agent: curl/7.81.0",
        "#2 -> accept: */*",
        "#2 -> x-forwarded-proto: http",
        "#2 -> x-request-id: *",
        "#2 <- :status: 200",
        "#2 <- hello: World",
        "#2 <- powered-by: proxy-wasm",
        "#2 <- content-length: 14",
        "#2 <- content-type: text/plain",
        "#2 completed.",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let got: Vec<String> = hello.logs.iter().map(|l| mask_request_id(l)).collect();
    report.lines(
        &format!("{p} http_headers /hello: README's log lines"),
        &got,
        &want,
    );
    println!(
        "info {p} http_headers /hello: response headers {:?}",
        hello.headers
    );

    let other = proxy.get("/other")?;
    report.eq(
        &format!("{p} http_headers /other: passes to the route"),
        (other.status, other.body.as_str()),
        (200, upstream_body),
    );
    let logs = &other.logs;
    report.check(
        &format!("{p} http_headers /other: logs request and response headers as #3"),
        logs.iter().any(|l| l == "#3 -> :path: /other")
            && logs.iter().any(|l| l == "#3 <- :status: 200")
            && logs.last().is_some_and(|l| l == "#3 completed."),
        logs,
    );
    Ok(())
}

fn mask_request_id(line: &str) -> String {
    match line.split_once("-> x-request-id: ") {
        Some((head, _)) => format!("{head}-> x-request-id: *"),
        None => line.to_owned(),
    }
}

fn http_auth_random(
    report: &mut Report,
    proxy: &mut Proxy,
    served: &Served,
    upstream_body: &str,
) -> Result<()> {
    let p = proxy.name();
    let (mut granted, mut forbidden) = (0, 0);
    let mut wrong = Vec::new();
    for i in 0..AUTH_REQUESTS {
        let before = served.lock().unwrap().len();
        let seen = proxy.get("/headers")?;
        let calls: Vec<_> = served
            .lock()
            .unwrap()
            .get(before..)
            .unwrap_or_default()
            .to_vec();
        let [(path, authority, byte)] = calls.as_slice() else {
            wrong.push(format!("request {i}: {} calls to httpbin", calls.len()));
            continue;
        };
        if path != "/bytes/1" || authority != "httpbin.org" {
            wrong.push(format!("request {i}: call to {authority}{path}"));
        }
        let powered = seen.header("powered-by") == Some("proxy-wasm");
        if byte % 2 == 0 {
            granted += 1;
            if !(seen.status == 200
                && seen.body == upstream_body
                && powered
                && seen.logs == ["Access granted."])
            {
                wrong.push(format!("request {i}: byte {byte} (even) gave {seen:?}"));
            }
        } else {
            forbidden += 1;
            if !(seen.status == 403
                && seen.body == "Access forbidden.\n"
                && powered
                && seen.logs == ["Access forbidden."])
            {
                wrong.push(format!("request {i}: byte {byte} (odd) gave {seen:?}"));
            }
        }
    }
    report.check(
        &format!(
            "{p} http_auth_random: {AUTH_REQUESTS} requests, one GET httpbin.org/bytes/1 each; \
             even byte → 200 from the route + powered-by + \"Access granted.\", odd byte → \
             403 \"Access forbidden.\" + powered-by + \"Access forbidden.\""
        ),
        wrong.is_empty(),
        &wrong,
    );
    report.check(
        &format!("{p} http_auth_random: both outcomes ({granted} granted, {forbidden} forbidden)"),
        granted > 0 && forbidden > 0,
        (granted, forbidden),
    );
    Ok(())
}

fn http_config(report: &mut Report, proxy: &mut Proxy, upstream_body: &str) -> Result<()> {
    let p = proxy.name();
    for path in ["/hello", "/again"] {
        let seen = proxy.get(path)?;
        report.eq(
            &format!("{p} http_config {path}: 200 from the route"),
            (seen.status, seen.body.as_str()),
            (200, upstream_body),
        );
        report.eq(
            &format!("{p} http_config {path}: custom-header from the plugin configuration"),
            seen.header("custom-header"),
            Some(SECRET),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The host.

fn host_filter(wasm: &Path, name: &str, plugin_config: &str, served: &Served) -> Result<Proxy> {
    let engine = wasmtime::Engine::default();
    let module = compile(
        &engine,
        &std::fs::read(wasm).context(wasm.display().to_string())?,
    )?;
    let record = served.clone();
    let counter = Arc::new(Mutex::new(0u64));
    let script = move |call: &CallRequest| {
        let mut n = counter.lock().unwrap();
        *n += 1;
        let byte = random_byte(*n);
        record.lock().unwrap().push((
            call.header(":path").unwrap_or_default(),
            call.header(":authority").unwrap_or_default(),
            byte,
        ));
        Scripted {
            delay: Duration::from_millis(2),
            outcome: Outcome::Response {
                status: 200,
                headers: vec![
                    (
                        "content-type".to_owned(),
                        b"application/octet-stream".to_vec(),
                    ),
                    ("content-length".to_owned(), b"1".to_vec()),
                ],
                body: vec![byte],
            },
        }
    };
    let clusters = HashMap::from([("httpbin".to_owned(), Cluster::Scripted(Arc::new(script)))]);
    let opts = VmOptions {
        plugin_config: plugin_config.as_bytes().to_vec(),
        clusters,
        plugin_name: name.to_owned(),
        ..VmOptions::default()
    };
    Ok(Proxy::Host(Box::new(Filter::start(
        &engine, &module, &opts,
    )?)))
}

// ---------------------------------------------------------------------------------------------
// Real Envoy, with each example's envoy.yaml moved to loopback.

struct EnvoyRun {
    process: signalbox_tests::envoy::EnvoyProcess,
    listener: u16,
    /// Log bytes already handed out.
    mark: usize,
}

impl EnvoyRun {
    /// `route` is the route's action, `extra` more plugin config fields, `clusters` the
    /// `static_resources.clusters` block (or nothing).
    fn start(
        dir: &Path,
        wasm: &Path,
        name: &str,
        route: &str,
        extra: &str,
        clusters: &str,
    ) -> Result<EnvoyRun> {
        std::fs::create_dir_all(dir)?;
        let listener = signalbox_tests::envoy::free_port()?;
        let admin = signalbox_tests::envoy::free_port()?;
        let config = format!(
            r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - address:
      socket_address: {{ address: 127.0.0.1, port_value: {listener} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          codec_type: AUTO
          route_config:
            name: local_routes
            virtual_hosts:
            - name: local_service
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                {route}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: "{name}"{extra}
                vm_config:
                  runtime: "envoy.wasm.runtime.v8"
                  code:
                    local:
                      filename: "{wasm}"
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{clusters}"#,
            wasm = wasm.display(),
        );
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config)?;
        let process = signalbox_tests::envoy::EnvoyProcess::spawn(
            &path,
            &dir.join(format!("{name}.log")),
            admin,
        )?;
        let mut run = EnvoyRun {
            process,
            listener,
            mark: 0,
        };
        run.mark = run.log_text().len();
        Ok(run)
    }

    fn log_text(&self) -> String {
        self.process.log_text()
    }

    fn get(&mut self, path: &str) -> Result<Seen> {
        let headers: Vec<(String, Vec<u8>)> = [
            ("host", "localhost:10000"),
            ("user-agent", "curl/7.81.0"),
            ("accept", "*/*"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect();
        let r = signalbox_tests::http::send(self.listener, "GET", path, &headers, b"")?;
        // `on_log` runs after the response went out: give Envoy a moment to write it.
        std::thread::sleep(Duration::from_millis(150));
        let text = self.log_text();
        let new = text.get(self.mark..).unwrap_or_default();
        self.mark = text.len();
        let logs = new
            .lines()
            .filter_map(|l| l.strip_prefix("wasm log "))
            .map(|l| l.split_once(": ").map_or(l, |(_, m)| m).to_owned())
            .collect();
        Ok(Seen {
            status: u32::from(r.status),
            headers: text_pairs(&r.headers),
            body: r.text(),
            logs,
        })
    }
}

/// `httpbin` on loopback: `/bytes/N` → one random byte (recorded), anything else → `origin`.
fn start_httpbin(served: Served) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let counter = Arc::new(Mutex::new(0u64));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (served, counter) = (served.clone(), counter.clone());
            std::thread::spawn(move || serve_httpbin(conn, &served, &counter));
        }
    });
    Ok(addr)
}

fn serve_httpbin(conn: TcpStream, served: &Served, counter: &Mutex<u64>) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
        let (mut authority, mut length) = (String::new(), 0usize);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                match n.to_ascii_lowercase().as_str() {
                    "host" => authority = v.trim().to_owned(),
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (content_type, body) = if path.starts_with("/bytes/") {
            let mut n = counter.lock().unwrap();
            *n += 1;
            let byte = random_byte(*n);
            served.lock().unwrap().push((path, authority, byte));
            ("application/octet-stream", vec![byte])
        } else {
            ("text/plain", b"origin\n".to_vec())
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&body).is_err() {
            return;
        }
    }
}

fn direct(body: &str) -> String {
    format!(
        "direct_response: {{ status: 200, body: {{ inline_string: {:?} }} }}",
        body
    )
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .context("usage: sdk_examples <dir with proxy_wasm_example_*.wasm> [--no-envoy]")?,
    );
    let with_envoy = !args.any(|a| a == "--no-envoy");
    let wasm = |name: &str| dir.join(format!("proxy_wasm_example_{name}.wasm"));
    let mut report = Report::default();
    let served: Served = Arc::default();

    println!("== the wasmtime host");
    let run = |report: &mut Report, name: &str, config: &str| -> Result<()> {
        let mut proxy = host_filter(&wasm(name), name, config, &served)?;
        match name {
            "http_headers" => http_headers(report, &mut proxy, "origin\n"),
            "http_auth_random" => http_auth_random(report, &mut proxy, &served, "origin\n"),
            _ => http_config(report, &mut proxy, "origin\n"),
        }
    };
    run(&mut report, "http_headers", "")?;
    run(&mut report, "http_auth_random", "")?;
    run(&mut report, "http_config", SECRET)?;

    if with_envoy {
        println!(
            "== real Envoy ({})",
            signalbox_tests::envoy::envoy_binary()?.display()
        );
        let out = std::env::temp_dir().join("sdk-examples-envoy");
        let mut proxy = Proxy::Envoy(EnvoyRun::start(
            &out,
            &wasm("http_headers"),
            "http_headers",
            &direct(HEADERS_ROUTE_BODY),
            "",
            "",
        )?);
        http_headers(&mut report, &mut proxy, HEADERS_ROUTE_BODY)?;
        drop(proxy);

        let httpbin = start_httpbin(served.clone())?;
        let clusters = format!(
            r#"  clusters:
  - name: httpbin
    connect_timeout: 5s
    type: STATIC
    load_assignment:
      cluster_name: httpbin
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {} }}
"#,
            httpbin.port()
        );
        let mut proxy = Proxy::Envoy(EnvoyRun::start(
            &out,
            &wasm("http_auth_random"),
            "http_auth_random",
            "route: { cluster: httpbin }",
            "",
            &clusters,
        )?);
        http_auth_random(&mut report, &mut proxy, &served, "origin\n")?;
        drop(proxy);

        let config = format!(
            r#"
                configuration:
                  "@type": "type.googleapis.com/google.protobuf.StringValue"
                  value: {SECRET}"#
        );
        let mut proxy = Proxy::Envoy(EnvoyRun::start(
            &out,
            &wasm("http_config"),
            "http_config",
            &direct(CONFIG_ROUTE_BODY),
            &config,
            "",
        )?);
        http_config(&mut report, &mut proxy, CONFIG_ROUTE_BODY)?;
        drop(proxy);
    }

    println!("{} passed, {} failed", report.passed, report.failed);
    if report.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
