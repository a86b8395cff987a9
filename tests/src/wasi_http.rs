//! A WASIp2 HTTP host for tests: serves a `wasi:http/proxy` component (exports
//! `wasi:http/incoming-handler`, imports `wasi:http/outgoing-handler`) on loopback, built on
//! `wasmtime-wasi` + `wasmtime-wasi-http` (wasmtime 48, the workspace's one wasmtime).
//!
//! ```no_run
//! # use std::path::Path;
//! # fn main() -> anyhow::Result<()> {
//! use signalbox_tests::wasi_http::Server;
//!
//! let env = [("ORIGIN_URL".to_owned(), "http://127.0.0.1:8080".to_owned())];
//! let server = Server::start(Path::new("component.wasm"), &env, Path::new("guest.log"))?;
//! let answer = signalbox_tests::http::send(server.port, "GET", "/", &[], b"")?;
//! server.stop();
//! # let _ = answer;
//! # Ok(())
//! # }
//! ```
//!
//! What the component sees, and how it differs from a real edge runtime:
//!
//! - **One fresh instance per request**, as Spin does for WASIp2 components and as
//!   `wasmtime serve` does: the component is compiled and pre-linked once ([`ProxyPre`]),
//!   then each request gets its own [`Store`]. Nothing survives between requests.
//! - HTTP/1.1 only (hyper), keep-alive on, plain `http` scheme.
//! - The full WASIp2 linker (`wasi:cli/*` including `environment`, clocks, random, io,
//!   filesystem and sockets without allowed addresses) plus `wasi:http`, like
//!   `wasmtime serve -Scli`: a Rust std component imports `wasi:cli/environment` and more.
//!   Configuration is the WASI environment variables given to [`Server::start`].
//!   [`Server::start_with_files`] mounts one host directory read-only at the guest's `/`
//!   (Spin's `files`); otherwise there are no preopens.
//! - Spin's variables and key-value store (`fermyon:spin/variables@2.0.0`,
//!   `fermyon:spin/key-value@2.0.0`, as declared in `edge-worker/wit/`) for a component that
//!   imports them, from a [`SpinHost`] given to [`Server::start_spin`]: variables from a map (an
//!   unknown name is `undefined`, as in Spin), one store labelled `default` shared by every
//!   instance (in memory; Spin keeps it in SQLite or a cloud store), which the test can read
//!   and write. Without a [`SpinHost`] every variable is undefined and no store opens.
//! - The client's address as Spin passes it: the host sets `spin-client-addr: <ip>:<port>`
//!   (the TCP peer), replacing any copy the client sent. A request without `host` gets
//!   `host: 127.0.0.1:<port>` (wasi-http needs an authority). Headers named in `connection`
//!   are removed before the guest sees the request (wasi-http hides `connection` itself and
//!   the other forbidden headers from the guest, so the guest could not do it).
//! - Outbound requests go through wasmtime-wasi-http's default sender: real TCP (or TLS), a
//!   new connection per request, its 600 s connect and first-byte timeouts.
//! - The guest's stdout and stderr, and the host's own notes (guest traps, connection
//!   errors), are appended to the log file; nothing is inherited, so test output stays clean.
//! - Errors never take the host down: a guest that traps, returns without setting a response
//!   or sets an error code gets a `500` from the host (with the reason in the body and the
//!   log). A trap after the response headers went out ends that response's body with an
//!   error (hyper closes the connection), like a truncated upstream.

use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::sync::oneshot;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::cli::OutputFile;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

mod spin_bindings {
    wasmtime::component::bindgen!({
        path: "../edge-worker/wit",
        world: "spin-host",
    });
}

use spin_bindings::fermyon::spin::{key_value, variables};

/// What a Spin host gives a component beyond WASI: its variables and its `default` key-value
/// store (shared by every instance; clone the `SpinHost` to read or write it from the test).
#[derive(Debug, Clone, Default)]
pub struct SpinHost {
    /// Variable name (lower case, as Spin names them) → value.
    pub variables: std::collections::HashMap<String, String>,
    /// The `default` store.
    pub store: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>>,
}

impl SpinHost {
    /// A copy of the value stored at `key`.
    pub fn stored(&self, key: &str) -> Option<Vec<u8>> {
        self.store.lock().ok()?.get(key).cloned()
    }

    /// Stores `value` at `key` (as an instance would).
    pub fn store_value(&self, key: &str, value: Vec<u8>) {
        if let Ok(mut store) = self.store.lock() {
            store.insert(key.to_owned(), value);
        }
    }
}

/// The request header carrying the client's address (`<ip>:<port>`), as Spin sets it.
pub const CLIENT_ADDR_HEADER: &str = "spin-client-addr";

