//! The WASIp2 `wasi:http/proxy` component: the incoming handler reads the request, runs the
//! [`Worker`], calls the score cache with the bundle's timeout enforced here (hosts default to
//! 600 s), and either answers or streams the request to origin and origin's answer back.
//!
//! The worker is built once per instance from the WASI environment. Hosts that make a fresh
//! instance per request (Spin and `wasmtime serve` for WASIp2) pay that per request: give them
//! a prepared bundle (`SIGNALBOX_PREPARED_BUNDLE`). Rate buckets, with a score cache, are
//! counted there, one report per request a budget covers ([`RateCounting::PerRequest`]).

use std::cell::OnceCell;

use signalbox_pipeline::{Effects, LogLevel, LookupAnswer, LookupCall, Reply};
use wasi::clocks::monotonic_clock;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, RequestOptions, ResponseOutparam, Scheme,
};
use wasi::io::streams::{InputStream, OutputStream, StreamError};

use crate::{
    BaseUrl, EdgeSettings, LinkCall, Next, RateCounting, Worker, forwards_request_header,
    forwards_response_header,
};

/// A lookup's answer body is small; more than this is not a context answer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// `blocking-write-and-flush` takes at most 4096 bytes per call.
const WRITE_CHUNK: usize = 4096;

struct Component;

wasi::http::proxy::export!(Component);

thread_local! {
    static WORKER: OnceCell<Result<Worker, String>> = const { OnceCell::new() };
}

#[cfg(feature = "spin")]
thread_local! {
    /// The `spin` build's store, opened once per instance: read while the worker is built,
    /// polled after the request is answered.
    static STORE: OnceCell<Option<crate::spin_host::BundleStore>> = const { OnceCell::new() };
}

/// The instance's store (opened on first use; `None` without one or without its key, logged).
#[cfg(feature = "spin")]
fn with_store<T>(
    env: &std::collections::HashMap<String, String>,
    f: impl FnOnce(Option<&crate::spin_host::BundleStore>) -> T,
) -> T {
    STORE.with(|cell| {
        let store = cell.get_or_init(|| {
            crate::spin_host::BundleStore::open(env)
                .map_err(|why| {
                    log(
                        LogLevel::Warn,
                        &format!("signalbox: the key-value store is not used, pushed bundles do not reach this deployment: {why}"),
                    );
                })
                .ok()
        });
        f(store.as_ref())
    })
}

fn now_nanos() -> u128 {
    let now = wasi::clocks::wall_clock::now();
    u128::from(now.seconds) * 1_000_000_000 + u128::from(now.nanoseconds)
}

fn env_map() -> std::collections::HashMap<String, String> {
    wasi::cli::environment::get_environment()
        .into_iter()
        .collect()
}

fn log(level: LogLevel, line: &str) {
    let level = match level {
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
    };
    eprintln!("[{level}] {line}");
}

impl wasi::exports::http::incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        WORKER.with(|cell| {
            let worker = cell.get_or_init(|| {
                let env = env_map();
                let now = u64::try_from(now_nanos() / 1_000_000_000).unwrap_or(0);
                #[cfg(not(feature = "spin"))]
                let built = EdgeSettings::from_env(|k| env.get(k).cloned(), now).map(Worker::new);
                #[cfg(feature = "spin")]
                let built = spin_settings(&env, now).map(Worker::new);
                // Spin and `wasmtime serve` make a fresh instance per request for WASIp2: rate
                // counts cannot gather in the instance, so each request reports its own.
                if let Ok(w) = &built {
                    w.set_rate_counting(RateCounting::PerRequest);
                }
                match &built {
                    Ok(w) => {
                        for (level, line) in w.pipeline().load_logs() {
                            log(level, &line);
                        }
                    }
                    Err(e) => log(LogLevel::Warn, &format!("signalbox: not serving: {e}")),
                }
                built
            });
            match worker {
                Ok(worker) => {
                    serve(worker, request, out);
                    // The client has its whole answer: now the bundle poll, when due.
                    #[cfg(feature = "spin")]
                    with_store(&env_map(), |store| {
                        if let Some(store) = store {
                            let now_ms = u64::try_from(now_nanos() / 1_000_000).unwrap_or(0);
                            store.poll_if_due(worker, now_ms, make_link_call, log);
                        }
                    });
                }
                // A configuration that does not load serves nothing, as Envoy refuses it: the
                // operator sees 503 and the logged reason, never unscored traffic at origin.
                Err(_) => respond(
                    out,
                    &Reply {
                        status: 503,
                        headers: vec![("content-type".into(), "text/plain".into())],
                        body: b"signalbox: not configured\n".to_vec(),
                        grpc_status: None,
                    },
                    None,
                ),
            }
        });
    }
}

