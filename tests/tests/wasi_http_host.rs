//! The WASIp2 HTTP host (`signalbox_tests::wasi_http`) serving the pass-through fixture
//! component (`tests/fixtures/wasi-passthrough`) in front of loopback origins:
//!
//! - `GET /ok` through to the scripted upstream and back (status, header, body);
//! - a `POST` whose 256 KiB body must reach the origin in full (the upstream reads
//!   `content-length` bytes before it answers);
//! - what the origin receives, seen by an echo origin: method, path and query, end-to-end
//!   headers, `host` set to the origin, hop-by-hop headers dropped, the body, and the
//!   `spin-client-addr` the host sets (a client-sent copy overwritten);
//! - an origin that closes without answering and one that refuses connections give a 5xx,
//!   and the host keeps serving the next request; no `ORIGIN_URL` gives the guest's 500.
//!
//! Needs the fixture built for wasm32-wasip2 (`scripts/test` builds it):
//! `cargo build -p signalbox-fixture-wasi-passthrough --target wasm32-wasip2 --profile edge-release`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use signalbox_tests::envoy::free_port;
use signalbox_tests::http::{Response, send};
use signalbox_tests::root;
use signalbox_tests::upstream::Upstream;
use signalbox_tests::wasi_http::{CLIENT_ADDR_HEADER, Server};

fn passthrough() -> PathBuf {
    let path =
        root().join("target/wasm32-wasip2/edge-release/signalbox_fixture_wasi_passthrough.wasm");
    assert!(
        path.exists(),
        "no {}: build the fixture first: cargo build -p signalbox-fixture-wasi-passthrough --target wasm32-wasip2 --profile edge-release",
        path.display()
    );
    path
}

fn log(name: &str) -> PathBuf {
    let dir = root().join("target/tmp");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("wasi-http-{name}-{}.log", std::process::id()))
}

/// The pass-through fixture, forwarding to `origin` (`None`: no `ORIGIN_URL` at all).
fn serve(origin: Option<String>, name: &str) -> Server {
    let env: Vec<(String, String)> = origin
        .map(|url| vec![("ORIGIN_URL".to_owned(), url)])
        .unwrap_or_default();
    Server::start(&passthrough(), &env, &log(name)).unwrap()
}

fn get(server: &Server, path: &str) -> Response {
    let host = vec![("host".to_owned(), b"signalbox.test".to_vec())];
    send(server.port, "GET", path, &host, b"").unwrap()
}

#[test]
fn get_ok_comes_back_from_the_origin() {
    let upstream = Upstream::start().unwrap();
    let server = serve(Some(format!("http://{}", upstream.addr)), "ok");

    let answer = get(&server, "/ok");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.text(), "hello");
    assert_eq!(answer.header("x-up").as_deref(), Some("ok"));

    // A fresh instance per request: the second one behaves the same.
    let again = get(&server, "/ok");
    assert_eq!((again.status, again.text().as_str()), (200, "hello"));
    assert_eq!(server.requests(), 2);
    assert_eq!(server.failures(), 0);
    server.stop();
}

#[test]
fn a_post_body_reaches_the_origin_in_full() {
    let upstream = Upstream::start().unwrap();
    let server = serve(Some(format!("http://{}", upstream.addr)), "post");

    // More than one splice and one wasi-http buffer: the upstream answers only after it has
    // read all `content-length` bytes, so a 200 means the whole body arrived.
    let body: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let headers = vec![("host".to_owned(), b"signalbox.test".to_vec())];
    let answer = send(server.port, "POST", "/submit", &headers, &body).unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("x-origin").as_deref(), Some("yes"));
    assert_eq!(answer.text(), "origin\n");
}

/// An origin that answers every request with what it received: the request head, a blank
/// line, then the body.
fn echo_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut writer = conn.try_clone().unwrap();
                let mut reader = BufReader::new(conn);
                let mut head = String::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                let mut echoed = head.into_bytes();
                echoed.extend_from_slice(b"\r\n");
                echoed.extend_from_slice(&body);
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\nx-echo: yes\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                    echoed.len()
                )
                .into_bytes();
                answer.extend_from_slice(&echoed);
                let _ = writer.write_all(&answer);
            });
        }
    });
    addr
}

#[test]
fn the_origin_gets_the_request_without_hop_by_hop_headers_and_with_the_client_address() {
    let origin = echo_origin();
    let server = serve(Some(format!("http://{origin}")), "echo");

    let headers: Vec<(String, Vec<u8>)> = [
        ("host", "signalbox.test"),
        ("user-agent", "wasi-http-test/1"),
        ("x-custom", "kept"),
        // A client cannot choose its own address: the host overwrites this.
        (CLIENT_ADDR_HEADER, "6.6.6.6:66"),
        ("keep-alive", "timeout=5"),
        ("x-hop", "named by connection"),
        ("te", "trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
    .chain([("connection".to_owned(), b"x-hop".to_vec())])
    .collect();
    // `send` adds its own `connection: close` after these; both values are hop-by-hop.
    let answer = send(
        server.port,
        "POST",
        "/echo?q=1&r=%20",
        &headers,
        b"the body",
    )
    .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("x-echo").as_deref(), Some("yes"));

    let text = answer.text();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("POST /echo?q=1&r=%20 HTTP/1.1"));
    let seen: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let value = |name: &str| -> Vec<&str> {
        seen.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(value("host"), [origin.to_string()], "{head}");
    assert_eq!(value("user-agent"), ["wasi-http-test/1"], "{head}");
    assert_eq!(value("x-custom"), ["kept"], "{head}");
    assert_eq!(value("content-length"), ["8"], "{head}");
    for gone in ["keep-alive", "x-hop", "te"] {
        assert!(value(gone).is_empty(), "{gone} was forwarded:\n{head}");
    }
    let client = value(CLIENT_ADDR_HEADER);
    assert_eq!(client.len(), 1, "{head}");
    let client: SocketAddr = client[0].parse().unwrap();
    assert!(client.ip().is_loopback(), "{head}");
    assert_ne!(client.port(), 66);
    assert_eq!(body, "the body");
}

#[test]
fn a_dead_origin_is_a_5xx_and_the_host_keeps_serving() {
    let upstream = Upstream::start().unwrap();
    let server = serve(Some(format!("http://{}", upstream.addr)), "dead");

    // The origin reads the request and closes without a word.
    let closed = get(&server, "/close");
    assert!((500..600).contains(&closed.status), "{closed:?}");
    let next = get(&server, "/ok");
    assert_eq!((next.status, next.text().as_str()), (200, "hello"));

    // Nothing listens on the origin's port.
    let refused = serve(
        Some(format!("http://127.0.0.1:{}", free_port().unwrap())),
        "refused",
    );
    for _ in 0..2 {
        let answer = get(&refused, "/ok");
        assert!((500..600).contains(&answer.status), "{answer:?}");
        assert!(answer.text().contains("origin"), "{answer:?}");
    }
    assert_eq!(refused.requests(), 2);
    // A 502 the guest chose is not a guest failure.
    assert_eq!(refused.failures(), 0);
    drop(refused);

    let after = get(&server, "/ok");
    assert_eq!(after.status, 200);
}

#[test]
fn without_origin_url_the_guest_answers_500() {
    let server = serve(None, "no-origin");
    let answer = get(&server, "/ok");
    assert_eq!(answer.status, 500, "{answer:?}");
    assert!(answer.text().contains("ORIGIN_URL"), "{answer:?}");
}
