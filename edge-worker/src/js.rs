//! The wasm-bindgen build for JS workers (Cloudflare Workers / workerd, Deno, any fetch-handler
//! runtime): [`EdgeWorker`] wraps the [`Worker`] and speaks JSON plans, so the small JS module
//! beside it (`edge-worker/js/signalbox.mjs`) does only the fetches (cache and origin, with
//! `AbortController` timeouts) and builds the `Response`.
//!
//! A plan is one of:
//! - `{"action":"forward","set":[[name,value]…],"strip":[name…],"response_header":[name,value]|null}`
//! - `{"action":"respond","status":403,"headers":[[name,value]…],"body":"…","response_header":…}`
//! - `{"action":"lookup","id":7,"url":"https://cache/v1/context?…","headers":[[name,value]…],"timeout_ms":50}`
//!   then [`EdgeWorker::resume_lookup`];
//! - `{"action":"read_body","id":7,"limit":4096}` then [`EdgeWorker::resume_body`].
//!
//! Every plan carries `"logs":[[level,line]…]` for the JS side to print.
//!
//! Between requests the isolate keeps its link to the score cache: [`EdgeWorker::link_calls`]
//! gives the background calls due now (`[{"kind":"bundle"|"decisions"|"rate","method","url",
//! "headers","body","timeout_ms"}…]`), the JS side makes them outside the request (`ctx.waitUntil`) and hands
//! each answer to [`EdgeWorker::link_answer`].

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use signalbox_pipeline::{Effects, LogLevel, LookupAnswer, Pending, PendingVerify};
use wasm_bindgen::prelude::*;

use crate::{EdgeSettings, LinkKind, Next, Resume, Worker, forwards_response_header};

/// Requests waiting for the JS side (a lookup or a body), at most this many: a runtime that
/// never resumes one cannot grow the instance without bound (the oldest are dropped).
const MAX_WAITING: usize = 10_000;

enum Waiting {
    Lookup(Resume<Pending>, Effects),
    Body(Resume<PendingVerify>, Effects),
}

/// One worker per isolate.
#[wasm_bindgen]
pub struct EdgeWorker {
    worker: Worker,
    waiting: RefCell<BTreeMap<u32, Waiting>>,
    next_id: Cell<u32>,
}

fn nanos(now_ms: f64) -> u128 {
    if now_ms.is_finite() && now_ms > 0.0 {
        // Milliseconds since the epoch fit a u64 for the next few hundred million years.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = now_ms as u64;
        u128::from(ms) * 1_000_000
    } else {
        0
    }
}

fn pairs(list: &[(String, String)]) -> Vec<serde_json::Value> {
    list.iter()
        .map(|(n, v)| serde_json::json!([n, v]))
        .collect()
}

fn logs(effects: &Effects) -> Vec<serde_json::Value> {
    effects
        .logs
        .iter()
        .map(|(level, line)| {
            let level = match level {
                LogLevel::Info => "info",
                LogLevel::Warn => "warn",
            };
            serde_json::json!([level, line])
        })
        .collect()
}

#[wasm_bindgen]
impl EdgeWorker {
    /// Builds the worker from the runtime's variables (`env_json`: an object of strings, the
    /// same names as the WASI component's environment) at `now_ms` (`Date.now()`).
    #[wasm_bindgen(constructor)]
    pub fn new(env_json: &str, now_ms: f64) -> Result<EdgeWorker, JsError> {
        let env: BTreeMap<String, String> = serde_json::from_str(env_json)
            .map_err(|e| JsError::new(&format!("the worker's variables: {e}")))?;
        let now = u64::try_from(nanos(now_ms) / 1_000_000_000).unwrap_or(0);
        let settings =
            EdgeSettings::from_env(|k| env.get(k).cloned(), now).map_err(|e| JsError::new(&e))?;
        Ok(EdgeWorker {
            worker: Worker::new(settings),
            waiting: RefCell::new(BTreeMap::new()),
            next_id: Cell::new(0),
        })
    }