/// The `spin` build's settings: Spin variables first, then the environment; the bundle kept in
/// the key-value store serves when its tag verifies and it is above the packaged one.
#[cfg(feature = "spin")]
fn spin_settings(
    env: &std::collections::HashMap<String, String>,
    now: u64,
) -> Result<EdgeSettings, String> {
    use crate::PushedBundle;
    with_store(env, |store| {
        let pushed = match store.map(crate::spin_host::BundleStore::pushed_bundle) {
            Some(Ok(pushed)) => pushed,
            Some(Err(why)) => {
                log(
                    LogLevel::Warn,
                    &format!(
                        "signalbox: the stored pushed bundle is set aside, the packaged one serves: {why}"
                    ),
                );
                if let Some(store) = store {
                    store.forget_damaged();
                }
                None
            }
            None => None,
        };
        let (settings, outcome) = EdgeSettings::from_env_with_pushed(
            |k| crate::spin_host::setting(k, env),
            now,
            pushed.as_deref(),
        )?;
        match (outcome, store) {
            (PushedBundle::Refused(why), Some(store)) => {
                log(
                    LogLevel::Warn,
                    &format!(
                        "signalbox: the stored pushed bundle did not load, the packaged one serves: {why}"
                    ),
                );
                store.forget_damaged();
            }
            // A newer file was deployed since the push: the stored one is of no more use.
            (PushedBundle::NotAbove(..), Some(store)) => store.forget_pushed(),
            _ => {}
        }
        Ok(settings)
    })
}

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(o) => o.clone(),
    }
}

fn scheme_of(base: &BaseUrl) -> Scheme {
    if base.scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    }
}

fn serve(worker: &Worker, request: IncomingRequest, out: ResponseOutparam) {
    let method = request.method();
    let path = request.path_with_query().unwrap_or_else(|| "/".to_owned());
    let authority = request.authority().unwrap_or_default();
    let scheme = match request.scheme() {
        Some(Scheme::Https) => "https",
        _ => "http",
    };
    let entries = request.headers().entries();
    let mut headers: signalbox_pipeline::Headers = vec![
        (":method".to_owned(), method_name(&method).into_bytes()),
        (":path".to_owned(), path.clone().into_bytes()),
        (":authority".to_owned(), authority.into_bytes()),
        (":scheme".to_owned(), scheme.as_bytes().to_vec()),
    ];
    headers.extend(
        entries
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone())),
    );

    let mut next = worker.start(headers, now_nanos());
    let mut body_taken: Option<Vec<u8>> = None;
    loop {
        next = match next {
            Next::Lookup {
                call,
                url: _,
                pending,
                effects,
            } => {
                let answer = lookup(worker, &call);
                worker.resume_lookup(effects, pending, answer, now_nanos())
            }
            Next::CountRates {
                call,
                takes,
                pending,
                effects,
            } => {
                let (status, body) = report_rates(worker, &call).unwrap_or((0, Vec::new()));
                worker.resume_rates(effects, pending, &takes, status, &body, now_nanos())
            }
            Next::ReadBody(verify, effects) => {
                let body = read_body(&request, signalbox_pipeline::verify::MAX_VERIFY_BODY);
                body_taken = body.clone();
                worker.resume_body(effects, &verify, body, now_nanos())
            }
            Next::Respond(reply, effects) => {
                emit(&effects);
                respond(out, &reply, effects.response_header.as_ref());
                return;
            }
            Next::Forward(effects) => {
                emit(&effects);
                forward(
                    worker, &method, &path, &entries, request, body_taken, &effects, out,
                );
                return;
            }
        };
    }
}

