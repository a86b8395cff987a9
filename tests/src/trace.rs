//! The trace comparison: the trace fixture (`tests/fixtures/trace`) runs the same scenarios in
//! real Envoy and in the wasmtime host, and the `TRACE` lines it logs are grouped by scenario so
//! the two runs can be compared line by line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::envoy::{EnvoyProcess, free_ports};

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
        get("local-empty"),
        get("local-typed"),
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
        get("empty-authority"),
        get("empty-path"),
        get("empty-method"),
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

/// The listener (YAML, as a list item indented by two): the fixture on a route named
/// [`ROUTE_NAME`] to the `origin` cluster.
fn listener_yaml(fixture: &Fixture<'_>, listener: u16) -> String {
    let failure_policy = fixture
        .failure_policy
        .map(|p| format!("\n                failure_policy: {p}"))
        .unwrap_or_default();
    format!(
        r#"  - name: trace
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
                  value: {plugin_config}{failure_policy}
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
"#,
        wasm = fixture.wasm.display(),
        plugin_config = fixture.plugin_config,
    )
}

/// The LDS file Envoy watches when the listener is dynamic.
fn lds_yaml(fixture: &Fixture<'_>, listener: u16) -> String {
    let item = listener_yaml(fixture, listener).replacen(
        "  - name: trace",
        "  - \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n    name: trace",
        1,
    );
    format!("resources:\n{item}")
}

/// Envoy config: the listener (static, or from the LDS file `lds` so that it can be updated),
/// clusters `origin` and `trace_upstream` (the upstream) and `trace_refused` (a closed port).
pub fn envoy_config(
    fixture: &Fixture<'_>,
    listener: u16,
    admin: u16,
    refused: u16,
    lds: Option<&Path>,
) -> String {
    let upstream = fixture.upstream;
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
    let (listeners, dynamic) = match lds {
        None => (
            format!("  listeners:\n{}", listener_yaml(fixture, listener)),
            String::new(),
        ),
        Some(path) => (
            String::new(),
            format!(
                "dynamic_resources:\n  lds_config:\n    resource_api_version: V3\n    path_config_source:\n      path: {}\n      watched_directory:\n        path: {}\n",
                path.display(),
                path.parent().unwrap_or(path).display()
            ),
        ),
    };
    format!(
        r#"node: {{ id: trace, cluster: trace }}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
{dynamic}static_resources:
{listeners}  clusters:{origin}{up}{refused}
"#,
        origin = cluster("origin", upstream),
        up = cluster("trace_upstream", upstream),
        refused = cluster("trace_refused", refused),
    )
}

/// A fixture filter to load in Envoy.
#[derive(Debug, Clone)]
pub struct Fixture<'a> {
    /// The `.wasm`.
    pub wasm: &'a Path,
    /// Its plugin configuration (a string).
    pub plugin_config: &'a str,
    /// `failure_policy` (`FAIL_CLOSED`, `FAIL_OPEN`), or Envoy's default.
    pub failure_policy: Option<&'a str>,
    /// The loopback upstream's port (clusters `origin` and `trace_upstream`).
    pub upstream: u16,
    /// Serve the listener from a watched LDS file, so that [`FixtureEnvoy::update`] can change
    /// the plugin configuration while Envoy runs.
    pub dynamic: bool,
}

/// Real Envoy (one worker) running a fixture filter; stopped when dropped.
pub struct FixtureEnvoy {
    process: EnvoyProcess,
    /// The listener's port.
    pub listener: u16,
    lds: PathBuf,
}

impl FixtureEnvoy {
    /// Writes the config into `dir`, starts Envoy and waits until it is ready.
    pub fn start(fixture: &Fixture<'_>, dir: &Path) -> Result<FixtureEnvoy> {
        std::fs::create_dir_all(dir)?;
        let [listener, admin, refused] = free_ports()?;
        let config = dir.join("fixture-envoy.yaml");
        let lds_dir = dir.join("lds");
        std::fs::create_dir_all(&lds_dir)?;
        let lds = lds_dir.join("listeners.yaml");
        if fixture.dynamic {
            std::fs::write(&lds, lds_yaml(fixture, listener))?;
        }
        std::fs::write(
            &config,
            envoy_config(
                fixture,
                listener,
                admin,
                refused,
                fixture.dynamic.then_some(lds.as_path()),
            ),
        )?;
        let process = EnvoyProcess::spawn(&config, &dir.join("fixture-envoy.log"), admin)?;
        Ok(FixtureEnvoy {
            process,
            listener,
            lds,
        })
    }