    /// The load logs (`[[level, line]…]`, JSON).
    pub fn load_logs(&self) -> String {
        let effects = Effects {
            logs: self.worker.pipeline().load_logs(),
            ..Effects::default()
        };
        serde_json::Value::Array(logs(&effects)).to_string()
    }

    /// Origin's base URL (`scheme://authority` + path prefix).
    pub fn origin_url(&self) -> String {
        let o = self.worker.origin();
        format!("{}://{}{}", o.scheme, o.authority, o.path)
    }

    /// A request arrived: `headers_json` is `[[name, value]…]` with the pseudo-headers
    /// `:method`, `:path`, `:authority`, `:scheme` first. The client's address is
    /// `client_address` when the runtime gives it apart (Deno's `remoteAddr`), else the header
    /// the worker was configured with (Cloudflare's `cf-connecting-ip`). Returns a plan (JSON).
    pub fn start(&self, headers_json: &str, client_address: Option<String>, now_ms: f64) -> String {
        let headers: Vec<(String, String)> = serde_json::from_str(headers_json).unwrap_or_default();
        let mut headers: signalbox_pipeline::Headers = headers
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.into_bytes()))
            .collect();
        if let Some(address) = client_address {
            let name = self.worker.client_ip_header().to_owned();
            headers.retain(|(n, _)| *n != name);
            headers.push((name, address.into_bytes()));
        }
        let next = self.worker.start(headers, nanos(now_ms));
        self.plan(next, now_ms)
    }

    /// The cache answered the lookup `id` (`status` 0: it failed or timed out).
    pub fn resume_lookup(&self, id: u32, status: u16, body: &[u8], now_ms: f64) -> String {
        let Some(Waiting::Lookup(pending, effects)) = self.take(id) else {
            return unknown(id);
        };
        let answer = (status != 0).then(|| LookupAnswer {
            status: u32::from(status),
            body: body.to_vec(),
        });
        let next = self
            .worker
            .resume_lookup(effects, pending, answer, nanos(now_ms));
        self.plan(next, now_ms)
    }

    /// The body of request `id` (`too_large`: more than the plan's limit).
    pub fn resume_body(&self, id: u32, body: &[u8], too_large: bool, now_ms: f64) -> String {
        let Some(Waiting::Body(verify, effects)) = self.take(id) else {
            return unknown(id);
        };
        let body = (!too_large).then(|| body.to_vec());
        let next = self
            .worker
            .resume_body(effects, &verify, body, nanos(now_ms));
        self.plan(next, now_ms)
    }

    /// The background calls to the score cache due at `now_ms` (JSON array; see the module
    /// docs).
    pub fn link_calls(&self, now_ms: f64) -> String {
        let now = u64::try_from(nanos(now_ms) / 1_000_000).unwrap_or(0);
        let calls: Vec<serde_json::Value> = self
            .worker
            .link_calls(now)
            .into_iter()
            .map(|c| {
                serde_json::json!({
                    "kind": c.kind.name(),
                    "method": c.method,
                    "url": c.url,
                    "headers": pairs(&c.headers),
                    "body": c.body.map(|b| String::from_utf8_lossy(&b).into_owned()),
                    "timeout_ms": c.timeout_ms,
                })
            })
            .collect();
        serde_json::Value::Array(calls).to_string()
    }

    /// A background call's answer (`status` 0: it failed or timed out; `etag` empty: none).
    /// Returns the lines to log (`[[level, line]…]`, JSON).
    pub fn link_answer(
        &self,
        kind: &str,
        status: u16,
        etag: &str,
        body: &[u8],
        now_ms: f64,
    ) -> String {
        let Some(kind) = LinkKind::from_name(kind) else {
            return "[]".to_owned();
        };
        let now = u64::try_from(nanos(now_ms) / 1_000_000).unwrap_or(0);
        let etag = (!etag.is_empty()).then(|| etag.to_owned());
        let effects = Effects {
            logs: self.worker.link_answer(kind, status, etag, body, now),
            ..Effects::default()
        };
        serde_json::Value::Array(logs(&effects)).to_string()
    }

    /// The revision of the bundle serving new requests.
    pub fn revision(&self) -> f64 {
        // Revisions are small integers; f64 holds them exactly below 2^53.
        #[allow(clippy::cast_precision_loss)]
        let revision = self.worker.pipeline().settings().policy.revision() as f64;
        revision
    }

    /// Whether the bundle passes requests when it cannot decide them (its
    /// `cache.on_unavailable`): what the JS side does with a request whose call trapped.
    pub fn fails_open(&self) -> bool {
        self.worker
            .pipeline()
            .settings()
            .policy
            .cache()
            .fail_closed_action
            .is_none()
    }

    /// Whether origin's response header `name` goes on to the client.
    pub fn forwards_response_header(name: &str) -> bool {
        forwards_response_header(name)
    }
}

