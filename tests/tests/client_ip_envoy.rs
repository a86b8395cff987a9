//! The filter's `x_forwarded_for` client-IP mode against Envoy's own choice, in real Envoy 1.40.
//!
//! One Envoy, one Signalbox listener per connection-manager setting — `use_remote_address`
//! true/false × `xff_num_trusted_hops` 0, 1, 2 — each with the filter in `x_forwarded_for` mode
//! (`origin_headers.client_ip` on) and routed to an echo origin. Every row of a table of
//! `x-forwarded-for` inputs (none, one or several entries, several headers, spaces, ports,
//! brackets, IPv6, garbage, empty entries, fewer entries than hops) goes to every listener, and
//! the filter's `x-signalbox-client-ip` (echoed by the origin) must be the address Envoy's
//! connection manager chose (`%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`, which is also what the
//! filter reads as `source.address`), compared as the policy sees addresses (no IPv6 zone,
//! IPv4-mapped IPv6 as IPv4). One kind of row depends on the host (an IPv6 zone given as an
//! interface name): there the filter may find no address, never another one. Rows Envoy's
//! codec refuses (400) never reach a filter and are only counted.
//!
//! The mapping from Envoy's setting to the filter's `trusted_hops`
//! (envoy/README.md, "Client IP"):
//!
//! - `use_remote_address: false`, `xff_num_trusted_hops: N` → `trusted_hops: N`. Envoy does not
//!   append; both take the entry N places from the right and fall back to the peer.
//! - `use_remote_address: true`, `xff_num_trusted_hops: N ≥ 1` → `trusted_hops: N`. Envoy reads
//!   the entry N−1 places from the right of the header it received, then appends one entry
//!   before any filter runs; the filter sees that entry N places from the right.
//! - `use_remote_address: true`, `xff_num_trusted_hops: 0` → `source_address`. The last entry is
//!   Envoy's own append: the peer, except that for a peer at 127.0.0.1 Envoy appends its own
//!   local address (the host's first non-loopback address), so `trusted_hops: 0` would read
//!   Envoy's address. An extra listener with that wrong mapping shows it.
//!
//! Needs Envoy (`scripts/install-envoy`) and the filter .wasm (`cargo build -p
//! signalbox-filter --target wasm32-wasip1 --profile wasm-release`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::IpAddr;

use serde_json::{Value, json};
use signalbox_tests::envoy::{EnvoyProcess, free_port};
use signalbox_tests::host::{ConnectionManager, Filter, Request, VmOptions, compile};
use signalbox_tests::http::send;
use signalbox_tests::root;

/// One Signalbox listener: Envoy's setting and the filter's mode for it.
struct Listener {
    use_remote_address: bool,
    xff_num_trusted_hops: u32,
    /// `None`: `source_address`; `Some(n)`: `x_forwarded_for` with `trusted_hops: n`.
    filter_hops: Option<u32>,
    port: u16,
}

impl Listener {
    fn name(&self) -> String {
        let mode = match self.filter_hops {
            Some(n) => format!("xff{n}"),
            None => "source".to_owned(),
        };
        format!(
            "ura_{}_hops{}_{mode}",
            self.use_remote_address, self.xff_num_trusted_hops
        )
    }
}

/// The mapping this test holds Envoy and the filter to (module docs, envoy/README.md).
fn filter_hops_for(use_remote_address: bool, xff_num_trusted_hops: u32) -> Option<u32> {
    if use_remote_address && xff_num_trusted_hops == 0 {
        None
    } else {
        Some(xff_num_trusted_hops)
    }
}

