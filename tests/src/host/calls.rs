//! Outgoing HTTP calls (`proxy_http_call`): clusters, what an upstream does, and how Envoy
//! presents each outcome to the filter (measured with the trace fixture in Envoy 1.40):
//!
//! | upstream | the filter sees |
//! |---|---|
//! | answers | its headers and body; `proxy_get_status` → OK |
//! | no answer within the call's timeout | `504`, body `upstream request timeout`; status OK |
//! | refuses the connection | `503`, body `upstream connect error … remote connection failure`; status BROKEN_CONNECTION |
//! | closes before the headers | `503`, body `… reset reason: connection termination`; status OK |
//! | resets after the headers | `(0, 0, 0)`: no headers (`BAD_ARGUMENT`), no body (`NOT_FOUND`); status BROKEN_CONNECTION `reset` |

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use super::Status;

/// A request the filter sent with `proxy_http_call`.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// Headers including `:method`, `:path`, `:authority`.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
}

impl CallRequest {
    /// First value of a header, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        super::first_header(&self.headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// What an upstream does with a call.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It answers.
    Response {
        /// Status code.
        status: u16,
        /// Headers (lower-case names).
        headers: Vec<(String, Vec<u8>)>,
        /// Body.
        body: Vec<u8>,
    },
    /// Nothing listens (connection refused).
    ConnectFailure,
    /// It closes the connection before sending headers.
    ResetBeforeHeaders,
    /// It sends headers, then resets mid-body.
    ResetAfterHeaders,
    /// It never answers (the call's timeout decides).
    Silent,
}

/// A scripted answer: after `delay`, `outcome`.
#[derive(Debug, Clone)]
pub struct Scripted {
    /// How long the upstream takes.
    pub delay: Duration,
    /// What it does then.
    pub outcome: Outcome,
}

/// A script: the answer for each call.
pub type Script = Arc<dyn Fn(&CallRequest) -> Scripted + Send + Sync>;

/// A named cluster, as in Envoy's config.
#[derive(Clone)]
pub enum Cluster {
    /// A real HTTP/1.1 server on loopback.
    Loopback(SocketAddr),
    /// Answers computed in-process.
    Scripted(Script),
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cluster::Loopback(a) => write!(f, "Loopback({a})"),
            Cluster::Scripted(_) => write!(f, "Scripted(..)"),
        }
    }
}

/// Clusters by name.
pub type Clusters = HashMap<String, Cluster>;

/// A call in flight.
pub(crate) struct PendingCall {
    pub token: u32,
    pub deadline: Option<Instant>,
    pub source: Source,
}

pub(crate) enum Source {
    Thread(Receiver<Outcome>),
    At(Instant, Outcome),
}

/// The response as the filter sees it in `on_http_call_response`.
#[derive(Debug, Clone)]
pub(crate) struct Delivered {
    /// `None`: the call failed, `(0, 0, 0)`.
    pub headers: Option<Vec<(String, Vec<u8>)>>,
    pub body: Vec<u8>,
    pub status: (Status, Vec<u8>),
}

const CONNECT_FAILURE: &str = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
const TERMINATION: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
const TIMEOUT: &str = "upstream request timeout";

fn router_reply(code: u16, body: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (":status".to_owned(), code.to_string().into_bytes()),
        (
            "content-length".to_owned(),
            body.len().to_string().into_bytes(),
        ),
        ("content-type".to_owned(), b"text/plain".to_vec()),
    ]
}