fn emit(effects: &Effects) {
    for (level, line) in &effects.logs {
        log(*level, line);
    }
}

/// The score cache's answer within the call's timeout (`None`: failed or too slow).
fn lookup(worker: &Worker, call: &LookupCall) -> Option<LookupAnswer> {
    let cache = worker.cache.as_ref()?;
    let path = format!("{}{}", cache.path, call.key());
    let answer = call_cache(
        cache,
        &Method::Get,
        &path,
        &call.headers,
        None,
        call.timeout_ms,
        MAX_ANSWER_BYTES,
    )?;
    Some(LookupAnswer {
        status: u32::from(answer.status),
        body: answer.body,
    })
}

/// This request's rate report (`POST /v1/rate`) within the call's timeout.
fn report_rates(worker: &Worker, call: &LinkCall) -> Option<(u16, Vec<u8>)> {
    let cache = worker.cache.as_ref()?;
    let path = format!("{}/v1/rate", cache.path);
    call_cache(
        cache,
        &Method::Post,
        &path,
        &call.headers,
        call.body.as_deref(),
        call.timeout_ms,
        MAX_ANSWER_BYTES,
    )
    .map(|a| (a.status, a.body))
}

/// A link call (its full URL on the cache's base) within its timeout: status (0: failed or
/// too slow), `ETag`, body (at most `limit` bytes).
#[cfg(feature = "spin")]
fn make_link_call(call: &LinkCall, limit: usize) -> (u16, Option<String>, Vec<u8>) {
    let Ok(target) = BaseUrl::parse("link call", &call.url) else {
        return (0, None, Vec::new());
    };
    let method = if call.method == "POST" {
        Method::Post
    } else {
        Method::Get
    };
    match call_cache(
        &target,
        &method,
        &target.path,
        &call.headers,
        call.body.as_deref(),
        call.timeout_ms,
        limit,
    ) {
        Some(a) => (a.status, a.etag, a.body),
        None => (0, None, Vec::new()),
    }
}

/// The score cache's answer to one call.
struct CacheAnswer {
    status: u16,
    /// Read by the `spin` build's bundle poll.
    #[cfg_attr(not(feature = "spin"), allow(dead_code))]
    etag: Option<String>,
    body: Vec<u8>,
}

/// One call to the score cache with the deadline enforced here: the status, `ETag` and body,
/// or `None` (failed, too slow, or an answer larger than `limit`).
fn call_cache(
    cache: &BaseUrl,
    method: &Method,
    path: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
    timeout_ms: u32,
    limit: usize,
) -> Option<CacheAnswer> {
    let deadline =
        monotonic_clock::now().saturating_add(u64::from(timeout_ms).saturating_mul(1_000_000));
    let fields = Fields::new();
    for (name, value) in headers {
        if !name.starts_with(':') {
            let _ = fields.append(name, value.as_bytes());
        }
    }
    let request = OutgoingRequest::new(fields);
    let _ = request.set_method(method);
    let _ = request.set_path_with_query(Some(path));
    let _ = request.set_scheme(Some(&scheme_of(cache)));
    let _ = request.set_authority(Some(&cache.authority));
    // Hosts that honour these stop on their own; the deadline below holds either way.
    let options = RequestOptions::new();
    let timeout = u64::from(timeout_ms).saturating_mul(1_000_000);
    let _ = options.set_connect_timeout(Some(timeout));
    let _ = options.set_first_byte_timeout(Some(timeout));
    let _ = options.set_between_bytes_timeout(Some(timeout));
    // A GET goes without a body: taking a body stream would frame it as chunked.
    let outgoing_body = match body {
        Some(_) => Some(request.body().ok()?),
        None => None,
    };
    let future = outgoing_handler::handle(request, Some(options)).ok()?;
    if let (Some(out), Some(bytes)) = (outgoing_body, body) {
        let stream = out.write().ok()?;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            stream.blocking_write_and_flush(chunk).ok()?;
        }
        drop(stream);
        OutgoingBody::finish(out, None).ok()?;
    }
    let response = loop {
        if let Some(result) = future.get() {
            break result.ok()?.ok()?;
        }
        if !wait_until(&future.subscribe(), deadline) {
            return None;
        }
    };
    let status = response.status();
    let etag = response
        .headers()
        .get("etag")
        .first()
        .and_then(|v| String::from_utf8(v.clone()).ok());
    let body = response.consume().ok()?;
    let stream = body.stream().ok()?;
    let mut bytes = Vec::new();
    loop {
        match stream.read(8192) {
            Ok(chunk) if chunk.is_empty() => {
                if !wait_until(&stream.subscribe(), deadline) {
                    return None;
                }
            }
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > limit {
                    return None;
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => return None,
        }
    }
    drop(stream);
    let _ = IncomingBody::finish(body);
    Some(CacheAnswer {
        status,
        etag,
        body: bytes,
    })
}

