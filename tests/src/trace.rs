//! The trace comparison: the trace fixture (`tests/fixtures/trace`) runs the same scenarios in
//! real Envoy and in the wasmtime host, and the `TRACE` lines it logs are grouped by scenario so
//! the two runs can be compared line by line.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::envoy::{envoy_binary, free_port};

/// One scenario request.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name (the path is `/trace/<name>`).
    pub name: &'static str,
    /// Method.
    pub method: &'static str,
    /// Extra request headers.
    pub headers: Vec<(&'static str, &'static str)>,
    /// Body.
    pub body: &'static str,
}

/// The scenarios, in the order they run (each one after the previous one finished).
pub fn scenarios() -> Vec<Scenario> {
    let get = |name| Scenario {
        name,
        method: "GET",
        headers: Vec::new(),
        body: "",
    };
    vec![
        Scenario {
            headers: vec![("x-empty", ""), ("x-mixed-case", "m"), ("x-gone", "bye")],
            ..get("headers")
        },
        get("local"),
        Scenario {
            method: "POST",
            body: "ping",
            ..get("body")
        },
        Scenario {
            method: "POST",
            body: "ping",
            ..get("dispatch")
        },
        get("timeout"),
        get("close"),
        get("partial"),
        get("refused"),
        get("cas"),
        get("metrics"),
        get("tick"),
        get("queue"),
    ]
}

/// The plugin configuration both runs give the trace fixture.
pub const PLUGIN_CONFIG: &str = "trace-config";
/// The VM configuration both runs give it.
pub const VM_CONFIG: &str = "trace-vm";
/// The route name of the main route.
pub const ROUTE_NAME: &str = "trace_route";

/// `TRACE <scenario> <event>` lines grouped by scenario, in order.
pub fn group(lines: impl IntoIterator<Item = String>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let Some(at) = line.find("TRACE ") else {
            continue;
        };
        let rest = line.get(at + 6..).unwrap_or_default();
        let (scenario, event) = rest.split_once(' ').unwrap_or((rest, ""));
        out.entry(scenario.to_owned())
            .or_default()
            .push(event.trim_end().to_owned());
    }
    out
}

/// Envoy config: one listener with the trace filter on a route named [`ROUTE_NAME`] to the
/// upstream, clusters `trace_upstream` (the same upstream) and `trace_refused` (a closed port).
pub fn envoy_config(wasm: &Path, listener: u16, admin: u16, upstream: u16, refused: u16) -> String {
    let cluster = |name: &str, port: u16| {
        format!(
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}"#
        )
    };
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: trace
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listener} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: trace
          use_remote_address: true
          route_config:
            name: trace_routes
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - name: {ROUTE_NAME}
                match: {{ prefix: "/" }}
                route: {{ cluster: origin, timeout: 5s }}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: trace
                root_id: trace
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {PLUGIN_CONFIG}
                vm_config:
                  vm_id: trace
                  runtime: envoy.wasm.runtime.v8
                  configuration:
                    "@type": type.googleapis.com/google.protobuf.StringValue
                    value: {VM_CONFIG}
                  code:
                    local:
                      filename: {wasm}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:{origin}{up}{refused}
"#,
        wasm = wasm.display(),
        origin = cluster("origin", upstream),
        up = cluster("trace_upstream", upstream),
        refused = cluster("trace_refused", refused),
    )
}