fn unknown(id: u32) -> String {
    serde_json::json!({"action": "respond", "status": 500, "headers": [["content-type", "text/plain"]],
        "body": format!("signalbox: no request {id} is waiting\n"), "response_header": null, "logs": []})
    .to_string()
}

impl EdgeWorker {
    fn take(&self, id: u32) -> Option<Waiting> {
        self.waiting.try_borrow_mut().ok()?.remove(&id)
    }

    fn park(&self, waiting: Waiting) -> u32 {
        let id = self.next_id.get().wrapping_add(1);
        self.next_id.set(id);
        if let Ok(mut map) = self.waiting.try_borrow_mut() {
            while map.len() >= MAX_WAITING {
                map.pop_first();
            }
            map.insert(id, waiting);
        }
        id
    }

    fn plan(&self, next: Next, now_ms: f64) -> String {
        let value = match next {
            Next::Forward(effects) => serde_json::json!({
                "action": "forward",
                "set": pairs(&effects.set_request_headers),
                // Never forwarded: what the pipeline strips, hop-by-hop headers, `host`.
                "strip": effects.strip_request_headers.iter().map(String::as_str)
                    .chain(crate::HOP_BY_HOP.iter().copied()).chain(["host"]).collect::<Vec<_>>(),
                "response_header": effects.response_header.as_ref().map(|(n, v)| [n, v]),
                "logs": logs(&effects),
            }),
            Next::Respond(reply, effects) => {
                let mut headers = pairs(&reply.headers);
                if let Some(grpc) = reply.grpc_status {
                    headers.push(serde_json::json!(["content-type", "application/grpc"]));
                    headers.push(serde_json::json!(["grpc-status", grpc.to_string()]));
                }
                serde_json::json!({
                    "action": "respond",
                    "status": if reply.grpc_status.is_some() { 200 } else { reply.status },
                    "headers": headers,
                    "body": if reply.grpc_status.is_some() { String::new() } else { String::from_utf8_lossy(&reply.body).into_owned() },
                    "response_header": effects.response_header.as_ref().map(|(n, v)| [n, v]),
                    "logs": logs(&effects),
                })
            }
            Next::Lookup {
                call,
                url,
                pending,
                effects,
            } => {
                let log_lines = logs(&effects);
                let id = self.park(Waiting::Lookup(pending, effects));
                let headers: Vec<serde_json::Value> = call
                    .headers
                    .iter()
                    .filter(|(n, _)| !n.starts_with(':'))
                    .map(|(n, v)| serde_json::json!([n, v]))
                    .collect();
                serde_json::json!({
                    "action": "lookup",
                    "id": id,
                    "url": url,
                    "headers": headers,
                    "timeout_ms": call.timeout_ms,
                    "logs": log_lines,
                })
            }
            // Isolates count rates in the background; a report asked per request is answered
            // as not made (the request is decided from this isolate's own counts).
            Next::CountRates {
                takes,
                pending,
                effects,
                ..
            } => {
                let next =
                    self.worker
                        .resume_rates(effects, pending, &takes, 0, b"", nanos(now_ms));
                return self.plan(next, now_ms);
            }
            Next::ReadBody(verify, effects) => {
                let log_lines = logs(&effects);
                let id = self.park(Waiting::Body(verify, effects));
                serde_json::json!({
                    "action": "read_body",
                    "id": id,
                    "limit": signalbox_pipeline::verify::MAX_VERIFY_BODY,
                    "logs": log_lines,
                })
            }
        };
        value.to_string()
    }
}