    /// Replaces the listener (a dynamic one) with `fixture`'s: written aside, then renamed
    /// into place, which is the change Envoy's directory watch picks up.
    pub fn update(&self, fixture: &Fixture<'_>) -> Result<()> {
        let aside = self.lds.with_extension("next");
        std::fs::write(&aside, lds_yaml(fixture, self.listener))?;
        std::fs::rename(&aside, &self.lds)?;
        Ok(())
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Waits until the log, from byte `since` on, contains `needle`; false after `timeout`.
    pub fn wait_for_log(&self, since: usize, needle: &str, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if self
                .log_text()
                .get(since..)
                .is_some_and(|t| t.contains(needle))
            {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one request to the listener (`host: trace.example` added).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<crate::http::Response> {
        let mut all = vec![host_header()];
        all.extend(
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())),
        );
        crate::http::send(self.listener, method, path, &all, body)
    }
}

/// Runs the scenarios through real Envoy (one worker) and returns the trace lines by scenario.
pub fn run_in_envoy(
    wasm: &Path,
    upstream: u16,
    dir: &Path,
) -> Result<BTreeMap<String, Vec<String>>> {
    let fixture = Fixture {
        wasm,
        plugin_config: PLUGIN_CONFIG,
        failure_policy: None,
        upstream,
        dynamic: false,
    };
    let envoy = FixtureEnvoy::start(&fixture, dir)?;
    for s in scenarios() {
        envoy
            .send(
                s.method,
                &format!("/trace/{}", s.name),
                &s.headers,
                s.body.as_bytes(),
            )
            .with_context(|| format!("scenario {}", s.name))?;
        // on_log / on_delete run after the response is written: wait for them.
        let deleted = format!("TRACE {} on_delete", s.name);
        envoy.wait_for_log(0, &deleted, Duration::from_secs(5));
    }
    let text = envoy.log_text();
    drop(envoy);
    Ok(group(text.lines().map(str::to_owned)))
}

fn host_header() -> (String, Vec<u8>) {
    ("host".to_owned(), b"trace.example".to_vec())
}

/// The clusters of the Envoy config, for the host: the same loopback upstream, and a closed port.
pub fn loopback_clusters(upstream: std::net::SocketAddr, refused: u16) -> crate::host::Clusters {
    use crate::host::Cluster;
    let mut clusters = crate::host::Clusters::new();
    clusters.insert("trace_upstream".to_owned(), Cluster::Loopback(upstream));
    clusters.insert(
        "trace_refused".to_owned(),
        Cluster::Loopback(std::net::SocketAddr::from(([127, 0, 0, 1], refused))),
    );
    clusters
}

/// The same clusters as scripts, without sockets: what the loopback upstream does, path by path.
pub fn scripted_clusters() -> crate::host::Clusters {
    use crate::host::{Cluster, Outcome, Scripted};
    let upstream = |call: &crate::host::CallRequest| {
        let outcome = match call.header(":path").as_deref() {
            Some("/ok") => Outcome::Response {
                status: 200,
                headers: vec![
                    ("x-up".to_owned(), b"ok".to_vec()),
                    ("content-length".to_owned(), b"5".to_vec()),
                ],
                body: b"hello".to_vec(),
            },
            Some("/slow") => Outcome::Silent,
            Some("/close") => Outcome::ResetBeforeHeaders,
            _ => Outcome::ResetAfterHeaders,
        };
        Scripted {
            delay: Duration::from_millis(20),
            outcome,
        }
    };
    let refused = |_: &crate::host::CallRequest| Scripted {
        delay: Duration::ZERO,
        outcome: Outcome::ConnectFailure,
    };
    let mut clusters = crate::host::Clusters::new();
    clusters.insert(
        "trace_upstream".to_owned(),
        Cluster::Scripted(std::sync::Arc::new(upstream)),
    );
    clusters.insert(
        "trace_refused".to_owned(),
        Cluster::Scripted(std::sync::Arc::new(refused)),
    );
    clusters
}

/// The trace fixture's VM options in the host (names as in the Envoy config).
pub fn host_options(clusters: crate::host::Clusters) -> crate::host::VmOptions {
    crate::host::VmOptions {
        plugin_config: PLUGIN_CONFIG.as_bytes().to_vec(),
        vm_config: VM_CONFIG.as_bytes().to_vec(),
        clusters,
        plugin_name: "trace".to_owned(),
        root_id: "trace".to_owned(),
        vm_id: "trace".to_owned(),
        ..crate::host::VmOptions::default()
    }
}

/// A request as Envoy hands it to the filter (HTTP/1.1 from 127.0.0.1, route [`ROUTE_NAME`]).
pub fn host_request(
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> crate::host::Request {
    let mut headers = vec![
        (":authority".to_owned(), b"trace.example".to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
        (":method".to_owned(), method.as_bytes().to_vec()),
        (":scheme".to_owned(), b"http".to_vec()),
    ];
    // Envoy hands a filter lower-case header names.
    headers.extend(
        extra
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())),
    );
    if !body.is_empty() {
        headers.push((
            "content-length".to_owned(),
            body.len().to_string().into_bytes(),
        ));
    }
    crate::host::Request {
        headers,
        body: body.as_bytes().to_vec(),
        source_address: "127.0.0.1:40000".to_owned(),
        upstream_status: 200,
        route_name: Some(ROUTE_NAME.to_owned()),
    }
}

/// Runs the scenarios in the wasmtime host with the given clusters and returns the trace
/// lines by scenario.
pub fn run_in_host(
    engine: &wasmtime::Engine,
    module: &wasmtime::Module,
    clusters: crate::host::Clusters,
) -> Result<BTreeMap<String, Vec<String>>> {
    let mut filter = crate::host::Filter::start(engine, module, &host_options(clusters))?;
    for s in scenarios() {
        let req = host_request(s.method, &format!("/trace/{}", s.name), &s.headers, s.body);
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

/// The plugin configuration after the config-update scenario.
pub const UPDATED_PLUGIN_CONFIG: &str = "trace-config-2";

/// The config-update scenario in real Envoy: the plugin configuration changes while Envoy
/// runs (a new listener from the watched LDS file), then a request `/trace/after` runs.
/// Returns the trace lines logged after the change, by scenario.
pub fn config_update_in_envoy(
    wasm: &Path,
    upstream: u16,
    dir: &Path,
) -> Result<BTreeMap<String, Vec<String>>> {
    let mut fixture = Fixture {
        wasm,
        plugin_config: PLUGIN_CONFIG,
        failure_policy: None,
        upstream,
        dynamic: true,
    };
    let envoy = FixtureEnvoy::start(&fixture, dir)?;
    // The listener comes from LDS: wait until it serves.
    let until = Instant::now() + Duration::from_secs(30);
    while envoy.send("GET", "/trace/before", &[], b"").is_err() {
        if Instant::now() > until {
            bail!("the LDS listener never served:\n{}", envoy.log_text());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its trace must be complete before the mark, or its tail would count as "after".
    envoy.wait_for_log(0, "TRACE before on_delete", Duration::from_secs(5));
    let mark = envoy.log_text().len();
    fixture.plugin_config = UPDATED_PLUGIN_CONFIG;
    envoy.update(&fixture)?;
    if !envoy.wait_for_log(mark, UPDATED_PLUGIN_CONFIG, Duration::from_secs(30)) {
        bail!(
            "Envoy never took the new configuration:\n{}",
            envoy.log_text()
        );
    }
    // The new listener replaces the old one once it is warm: until then a request may still
    // reach the old root context (`parent_is_root=false`), so try until one reaches the new one.
    let mut attempt_lines = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let attempt = envoy.log_text().len();
        envoy.send("GET", "/trace/after", &[], b"")?;
        envoy.wait_for_log(attempt, "TRACE after on_delete", Duration::from_secs(5));
        let text = envoy.log_text();
        attempt_lines = group(
            text.get(attempt..)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned),
        )
        .remove("after")
        .unwrap_or_default();
        if attempt_lines
            .first()
            .is_some_and(|l| l.contains("parent_is_root=true"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = envoy.log_text();
    drop(envoy);
    let mut traces = group(
        text.get(mark..)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned),
    );
    traces.insert("after".to_owned(), attempt_lines);
    Ok(traces)
}

/// The config-update scenario in the host: the same change, then `/trace/after`. Returns the
/// trace lines logged after the change, by scenario.
pub fn config_update_in_host(
    engine: &wasmtime::Engine,
    module: &wasmtime::Module,
) -> Result<BTreeMap<String, Vec<String>>> {
    let mut filter = crate::host::Filter::start(engine, module, &host_options(Default::default()))?;
    let request = |path: &str| host_request("GET", path, &[], "");
    filter.request(&request("/trace/before"))?;
    let mark = filter.logs().len();
    filter.reconfigure(UPDATED_PLUGIN_CONFIG.as_bytes())?;
    filter.request(&request("/trace/after"))?;
    Ok(group(
        filter.logs().iter().skip(mark).map(|(_, l)| l.clone()),
    ))
}