/// Runs the scenarios through real Envoy (one worker) and returns the trace lines by scenario.
pub fn run_in_envoy(
    wasm: &Path,
    upstream: u16,
    dir: &Path,
) -> Result<BTreeMap<String, Vec<String>>> {
    std::fs::create_dir_all(dir)?;
    let (listener, admin, refused) = (free_port()?, free_port()?, free_port()?);
    let config = dir.join("trace-envoy.yaml");
    std::fs::write(
        &config,
        envoy_config(wasm, listener, admin, upstream, refused),
    )?;
    let log = dir.join("trace-envoy.log");
    let child = Command::new(envoy_binary()?)
        .arg("-c")
        .arg(&config)
        .args(["--concurrency", "1", "--base-id", &admin.to_string()])
        .args(["--log-level", "warn", "--component-log-level", "wasm:info"])
        .args(["--log-format", "%v"])
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(&log)?,
        ))
        .spawn()
        .context("starting envoy")?;
    let mut envoy = Running { child };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = envoy.child.try_wait()? {
            bail!(
                "envoy exited ({status}):\n{}",
                std::fs::read_to_string(&log)?
            );
        }
        let ready = crate::http::send(admin, "GET", "/ready", &[host_header()], b"")
            .map(|r| r.status == 200)
            .unwrap_or(false);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("envoy not ready:\n{}", std::fs::read_to_string(&log)?);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for s in scenarios() {
        let mut headers = vec![host_header()];
        headers.extend(
            s.headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())),
        );
        crate::http::send(
            listener,
            s.method,
            &format!("/trace/{}", s.name),
            &headers,
            s.body.as_bytes(),
        )
        .with_context(|| format!("scenario {}", s.name))?;
        // on_log / on_delete run after the response is written: wait for them.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let text = std::fs::read_to_string(&log)?;
            if text.contains(&format!("TRACE {} on_delete", s.name)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(envoy);
    let text = std::fs::read_to_string(&log)?;
    Ok(group(text.lines().map(str::to_owned)))
}

fn host_header() -> (String, Vec<u8>) {
    ("host".to_owned(), b"trace.example".to_vec())
}

struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the scenarios in the wasmtime host, with the same upstream behind the same cluster
/// names, and returns the trace lines by scenario.
pub fn run_in_host(
    engine: &wasmtime::Engine,
    module: &wasmtime::Module,
    upstream: std::net::SocketAddr,
    refused: u16,
) -> Result<BTreeMap<String, Vec<String>>> {
    use crate::host::{Cluster, Filter, Request, VmOptions};
    let mut clusters = crate::host::Clusters::new();
    clusters.insert("trace_upstream".to_owned(), Cluster::Loopback(upstream));
    clusters.insert(
        "trace_refused".to_owned(),
        Cluster::Loopback(std::net::SocketAddr::from(([127, 0, 0, 1], refused))),
    );
    let opts = VmOptions {
        plugin_config: PLUGIN_CONFIG.as_bytes().to_vec(),
        vm_config: VM_CONFIG.as_bytes().to_vec(),
        clusters,
        plugin_name: "trace".to_owned(),
        root_id: "trace".to_owned(),
        vm_id: "trace".to_owned(),
        ..VmOptions::default()
    };
    let mut filter = Filter::start(engine, module, &opts)?;
    for s in scenarios() {
        let mut headers = vec![
            (":authority".to_owned(), b"trace.example".to_vec()),
            (
                ":path".to_owned(),
                format!("/trace/{}", s.name).into_bytes(),
            ),
            (":method".to_owned(), s.method.as_bytes().to_vec()),
            (":scheme".to_owned(), b"http".to_vec()),
        ];
        headers.extend(
            s.headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())),
        );
        if !s.body.is_empty() {
            headers.push((
                "content-length".to_owned(),
                s.body.len().to_string().into_bytes(),
            ));
        }
        let req = Request {
            headers,
            body: s.body.as_bytes().to_vec(),
            source_address: "127.0.0.1:40000".to_owned(),
            upstream_status: 200,
            route_name: Some(ROUTE_NAME.to_owned()),
        };
        filter
            .request(&req)
            .with_context(|| format!("scenario {}", s.name))?;
    }
    Ok(group(filter.logs().iter().map(|(_, l)| l.clone())))
}

/// The VM-level lines once each (Envoy starts one VM per worker plus one on the main thread).
pub fn distinct(lines: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in lines {
        if !out.contains(l) {
            out.push(l.clone());
        }
    }
    out
}