/// Waits for `pollable` or the deadline (monotonic nanoseconds): whether it is ready.
fn wait_until(pollable: &wasi::io::poll::Pollable, deadline: u64) -> bool {
    let now = monotonic_clock::now();
    if now >= deadline {
        return pollable.ready();
    }
    let timer = monotonic_clock::subscribe_duration(deadline - now);
    let ready = wasi::io::poll::poll(&[pollable, &timer]);
    ready.contains(&0)
}

/// The whole request body, or `None` when it is larger than `limit` (or unreadable).
fn read_body(request: &IncomingRequest, limit: usize) -> Option<Vec<u8>> {
    let body = request.consume().ok()?;
    let stream = body.stream().ok()?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(8192) {
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > limit {
                    return None;
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => return None,
        }
    }
    drop(stream);
    let _ = IncomingBody::finish(body);
    Some(bytes)
}

/// Whether a request has a body to forward: one already read, a non-zero `content-length`,
/// or a method that carries one (wasi-http hides `transfer-encoding` from the guest, so a
/// chunked upload shows no length).
fn has_body(method: &Method, entries: &[(String, Vec<u8>)], taken: Option<&[u8]>) -> bool {
    if let Some(bytes) = taken {
        return !bytes.is_empty();
    }
    let length = entries
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
    match length {
        Some(n) => n > 0,
        None => matches!(method, Method::Post | Method::Put | Method::Patch),
    }
}

fn write_all(stream: &OutputStream, bytes: &[u8]) -> bool {
    bytes
        .chunks(WRITE_CHUNK)
        .all(|chunk| stream.blocking_write_and_flush(chunk).is_ok())
}

/// Copies `input` to `output` until `input` ends.
fn pipe(input: &InputStream, output: &OutputStream) -> bool {
    loop {
        match output.blocking_splice(input, 64 * 1024) {
            Ok(_) => {}
            Err(StreamError::Closed) => return output.blocking_flush().is_ok(),
            Err(StreamError::LastOperationFailed(_)) => return false,
        }
    }
}