/// The `x-forwarded-for` inputs: a name and the header lines (each one a separate header;
/// none means no header at all).
fn rows() -> Vec<(&'static str, Vec<&'static [u8]>)> {
    vec![
        ("no header", vec![]),
        ("one entry", vec![b"203.0.113.7"]),
        ("two entries", vec![b"198.51.100.1, 203.0.113.7"]),
        (
            "three entries",
            vec![b"198.51.100.1, 203.0.113.7, 192.0.2.50"],
        ),
        (
            "four, no spaces",
            vec![b"198.51.100.1,203.0.113.7,192.0.2.50,100.64.0.9"],
        ),
        (
            "two headers",
            vec![b"198.51.100.1, 203.0.113.7", b"192.0.2.50"],
        ),
        (
            "three headers",
            vec![b"198.51.100.1", b"203.0.113.7", b"192.0.2.50"],
        ),
        (
            "spaces and tabs",
            vec![b"  198.51.100.1 ,\t203.0.113.7\t,   192.0.2.50  "],
        ),
        (
            "vertical tab and form feed",
            vec![b"198.51.100.1,\x0b203.0.113.7\x0b,\x0c192.0.2.50\x0c"],
        ),
        ("v4 with port, last", vec![b"198.51.100.1, 1.2.3.4:5678"]),
        ("v4 with port, first", vec![b"1.2.3.4:5678, 203.0.113.7"]),
        (
            "v4 with ports everywhere",
            vec![b"198.51.100.1:1, 203.0.113.7:2, 192.0.2.50:3"],
        ),
        ("v6 bracketed with port", vec![b"[2001:db8::1]:80"]),
        (
            "v6 bracketed with port, middle",
            vec![b"198.51.100.1, [2001:db8::1]:80, 203.0.113.7"],
        ),
        ("v6 bracketed, no port", vec![b"[2001:db8::1]"]),
        ("v6 bare", vec![b"2001:db8::1"]),
        ("v6 several", vec![b"2001:db8::1, 2001:db8::2, 2001:db8::3"]),
        ("v6 upper case", vec![b"2001:DB8::A, 2001:DB8::B"]),
        ("::1 bare", vec![b"::1"]),
        ("v6 with a port-like tail", vec![b"::1:80"]),
        ("v4-mapped v6", vec![b"::ffff:198.51.100.1"]),
        ("v6 with numeric zone", vec![b"fe80::1%1, 2001:db8::2"]),
        (
            "v6 with numeric zone, last",
            vec![b"2001:db8::2, fe80::1%1"],
        ),
        ("v6 with leading-zero zone", vec![b"fe80::1%01"]),
        ("v6 global with numeric zone", vec![b"2001:db8::1%5"]),
        ("v6 zone over u32", vec![b"fe80::1%4294967296"]),
        ("v6 signed zone", vec![b"fe80::1%+1"]),
        ("v6 empty zone", vec![b"fe80::1%"]),
        ("v6 with interface zone", vec![b"fe80::1%lo"]),
        ("v6 with unknown interface zone", vec![b"fe80::1%nosuchif0"]),
        ("v6 global with interface zone", vec![b"2001:db8::1%lo"]),
        ("v6 ending in ::", vec![b"1:2:3:4:5:6:7::"]),
        ("v6 with leading-zero v4 tail", vec![b"::ffff:1.2.3.04"]),
        ("v6 five-digit group", vec![b"12345::1, 198.51.100.1"]),
        ("mixed v4 and v6", vec![b"2001:db8::1, 198.51.100.1"]),
        ("garbage only", vec![b"unknown"]),
        ("garbage first", vec![b"evil, 203.0.113.7"]),
        (
            "garbage middle",
            vec![b"198.51.100.1, garbage, 203.0.113.7"],
        ),
        ("garbage last", vec![b"203.0.113.7, ;drop table"]),
        ("obfuscated identifier", vec![b"_hidden, 203.0.113.7"]),
        ("leading zeros", vec![b"198.051.100.1, 010.0.0.1"]),
        ("short v4", vec![b"1.2.3, 203.0.113.7"]),
        ("trailing dot", vec![b"203.0.113.7., 198.51.100.1"]),
        ("hex v4", vec![b"0x7f.0.0.1, 198.51.100.1"]),
        ("out of range", vec![b"256.1.1.1, 198.51.100.1"]),
        ("empty middle entry", vec![b"198.51.100.1,,203.0.113.7"]),
        ("trailing comma", vec![b"198.51.100.1, 203.0.113.7,"]),
        ("leading comma", vec![b",203.0.113.7"]),
        ("only commas", vec![b",,"]),
        ("empty header", vec![b""]),
        ("empty header first", vec![b"", b"203.0.113.7"]),
        ("empty header last", vec![b"198.51.100.1", b""]),
        ("non-UTF-8 byte", vec![b"198.51.100.1, 203.0.113.7\xa0"]),
        (
            "many entries",
            vec![b"10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4, 10.0.0.5, 10.0.0.6, 10.0.0.7, 10.0.0.8"],
        ),
        ("all zeros", vec![b"0.0.0.0, ::"]),
        ("loopback claimed", vec![b"127.0.0.1, 203.0.113.7"]),
    ]
}