impl Delivered {
    /// How Envoy presents an outcome.
    pub fn from_outcome(outcome: Outcome) -> Delivered {
        match outcome {
            Outcome::Response {
                status,
                headers,
                body,
            } => {
                let mut all = vec![(":status".to_owned(), status.to_string().into_bytes())];
                all.extend(headers);
                Delivered {
                    headers: Some(all),
                    body,
                    status: (Status::Ok, Vec::new()),
                }
            }
            Outcome::ConnectFailure => Delivered {
                headers: Some(router_reply(503, CONNECT_FAILURE)),
                body: CONNECT_FAILURE.as_bytes().to_vec(),
                status: (Status::BrokenConnection, Vec::new()),
            },
            Outcome::ResetBeforeHeaders => Delivered {
                headers: Some(router_reply(503, TERMINATION)),
                body: TERMINATION.as_bytes().to_vec(),
                status: (Status::Ok, Vec::new()),
            },
            Outcome::ResetAfterHeaders => Delivered {
                headers: None,
                body: Vec::new(),
                status: (Status::BrokenConnection, b"reset".to_vec()),
            },
            Outcome::Silent => Delivered::timeout(),
        }
    }

    /// The router's answer when the call's timeout expires first.
    pub fn timeout() -> Delivered {
        Delivered {
            headers: Some(router_reply(504, TIMEOUT)),
            body: TIMEOUT.as_bytes().to_vec(),
            status: (Status::Ok, Vec::new()),
        }
    }
}

impl PendingCall {
    /// Starts a call: loopback calls run on their own thread, scripted ones are scheduled.
    pub fn start(token: u32, cluster: &Cluster, request: CallRequest, timeout_ms: u32) -> Self {
        let now = Instant::now();
        let deadline = (timeout_ms > 0).then(|| now + Duration::from_millis(u64::from(timeout_ms)));
        let source = match cluster {
            Cluster::Scripted(script) => {
                let answer = script(&request);
                Source::At(now + answer.delay, answer.outcome)
            }
            Cluster::Loopback(addr) => {
                let (tx, rx) = std::sync::mpsc::channel();
                let addr = *addr;
                std::thread::spawn(move || {
                    let _ = tx.send(loopback(addr, &request));
                });
                Source::Thread(rx)
            }
        };
        PendingCall {
            token,
            deadline,
            source,
        }
    }

    /// The delivery if the call is done at `now` (answered, failed or timed out).
    pub fn poll(&mut self, now: Instant) -> Option<Delivered> {
        let answered = match &mut self.source {
            Source::At(at, outcome) if now >= *at && !matches!(outcome, Outcome::Silent) => {
                Some(outcome.clone())
            }
            Source::At(..) => None,
            Source::Thread(rx) => match rx.try_recv() {
                Ok(o) => Some(o),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Outcome::ResetBeforeHeaders),
            },
        };
        // A late answer loses to the timeout, as in Envoy.
        match (self.deadline, answered) {
            (Some(d), _) if now >= d => Some(Delivered::timeout()),
            (_, Some(o)) => Some(Delivered::from_outcome(o)),
            _ => None,
        }
    }
}

/// One HTTP/1.1 exchange with a loopback server, classified as Envoy would see it.
fn loopback(addr: SocketAddr, request: &CallRequest) -> Outcome {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return Outcome::ConnectFailure;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let method = request.header(":method").unwrap_or_default();
    let path = request.header(":path").unwrap_or_default();
    let mut raw = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    for (name, value) in &request.headers {
        let name = if name == ":authority" {
            "host"
        } else {
            name.as_str()
        };
        if name.starts_with(':') || name == "content-length" || name == "connection" {
            continue;
        }
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            request.body.len()
        )
        .as_bytes(),
    );
    raw.extend_from_slice(&request.body);
    if conn.write_all(&raw).is_err() {
        return Outcome::ResetBeforeHeaders;
    }
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return Outcome::ResetBeforeHeaders;
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    let mut length = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return Outcome::ResetBeforeHeaders;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim().to_owned();
            if name == "content-length" {
                length = value.parse::<usize>().ok();
            }
            headers.push((name, value.into_bytes()));
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            if reader.read_exact(&mut body).is_err() {
                return Outcome::ResetAfterHeaders;
            }
        }
        None => {
            if reader.read_to_end(&mut body).is_err() {
                return Outcome::ResetAfterHeaders;
            }
        }
    }
    Outcome::Response {
        status,
        headers,
        body,
    }
}