fn respond(out: ResponseOutparam, reply: &Reply, extra: Option<&(String, String)>) {
    let fields = Fields::new();
    for (name, value) in &reply.headers {
        let _ = fields.append(name, value.as_bytes());
    }
    if let Some((name, value)) = extra {
        let _ = fields.append(name, value.as_bytes());
    }
    let mut status = u16::try_from(reply.status).unwrap_or(500);
    if let Some(grpc) = reply.grpc_status {
        // A trailers-only gRPC answer: the status in the headers, HTTP 200.
        status = 200;
        let _ = fields.append("content-type", b"application/grpc");
        let _ = fields.append("grpc-status", grpc.to_string().as_bytes());
    }
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else {
        ResponseOutparam::set(out, Err(ErrorCode::InternalError(None)));
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if reply.grpc_status.is_none()
        && let Ok(stream) = body.write()
    {
        write_all(&stream, &reply.body);
        drop(stream);
    }
    let _ = OutgoingBody::finish(body, None);
}

/// Sends the request on to origin, streaming its body (or the body already read), and streams
/// origin's answer back without its `x-signalbox-*` and hop-by-hop headers.
#[allow(clippy::too_many_arguments)]
fn forward(
    worker: &Worker,
    method: &Method,
    path: &str,
    entries: &[(String, Vec<u8>)],
    request: IncomingRequest,
    body_taken: Option<Vec<u8>>,
    effects: &Effects,
    out: ResponseOutparam,
) {
    let origin = worker.origin();
    let fields = Fields::new();
    for (name, value) in entries {
        if forwards_request_header(name, effects) {
            let _ = fields.append(name, value);
        }
    }
    for (name, value) in &effects.set_request_headers {
        let _ = fields.append(name, value.as_bytes());
    }
    let outgoing = OutgoingRequest::new(fields);
    let _ = outgoing.set_method(method);
    let _ = outgoing.set_path_with_query(Some(&format!("{}{}", origin.path, path)));
    let _ = outgoing.set_scheme(Some(&scheme_of(origin)));
    let _ = outgoing.set_authority(Some(&origin.authority));
    let bad_gateway = |out: ResponseOutparam| {
        respond(
            out,
            &Reply {
                status: 502,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: b"origin unavailable\n".to_vec(),
                grpc_status: None,
            },
            None,
        );
    };
    // Only a request with a body gets a body stream: wasi-http frames any request whose body
    // stream was taken as chunked, which a GET must not be.
    let outgoing_body = if has_body(method, entries, body_taken.as_deref()) {
        match outgoing.body() {
            Ok(b) => Some(b),
            Err(()) => return bad_gateway(out),
        }
    } else {
        None
    };
    let future = match outgoing_handler::handle(outgoing, None) {
        Ok(f) => f,
        Err(e) => {
            log(
                LogLevel::Warn,
                &format!("signalbox: origin call refused: {e:?}"),
            );
            return bad_gateway(out);
        }
    };
    // The request body: what the verify path read, else streamed from the client.
    if let Some(outgoing_body) = outgoing_body {
        if let Ok(stream) = outgoing_body.write() {
            match body_taken {
                Some(bytes) => {
                    write_all(&stream, &bytes);
                }
                None => {
                    if let Ok(body) = request.consume() {
                        if let Ok(input) = body.stream() {
                            pipe(&input, &stream);
                        }
                        let _ = IncomingBody::finish(body);
                    }
                }
            }
            drop(stream);
        }
        let _ = OutgoingBody::finish(outgoing_body, None);
    }
    let response = loop {
        if let Some(result) = future.get() {
            match result {
                Ok(Ok(r)) => break r,
                Ok(Err(e)) => {
                    log(LogLevel::Warn, &format!("signalbox: origin failed: {e:?}"));
                    return bad_gateway(out);
                }
                Err(()) => return bad_gateway(out),
            }
        }
        future.subscribe().block();
    };
    let fields = Fields::new();
    for (name, value) in response.headers().entries() {
        if forwards_response_header(&name) {
            let _ = fields.append(&name, &value);
        }
    }
    if let Some((name, value)) = &effects.response_header {
        let _ = fields.append(name, value.as_bytes());
    }
    let answer = OutgoingResponse::new(fields);
    let _ = answer.set_status_code(response.status());
    let Ok(answer_body) = answer.body() else {
        return bad_gateway(out);
    };
    ResponseOutparam::set(out, Ok(answer));
    if let (Ok(body), Ok(stream)) = (response.consume(), answer_body.write()) {
        if let Ok(input) = body.stream() {
            pipe(&input, &stream);
        }
        drop(stream);
        let _ = IncomingBody::finish(body);
    }
    let _ = OutgoingBody::finish(answer_body, None);
}