/// Envoy's config: admin, the Signalbox listeners, the echo origin and its cluster.
fn envoy_config(admin: u16, origin: u16, listeners: &[Listener], wasm: &str) -> Value {
    let bundle = json!({"format_version": 1, "revision": 1, "min_engine_version": "0.1.0"});
    let mut out: Vec<Value> = listeners
        .iter()
        .map(|l| {
            let client_ip = match l.filter_hops {
                Some(n) => json!({"mode": "x_forwarded_for", "trusted_hops": n}),
                None => json!({"mode": "source_address"}),
            };
            let plugin = json!({
                "bundle": bundle,
                "allow_unsigned": true,
                "client_ip": client_ip,
                "origin_headers": {"client_ip": true},
            });
            json!({
                "name": l.name(),
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": l.port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": l.name(),
                        "use_remote_address": l.use_remote_address,
                        "xff_num_trusted_hops": l.xff_num_trusted_hops,
                        "route_config": {"virtual_hosts": [{
                            "name": "all",
                            "domains": ["*"],
                            "routes": [{
                                "match": {"prefix": "/"},
                                "route": {"cluster": "origin", "timeout": "5s"},
                                // What Envoy's connection manager decided, on the reply.
                                "response_headers_to_add": [
                                    {"header": {"key": "test-envoy-remote", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}},
                                    {"header": {"key": "test-envoy-remote-full", "value": "%DOWNSTREAM_REMOTE_ADDRESS%"}},
                                    {"header": {"key": "test-envoy-peer", "value": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"}},
                                ],
                            }],
                        }]},
                        "http_filters": [
                            {
                                "name": "signalbox",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                    "config": {
                                        "name": l.name(),
                                        "root_id": "signalbox",
                                        "failure_policy": "FAIL_CLOSED",
                                        "configuration": {
                                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                                            "value": plugin.to_string(),
                                        },
                                        "vm_config": {
                                            "vm_id": "signalbox",
                                            "runtime": "envoy.wasm.runtime.v8",
                                            "code": {"local": {"filename": wasm}},
                                        },
                                    },
                                },
                            },
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                            },
                        ],
                    },
                }]}],
            })
        })
        .collect();
    // The origin echoes what the filter sent it, and the x-forwarded-for it received (the
    // header the filter saw).
    out.push(json!({
        "name": "echo_origin",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": origin}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "echo_origin",
                "route_config": {"virtual_hosts": [{
                    "name": "origin",
                    "domains": ["*"],
                    "routes": [{
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": "echo\n"}},
                        "response_headers_to_add": [
                            {"header": {"key": "echo-client-ip", "value": "%REQ(x-signalbox-client-ip)%"}},
                            {"header": {"key": "echo-decision", "value": "%REQ(x-signalbox-decision)%"}},
                            {"header": {"key": "echo-xff", "value": "%REQ(x-forwarded-for)%"}},
                        ],
                    }],
                }]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    }));
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": out,
            "clusters": [{
                "name": "origin",
                "connect_timeout": "1s",
                "type": "STATIC",
                "load_assignment": {
                    "cluster_name": "origin",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": origin}}}}]}],
                },
            }],
        },
    })
}

/// Rows whose answer depends on the host, with why: the filter must give Envoy's address or
/// none, never another one.
const HOST_DEPENDENT: &[(&str, &str)] = &[(
    "v6 with interface zone",
    "Envoy's getaddrinfo turns `%lo` into the zone of the host's interface `lo` (1); the \
     filter, which cannot know the host's interfaces, falls back to source.address, which \
     Envoy then gives as `[fe80::1%1]:0`",
)];

/// An address as Envoy or the filter prints it, as the policy sees it: without an IPv6 zone
/// (`fe80::1%1`; an `IpAddr` has none) and canonical (the core reads `::ffff:198.51.100.1` as
/// 198.51.100.1, and so does the `x-signalbox-client-ip` it reports).
fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let ip: IpAddr = text.split('%').next().unwrap_or(text).parse().ok()?;
    Some(ip.to_canonical())
}

/// What one request showed.
struct Seen {
    envoy: String,
    envoy_full: String,
    filter: String,
    xff: String,
}

/// `None` when Envoy's codec refused the request (400) before any filter ran.
fn ask(port: u16, xff: &[&[u8]]) -> Option<Seen> {
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        ("host".into(), b"shop.example".to_vec()),
        ("user-agent".into(), b"client-ip-test/1".to_vec()),
    ];
    for value in xff {
        headers.push(("x-forwarded-for".into(), value.to_vec()));
    }
    let r = send(port, "GET", "/", &headers, b"").unwrap();
    if r.status == 400 {
        return None;
    }
    assert_eq!(r.status, 200, "status; {r:?}");
    assert_eq!(r.header("echo-decision").as_deref(), Some("pass"), "{r:?}");
    Some(Seen {
        envoy: r.header("test-envoy-remote").unwrap_or_default(),
        envoy_full: r.header("test-envoy-remote-full").unwrap_or_default(),
        filter: r.header("echo-client-ip").unwrap_or_default(),
        xff: r.header("echo-xff").unwrap_or_default(),
    })
}