/// A component served on `127.0.0.1:port`; stops on [`Server::stop`] or when dropped.
pub struct Server {
    /// The loopback port it listens on.
    pub port: u16,
    counters: Arc<Counters>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves the component at `component` (a `.wasm` component, or a `.wat`) on
    /// `127.0.0.1:<free port>`, one fresh instance per request, with these WASI environment
    /// variables. Guest stdout and stderr, and the host's notes, are appended to `log`
    /// (created if missing). Fails if the component does not compile or its imports are not
    /// all provided (WASIp2 + `wasi:http`), before anything listens.
    pub fn start(component: &Path, env: &[(String, String)], log: &Path) -> Result<Server> {
        Self::start_with_files(component, env, None, log)
    }

    /// [`Server::start`], with the host directory `files` (when given) mounted read-only at the
    /// guest's `/`, as Spin mounts a component's `files`.
    pub fn start_with_files(
        component: &Path,
        env: &[(String, String)],
        files: Option<&Path>,
        log: &Path,
    ) -> Result<Server> {
        Self::start_spin(component, env, files, None, log)
    }

    /// [`Server::start_with_files`], with Spin's variables and key-value store from `spin`
    /// (for a component that imports them; see the module docs).
    pub fn start_spin(
        component: &Path,
        env: &[(String, String)],
        files: Option<&Path>,
        spin: Option<&SpinHost>,
        log: &Path,
    ) -> Result<Server> {
        let engine = Engine::new(&Config::new())?;
        let compiled = Component::from_file(&engine, component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling {}", component.display()))?;
        let mut linker = Linker::<Guest>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        variables::add_to_linker::<Guest, wasmtime::component::HasSelf<Guest>>(
            &mut linker,
            |guest| guest,
        )?;
        key_value::add_to_linker::<Guest, wasmtime::component::HasSelf<Guest>>(
            &mut linker,
            |guest| guest,
        )?;
        let pre = linker
            .instantiate_pre(&compiled)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("linking {}", component.display()))?;
        let pre = ProxyPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{} is not a wasi:http/proxy", component.display()))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;

        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            pre,
            env: env.to_vec(),
            files: files.map(Path::to_path_buf),
            spin: spin.cloned(),
            log,
            counters: counters.clone(),
            host: HeaderValue::from_str(&format!("127.0.0.1:{port}"))?,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wasi-http-host")
            .enable_all()
            .build()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("wasi-http-host-{port}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::spawn(accept(listener, shared));
                        }
                        Err(e) => shared.note(&format!("listener: {e}")),
                    }
                    // Either a stop or the `Server` dropped without one.
                    let _ = stopped.await;
                });
                // Cancels every connection and guest still running.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Server {
            port,
            counters,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Requests handed to the guest so far (each one a fresh instance).
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Guest failures so far: traps (before or after the response started) and error codes
    /// the guest passed to `response-outparam.set`. Each is also noted in the log.
    pub fn failures(&self) -> u64 {
        self.counters.failures.load(Ordering::SeqCst)
    }

    /// Stops listening, cancels requests in flight and waits for the host thread.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    failures: AtomicU64,
}

/// What every connection shares: the pre-linked component and the per-request settings.
struct Shared {
    pre: ProxyPre<Guest>,
    env: Vec<(String, String)>,
    /// A host directory mounted read-only at the guest's `/`.
    files: Option<std::path::PathBuf>,
    /// Spin's variables and store, when given.
    spin: Option<SpinHost>,
    log: File,
    counters: Arc<Counters>,
    /// `host` for requests that come without one.
    host: HeaderValue,
}

/// One request's store data.
struct Guest {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    spin: Option<SpinHost>,
}

impl variables::Host for Guest {
    fn get(&mut self, name: String) -> Result<String, variables::Error> {
        self.spin
            .as_ref()
            .and_then(|spin| spin.variables.get(&name).cloned())
            .ok_or(variables::Error::Undefined(format!(
                "no variable for the component named {name}"
            )))
    }
}

impl key_value::Host for Guest {}

impl key_value::HostStore for Guest {
    fn open(
        &mut self,
        label: String,
    ) -> Result<wasmtime::component::Resource<key_value::Store>, key_value::Error> {
        if label != "default" || self.spin.is_none() {
            return Err(key_value::Error::NoSuchStore);
        }
        // One store: the handle needs no state of its own.
        Ok(wasmtime::component::Resource::new_own(0))
    }

    fn get(
        &mut self,
        _store: wasmtime::component::Resource<key_value::Store>,
        key: String,
    ) -> Result<Option<Vec<u8>>, key_value::Error> {
        Ok(self.spin.as_ref().and_then(|spin| spin.stored(&key)))
    }

    fn set(
        &mut self,
        _store: wasmtime::component::Resource<key_value::Store>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), key_value::Error> {
        match &self.spin {
            Some(spin) => {
                spin.store_value(&key, value);
                Ok(())
            }
            None => Err(key_value::Error::NoSuchStore),
        }
    }