fn shown(values: &[&[u8]]) -> String {
    if values.is_empty() {
        return "(no header)".to_owned();
    }
    values
        .iter()
        .map(|v| format!("{:?}", String::from_utf8_lossy(v)))
        .collect::<Vec<_>>()
        .join(" + ")
}

#[test]
fn x_forwarded_for_mode_agrees_with_envoy() {
    let wasm = root().join("target/wasm32-wasip1/wasm-release/signalbox_filter.wasm");
    assert!(
        wasm.exists(),
        "no {}: cargo build -p signalbox-filter --target wasm32-wasip1 --profile wasm-release",
        wasm.display()
    );
    let mut listeners = Vec::new();
    for use_remote_address in [false, true] {
        for hops in 0..=2 {
            listeners.push(Listener {
                use_remote_address,
                xff_num_trusted_hops: hops,
                filter_hops: filter_hops_for(use_remote_address, hops),
                port: free_port().unwrap(),
            });
        }
    }
    // The mapping the module docs reject, to show why.
    let wrong = Listener {
        use_remote_address: true,
        xff_num_trusted_hops: 0,
        filter_hops: Some(0),
        port: free_port().unwrap(),
    };
    listeners.push(wrong);
    let (admin, origin) = (free_port().unwrap(), free_port().unwrap());
    let dir = root().join("target/client-ip-envoy");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("envoy.json");
    let body = envoy_config(admin, origin, &listeners, &wasm.to_string_lossy());
    std::fs::write(&config, serde_json::to_string_pretty(&body).unwrap()).unwrap();
    let envoy = EnvoyProcess::spawn(&config, &dir.join("envoy.log"), admin).unwrap();

    let rows = rows();
    let (checked, wrong_listener) = listeners.split_at(listeners.len() - 1);
    // The wasmtime host, modelling each listener's connection manager, with the filter in
    // source_address mode: its source.address must be the address Envoy chose.
    let engine = wasmtime::Engine::default();
    let module = compile(&engine, &std::fs::read(&wasm).unwrap()).unwrap();
    let mut hosts: Vec<Filter> = checked
        .iter()
        .map(|l| {
            let plugin = json!({
                "bundle": {"format_version": 1, "revision": 1, "min_engine_version": "0.1.0"},
                "allow_unsigned": true,
                "client_ip": {"mode": "source_address"},
                "origin_headers": {"client_ip": true},
            });
            Filter::start(
                &engine,
                &module,
                &VmOptions {
                    plugin_config: plugin.to_string().into_bytes(),
                    connection_manager: Some(ConnectionManager {
                        use_remote_address: l.use_remote_address,
                        xff_num_trusted_hops: l.xff_num_trusted_hops,
                    }),
                    ..VmOptions::default()
                },
            )
            .unwrap()
        })
        .collect();
    let (mut host_compared, mut host_disagreements) = (0, Vec::new());
    let mut compared = 0;
    let mut refused = Vec::new();
    let mut disagreements = Vec::new();
    let mut known = Vec::new();
    let mut wrong_mapping_differs = 0;
    for (name, xff) in &rows {
        println!("{name}: {}", shown(xff));
        let answers: Vec<Option<Seen>> = listeners.iter().map(|l| ask(l.port, xff)).collect();
        if answers.iter().all(Option::is_none) {
            println!("  refused by Envoy's HTTP/1 codec (400) before any filter ran");
            refused.push(*name);
            continue;
        }
        for ((l, seen), host) in checked.iter().zip(&answers).zip(hosts.iter_mut()) {
            let seen = seen
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: refused on {} only", l.name()));
            compared += 1;
            if !HOST_DEPENDENT.iter().any(|(n, _)| n == name) {
                let mut headers: Vec<(String, Vec<u8>)> = vec![
                    (":method".into(), b"GET".to_vec()),
                    (":path".into(), b"/".to_vec()),
                    (":authority".into(), b"shop.example".to_vec()),
                    ("user-agent".into(), b"client-ip-test/1".to_vec()),
                ];
                headers.extend(
                    xff.iter()
                        .map(|v| ("x-forwarded-for".to_owned(), v.to_vec())),
                );
                let response = host
                    .request(&Request {
                        headers,
                        source_address: "127.0.0.1:40000".to_owned(),
                        upstream_status: 200,
                        ..Request::default()
                    })
                    .unwrap();
                let from_host = response
                    .upstream_request_headers
                    .as_ref()
                    .and_then(|h| h.iter().find(|(n, _)| n == "x-signalbox-client-ip"))
                    .and_then(|(_, v)| parse_ip(&String::from_utf8_lossy(v)));
                host_compared += 1;
                if from_host != parse_ip(&seen.envoy) {
                    host_disagreements.push(format!(
                        "{name} {} on {}: envoy {:?}, host {from_host:?}",
                        shown(xff),
                        l.name(),
                        seen.envoy
                    ));
                }
            }
            let envoy = parse_ip(&seen.envoy);
            let filter = parse_ip(&seen.filter);
            let agree = envoy.is_some() && envoy == filter;
            let host_dependent = HOST_DEPENDENT.iter().find(|(n, _)| n == name);
            if let Some((_, why)) = host_dependent.filter(|_| !agree) {
                assert!(
                    filter.is_none(),
                    "{name} on {}: envoy {:?}, filter {:?}: another address",
                    l.name(),
                    seen.envoy,
                    seen.filter
                );
                known.push(format!("{name} on {}: {why}", l.name()));
            }
            println!(
                "  {:<22} envoy {:<16} filter {:<16} {:<9} source.address {:<20} xff at origin {:?}",
                l.name(),
                seen.envoy,
                seen.filter,
                match (agree, host_dependent) {
                    (true, _) => "ok",
                    (false, Some(_)) => "NO ADDR",
                    (false, None) => "DIFFERENT",
                },
                seen.envoy_full,
                seen.xff,
            );
            if !agree && host_dependent.is_none() {
                disagreements.push(format!(
                    "{name} {} on {}: envoy {:?}, filter {:?}",
                    shown(xff),
                    l.name(),
                    seen.envoy,
                    seen.filter
                ));
            }
        }
        for (l, seen) in wrong_listener.iter().zip(&answers[checked.len()..]) {
            // Envoy keeps the peer; the filter reads the entry Envoy appended last.
            let seen = seen
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: refused on {} only", l.name()));
            let appended = seen
                .xff
                .rsplit(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            assert_eq!(parse_ip(&seen.envoy), "127.0.0.1".parse().ok(), "{name}");
            assert_eq!(parse_ip(&seen.filter), parse_ip(&appended), "{name}");
            if parse_ip(&seen.filter) != parse_ip(&seen.envoy) {
                wrong_mapping_differs += 1;
            }
            println!(
                "  {:<22} envoy {:<16} filter {:<16} (rejected mapping: the filter reads Envoy's appended {appended:?})",
                l.name(),
                seen.envoy,
                seen.filter,
            );
        }
    }
    drop(envoy);
    let rows_compared = rows.len() - refused.len();
    println!(
        "{} rows, {} refused by Envoy before any filter ({}); {rows_compared} rows x {} \
         listeners = {compared} comparisons of the filter with Envoy: {} agree, {} host-dependent \
         (no address), {} disagree",
        rows.len(),
        refused.len(),
        refused.join(", "),
        checked.len(),
        compared - known.len() - disagreements.len(),
        known.len(),
        disagreements.len()
    );
    if !known.is_empty() {
        println!(
            "{} comparisons where the filter found no address (host-dependent, not counted as \
             disagreements):\n  {}",
            known.len(),
            known.join("\n  ")
        );
    }
    println!(
        "rejected mapping (use_remote_address: true, xff_num_trusted_hops: 0 with trusted_hops: \
         0): {wrong_mapping_differs} of {rows_compared} rows differ from Envoy"
    );
    println!(
        "the host's connection-manager model: {host_compared} comparisons with Envoy's \
         source address, {} disagree",
        host_disagreements.len()
    );
    assert!(
        host_disagreements.is_empty(),
        "the host's source.address differs from Envoy's:\n{}",
        host_disagreements.join("\n")
    );
    assert!(
        host_compared >= 250,
        "only {host_compared} host comparisons"
    );
    assert!(
        rows_compared >= 50,
        "only {rows_compared} rows reached the filter"
    );
    assert!(
        disagreements.is_empty(),
        "the filter and Envoy disagree:\n{}",
        disagreements.join("\n")
    );
}