    fn delete(
        &mut self,
        _store: wasmtime::component::Resource<key_value::Store>,
        key: String,
    ) -> Result<(), key_value::Error> {
        if let Some(Ok(mut store)) = self.spin.as_ref().map(|s| s.store.lock()) {
            store.remove(&key);
        }
        Ok(())
    }

    fn exists(
        &mut self,
        _store: wasmtime::component::Resource<key_value::Store>,
        key: String,
    ) -> Result<bool, key_value::Error> {
        Ok(self
            .spin
            .as_ref()
            .is_some_and(|spin| spin.stored(&key).is_some()))
    }

    fn get_keys(
        &mut self,
        _store: wasmtime::component::Resource<key_value::Store>,
    ) -> Result<Vec<String>, key_value::Error> {
        Ok(self
            .spin
            .as_ref()
            .and_then(|spin| spin.store.lock().ok().map(|s| s.keys().cloned().collect()))
            .unwrap_or_default())
    }

    fn drop(
        &mut self,
        _store: wasmtime::component::Resource<key_value::Store>,
    ) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Guest {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            // The default hooks: default forbidden headers, the real outbound sender.
            hooks: Default::default(),
        }
    }
}

async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: note it, back off, keep serving.
                shared.note(&format!("accept: {e}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let per_request = shared.clone();
            let service = service_fn(move |request| {
                let shared = per_request.clone();
                async move { Ok::<_, Infallible>(shared.handle(peer, request).await) }
            });
            if let Err(e) = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                shared.note(&format!("connection from {peer}: {e}"));
            }
        });
    }
}

impl Shared {
    /// Appends a line to the log (best effort: a test log is no reason to fail a request).
    fn note(&self, line: &str) {
        let _ = writeln!(&self.log, "[wasi-http host] {line}");
    }

    fn fail(&self, line: &str) {
        self.counters.failures.fetch_add(1, Ordering::SeqCst);
        self.note(line);
    }

    async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        mut request: Request<Incoming>,
    ) -> Response<HyperOutgoingBody> {
        self.counters.requests.fetch_add(1, Ordering::SeqCst);
        let headers = request.headers_mut();
        if let Ok(addr) = HeaderValue::from_str(&peer.to_string()) {
            // `insert` replaces every client-sent value.
            headers.insert(HeaderName::from_static(CLIENT_ADDR_HEADER), addr);
        }
        if !headers.contains_key(HOST) {
            headers.insert(HOST, self.host.clone());
        }
        // wasi-http hides `connection` from the guest (a forbidden header), so the guest
        // cannot drop the headers it names: do it here, as a proxy receiving them must.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        match self.run_guest(request).await {
            Ok(response) => response,
            Err(why) => host_error(StatusCode::INTERNAL_SERVER_ERROR, &why),
        }
    }

    /// Runs the guest's handler on a fresh instance; `Err` is the reason for a host 500.
    async fn run_guest(
        self: &Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, String> {
        let log = self.log.try_clone().map_err(|e| format!("log: {e}"))?;
        let output = OutputFile::new(log);
        let mut wasi = WasiCtx::builder();
        wasi.envs(&self.env).stdout(output.clone()).stderr(output);
        if let Some(dir) = &self.files {
            wasi.preopened_dir(dir, "/", wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| format!("mounting {}: {e:#}", dir.display()))?;
        }
        let wasi = wasi.build();
        let mut store = Store::new(
            self.pre.engine(),
            Guest {
                wasi,
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                spin: self.spin.clone(),
            },
        );
        let (sender, receiver) = oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| format!("bad request: {e:#}"))?;
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|e| format!("response outparam: {e:#}"))?;

        // The guest runs in its own task: it keeps streaming the body after the response
        // headers went out through `receiver`.
        let shared = self.clone();
        let task = tokio::spawn(async move {
            let outcome = async {
                let proxy = shared.pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
            }
            .await;
            outcome.map_err(|e| {
                // The log gets the wasm backtrace, the client the cause only.
                shared.fail(&format!("guest failed: {e:?}"));
                format!("guest failed: {}", e.root_cause())
            })
        });

        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => {
                let why = format!("guest answered with error code {code:?}");
                self.fail(&why);
                Err(why)
            }
            // The sender went away with the store: the guest returned or trapped without
            // setting a response.
            Err(_) => Err(match task.await {
                Ok(Ok(())) => "guest returned without setting a response".to_owned(),
                Ok(Err(why)) => why,
                Err(e) => format!("guest task: {e}"),
            }),
        }
    }
}

/// A response made by the host itself (no guest involved).
fn host_error(status: StatusCode, why: &str) -> Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(format!("{why}\n")))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
