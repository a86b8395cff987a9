//! A proxy-wasm (ABI 0.2.1) host on wasmtime that runs HTTP filters in-process, with Envoy's
//! semantics where a filter can tell (see `../shared/envoy-abi-notes.md`, and the trace
//! comparison with real Envoy in `tests/tests/trace_fidelity.rs`):
//!
//! - lifecycle `_initialize` → `proxy_on_context_create(root, 0)` → `proxy_on_vm_start` →
//!   `proxy_on_configure`; per stream `proxy_on_context_create(id, root)`, request and response
//!   callbacks (headers, then the body in a chunk and an empty end-of-stream chunk, as Envoy's
//!   HTTP/1 codec delivers it), then `on_log` **before** `on_done` and `on_delete`;
//! - buffers the host returns are allocated through the guest's own allocator with exactly the
//!   returned size; an empty property or buffer is a null pointer and size 0, an empty header
//!   value is a real empty value and a missing header is `NOT_FOUND`;
//! - every guest pointer is bounds-checked: a bad one returns `INVALID_MEMORY_ACCESS`;
//! - callbacks never re-enter a running VM call: local replies, `proxy_continue_stream`, HTTP
//!   call responses, ticks and queue notifications are all deferred until the current call
//!   returns, then run from the host's event loop;
//! - `proxy_send_local_response` forces a stop and the reply passes through the filter's own
//!   response callbacks; a filter that pauses gets no body until it continues, then the whole
//!   body at once; request headers can no longer be edited once they went upstream;
//! - `proxy_http_call` to named clusters (real loopback servers or scripts), answered on the
//!   root context, with Envoy's timeouts, 503s and resets (see [`calls`]);
//! - ticks per root context, shared data with CAS and shared queues across worker VMs
//!   ([`SharedData`]), metrics with Envoy's rules;
//! - a VM that traps is failed for good: later streams get a 503 (fail closed) or skip the
//!   filter (fail open), as Envoy's `failure_policy` says.
//!
//! It only sees the `.wasm`: this crate does not depend on `signalbox-policy`, so agreement
//! between a filter run here and the native engine means something.

mod abi;
pub mod calls;
pub mod connection;
mod mem;
mod shared;
mod wasi;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use wasmtime::{
    Caller, Engine, Func, Instance, Linker, Memory, Module, Store, TypedFunc, Val, ValType,
};

pub use calls::{CallRequest, Cluster, Clusters, Outcome, Script, Scripted};
pub use connection::ConnectionManager;
pub use shared::SharedData;

use calls::{Delivered, PendingCall};

/// ABI status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(i32)]
pub enum Status {
    /// Success.
    #[default]
    Ok = 0,
    /// Not found.
    NotFound = 1,
    /// Bad argument.
    BadArgument = 2,
    /// Bad guest pointer.
    InvalidMemoryAccess = 6,
    /// Empty.
    Empty = 7,
    /// Stale CAS.
    CasMismatch = 8,
    /// Broken connection (a failed HTTP call).
    BrokenConnection = 11,
    /// Not implemented by this host.
    Unimplemented = 12,
}

/// Header pairs (lower-case names; values are bytes).
pub type Headers = Vec<(String, Vec<u8>)>;

/// The first value of a header in a list of pairs (names compared exactly: lower-case).
pub fn first_header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// What the host knows about one request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Request headers including `:method`, `:path`, `:authority`.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body (empty: the headers end the stream).
    pub body: Vec<u8>,
    /// `source.address` as Envoy reports it (`ip:port`).
    pub source_address: String,
    /// The upstream's answer if the request reaches it (0 is taken as 200).
    pub upstream_status: u32,
    /// `xds.route_name`, when the request matched a named route.
    pub route_name: Option<String>,
}

/// What came back to the client.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// Status.
    pub status: u32,
    /// Headers, after the filter's response callback.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
    /// Whether the filter (or a failed VM) answered with a local reply.
    pub local: bool,
    /// Request headers as they left for the upstream (when not answered locally).
    pub upstream_request_headers: Option<Vec<(String, Vec<u8>)>>,
}

impl Response {
    /// First value of a header (lower-case name).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        first_header(&self.headers, name)
    }
}

/// What Envoy does with streams once the VM has failed (`failure_policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Every later stream gets a 503 (Envoy's default).
    #[default]
    FailClosed,
    /// Later streams skip the filter.
    FailOpen,
}

/// How to start a VM.
#[derive(Debug, Clone, Default)]
pub struct VmOptions {
    /// The plugin configuration bytes.
    pub plugin_config: Vec<u8>,
    /// The VM configuration bytes.
    pub vm_config: Vec<u8>,
    /// Environment variables (Envoy's `vm_config.environment_variables`).
    pub env: Vec<(String, String)>,
    /// Shared data and queues of the process (clone one into every worker).
    pub shared: SharedData,
    /// Clusters `proxy_http_call` can reach.
    pub clusters: Clusters,
    /// `plugin_name`, `plugin_root_id`, `plugin_vm_id` (the vm_id also scopes queues).
    pub plugin_name: String,
    /// The root id.
    pub root_id: String,
    /// The VM id.
    pub vm_id: String,
    /// What happens after the VM traps.
    pub failure_policy: FailurePolicy,
    /// A fixed time (unix nanoseconds) for the guest's clocks instead of the wall clock, so a
    /// case pinned to a date runs the same in the host as natively.
    pub clock_nanos: Option<u64>,
    /// Envoy's connection-manager settings to apply to each request's `source.address` and
    /// `x-forwarded-for`; `None`: the request's `source_address` and headers as given.
    pub connection_manager: Option<ConnectionManager>,
}

#[derive(Debug, Default)]
struct LocalReply {
    status: u32,
    details: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// The stream a VM is working on (the host drives one stream per VM at a time).
#[derive(Debug, Default)]
struct StreamState {
    id: i32,
    request_headers: Vec<(String, Vec<u8>)>,
    /// False once the headers went upstream (`continue` or a callback returning Continue).
    request_headers_editable: bool,
    /// The body chunk of the current `on_request_body`.
    request_body: Vec<u8>,
    /// `None` until the response starts.
    response_headers: Option<Vec<(String, Vec<u8>)>>,
    response_body: Vec<u8>,
    local_reply: Option<LocalReply>,
    /// `proxy_continue_stream` seen for the request / the response.
    continued: [bool; 2],
    source_address: String,
    route_name: Option<String>,
    properties: HashMap<Vec<u8>, Vec<u8>>,
    response_code: Option<u32>,
    code_details: Vec<u8>,
}

/// A metric as Envoy keeps it.
#[derive(Debug, Clone)]
struct Metric {
    kind: i32,
    name: String,
    value: i64,
}

#[derive(Default)]
pub(crate) struct HostState {
    memory: Option<Memory>,
    /// The guest's allocator (`proxy_on_memory_allocate`, or `malloc`).
    allocator: Option<TypedFunc<i32, i32>>,
    env: Vec<(String, String)>,
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    shared: SharedData,
    vm_key: u64,
    clusters: Arc<Clusters>,
    plugin_name: Vec<u8>,
    plugin_root_id: Vec<u8>,
    plugin_vm_id: Vec<u8>,
    root_id: i32,
    /// The context host calls act on (`proxy_set_effective_context` changes it).
    effective: i32,
    stream: Option<StreamState>,
    root_properties: HashMap<Vec<u8>, Vec<u8>>,
    calls: Vec<PendingCall>,
    last_token: u32,
    /// The response `on_http_call_response` is reading.
    call_response: Option<Delivered>,
    /// What `proxy_get_status` reports.
    last_status: (Status, Vec<u8>),
    /// Tick period and next tick of the root context.
    tick: Option<(Duration, Instant)>,
    metrics: Vec<Metric>,
    /// Metric id index → metric (defining a name again gives a new id for the same metric).
    metric_ids: Vec<usize>,
    logs: Vec<(i32, String)>,
    /// Time spent in each import, when profiling.
    import_profile: Option<HashMap<String, (u64, u64)>>,
    /// A fixed clock (`VmOptions::clock_nanos`).
    clock_nanos: Option<u64>,
    /// `VmOptions::connection_manager`.
    connection_manager: Option<ConnectionManager>,
}

impl HostState {
    /// The guest's time: the fixed clock, else the wall clock.
    pub(crate) fn now_nanos(&self) -> u64 {
        self.clock_nanos.unwrap_or_else(unix_nanos)
    }
}

/// Where a VM's time went while profiling: `(name, calls, nanoseconds)` per callback (the
/// guest's work, host calls included) and per import (the host's work).
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Callbacks into the filter.
    pub callbacks: Vec<(String, u64, u64)>,
    /// Host functions the filter called.
    pub imports: Vec<(String, u64, u64)>,
}

/// One VM running one filter (like one Envoy worker thread).
pub struct Filter {
    store: Store<HostState>,
    instance: Instance,
    next_id: i32,
    failed: Option<String>,
    failure_policy: FailurePolicy,
    /// Callback exports, looked up and typed once.
    callbacks: HashMap<&'static str, Callback>,
    /// Time spent in each callback, when profiling.
    callback_profile: Option<HashMap<&'static str, (u64, u64)>>,
}

/// A callback export with its ABI signature, so calls are typed (no per-call checks or
/// allocations); `Missing` when the filter does not export it (Envoy then skips it).
#[derive(Clone)]
enum Callback {
    Missing,
    Args1(TypedFunc<i32, ()>),
    Args1Ret(TypedFunc<i32, i32>),
    Args2(TypedFunc<(i32, i32), ()>),
    Args2Ret(TypedFunc<(i32, i32), i32>),
    Args3Ret(TypedFunc<(i32, i32, i32), i32>),
    Args5(TypedFunc<(i32, i32, i32, i32, i32), ()>),
    Other(Func),
}

impl Callback {
    fn find(instance: &Instance, store: &mut Store<HostState>, name: &str) -> Callback {
        let Some(f) = instance.get_func(&mut *store, name) else {
            return Callback::Missing;
        };
        if let Ok(t) = f.typed(&*store) {
            return Callback::Args1(t);
        }
        if let Ok(t) = f.typed(&*store) {
            return Callback::Args1Ret(t);
        }
        if let Ok(t) = f.typed(&*store) {
            return Callback::Args2(t);
        }
        if let Ok(t) = f.typed(&*store) {
            return Callback::Args2Ret(t);
        }
        if let Ok(t) = f.typed(&*store) {
            return Callback::Args3Ret(t);
        }
        if let Ok(t) = f.typed(&*store) {
            return Callback::Args5(t);
        }
        Callback::Other(f)
    }

    fn call(&self, store: &mut Store<HostState>, args: &[i32]) -> wasmtime::Result<i32> {
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        match self {
            Callback::Missing => Ok(0),
            Callback::Args1(f) => f.call(store, a(0)).map(|()| 0),
            Callback::Args1Ret(f) => f.call(store, a(0)),
            Callback::Args2(f) => f.call(store, (a(0), a(1))).map(|()| 0),
            Callback::Args2Ret(f) => f.call(store, (a(0), a(1))),
            Callback::Args3Ret(f) => f.call(store, (a(0), a(1), a(2))),
            Callback::Args5(f) => f.call(store, (a(0), a(1), a(2), a(3), a(4))).map(|()| 0),
            Callback::Other(f) => {
                let params: Vec<Val> = args.iter().map(|v| Val::I32(*v)).collect();
                let mut results = vec![Val::I32(0); f.ty(&*store).results().len()];
                f.call(&mut *store, &params, &mut results)?;
                Ok(results.first().and_then(Val::i32).unwrap_or(0))
            }
        }
    }
}

/// An import the host serves: which table, which function.
#[derive(Clone)]
struct Import {
    wasi: bool,
    name: String,
}

fn dispatch(
    caller: &mut Caller<'_, HostState>,
    import: &Import,
    args: &[i64],
) -> wasmtime::Result<i32> {
    let started = caller.data().import_profile.is_some().then(Instant::now);
    let result = if import.wasi {
        wasi::call(caller, &import.name, args)
    } else {
        abi::call(caller, &import.name, args)
    };
    if let (Some(profile), Some(t)) = (caller.data_mut().import_profile.as_mut(), started) {
        let entry = profile.entry(import.name.clone()).or_default();
        entry.0 += 1;
        entry.1 += u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
    }
    result.map_err(|e| wasmtime::Error::msg(format!("{e:#}")))
}

/// Links one import with a typed host function for the signatures the ABI and WASI use
/// (all-i32 arguments, or an i64 in second place), and a dynamic one for anything else.
fn link(
    linker: &mut Linker<HostState>,
    module: &str,
    name: &str,
    ty: &wasmtime::FuncType,
    import: Import,
) -> Result<()> {
    macro_rules! typed {
        ($($a:ident: $t:ty),*) => {{
            if ty.results().len() == 1 {
                linker.func_wrap(module, name, move |mut c: Caller<'_, HostState>, $($a: $t),*| {
                    dispatch(&mut c, &import, &[$(i64::from($a)),*])
                })?;
            } else {
                linker.func_wrap(module, name, move |mut c: Caller<'_, HostState>, $($a: $t),*| {
                    dispatch(&mut c, &import, &[$(i64::from($a)),*]).map(|_| ())
                })?;
            }
        }};
    }
    let shape: String = ty
        .params()
        .map(|t| match t {
            ValType::I32 => 'i',
            ValType::I64 => 'I',
            _ => '?',
        })
        .collect();
    match shape.as_str() {
        "" => typed!(),
        "i" => typed!(a: i32),
        "ii" => typed!(a: i32, b: i32),
        "iii" => typed!(a: i32, b: i32, c: i32),
        "iiii" => typed!(a: i32, b: i32, c: i32, d: i32),
        "iiiii" => typed!(a: i32, b: i32, c: i32, d: i32, e: i32),
        "iiiiii" => typed!(a: i32, b: i32, c: i32, d: i32, e: i32, f: i32),
        "iiiiiii" => typed!(a: i32, b: i32, c: i32, d: i32, e: i32, f: i32, g: i32),
        "iiiiiiii" => typed!(a: i32, b: i32, c: i32, d: i32, e: i32, f: i32, g: i32, h: i32),
        "iiiiiiiii" => {
            typed!(a: i32, b: i32, c: i32, d: i32, e: i32, f: i32, g: i32, h: i32, i: i32)
        }
        "iiiiiiiiii" => typed!(
            a: i32, b: i32, c: i32, d: i32, e: i32, f: i32, g: i32, h: i32, i: i32, j: i32
        ),
        "iI" => typed!(a: i32, b: i64),
        "iIi" => typed!(a: i32, b: i64, c: i32),
        "iIii" => typed!(a: i32, b: i64, c: i32, d: i32),
        _ => {
            linker.func_new(module, name, ty.clone(), move |mut c, params, results| {
                let args: Vec<i64> = params
                    .iter()
                    .map(|v| match v {
                        Val::I32(x) => i64::from(*x),
                        Val::I64(x) => *x,
                        _ => 0,
                    })
                    .collect();
                let status = dispatch(&mut c, &import, &args)?;
                if let Some(slot) = results.first_mut() {
                    *slot = Val::I32(status);
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// Compiles a module once; cheap to clone.
pub fn compile(engine: &Engine, wasm: &[u8]) -> Result<Module> {
    Module::new(engine, wasm).map_err(|e| anyhow!("compiling the filter: {e:?}"))
}

/// `StreamState::continued` index of each direction (as `proxy_continue_stream` numbers them).
const REQUEST: usize = 0;
const RESPONSE: usize = 1;

/// How long a paused stream may wait for the filter before the host gives up on it.
const STREAM_PATIENCE: Duration = Duration::from_secs(30);

impl Filter {
    /// Instantiates the module and runs its start-up: `_initialize`, root context,
    /// `on_vm_start`, `on_configure`. Fails if the plugin refuses its configuration.
    pub fn start(engine: &Engine, module: &Module, opts: &VmOptions) -> Result<Filter> {
        let (filter, configured) = Self::start_even_if_refused(engine, module, opts)?;
        if !configured {
            bail!("proxy_on_configure returned false: {:?}", filter.logs());
        }
        Ok(filter)
    }

    /// Like [`Filter::start`], but keeps the VM when `on_configure` returns false (and says
    /// so): later streams are created on that root context. Envoy does not route streams to a
    /// plugin whose configuration it refused; this checks that a filter survives it anyway.
    pub fn start_even_if_refused(
        engine: &Engine,
        module: &Module,
        opts: &VmOptions,
    ) -> Result<(Filter, bool)> {
        let state = HostState {
            env: opts.env.clone(),
            plugin_config: opts.plugin_config.clone(),
            vm_config: opts.vm_config.clone(),
            shared: opts.shared.clone(),
            vm_key: opts.shared.new_vm_key(),
            clusters: Arc::new(opts.clusters.clone()),
            plugin_name: opts.plugin_name.clone().into_bytes(),
            plugin_root_id: opts.root_id.clone().into_bytes(),
            plugin_vm_id: opts.vm_id.clone().into_bytes(),
            root_id: 1,
            effective: 1,
            last_status: (Status::Ok, Vec::new()),
            clock_nanos: opts.clock_nanos,
            connection_manager: opts.connection_manager,
            ..HostState::default()
        };
        let mut store = Store::new(engine, state);
        let mut linker: Linker<HostState> = Linker::new(engine);
        for import in module.imports() {
            let (module_name, name) = (import.module().to_owned(), import.name().to_owned());
            let Some(ty) = import.ty().func().cloned() else {
                bail!("import {module_name}.{name} is not a function");
            };
            let known = match module_name.as_str() {
                "env" => abi::is_known(&name),
                "wasi_snapshot_preview1" => wasi::is_known(&name),
                _ => false,
            };
            if !known {
                bail!("the filter imports {module_name}.{name}, which this host does not provide");
            }
            if !ty.results().all(|t| matches!(t, ValType::I32)) {
                bail!("import {module_name}.{name} has an unexpected result type");
            }
            let target = Import {
                wasi: module_name == "wasi_snapshot_preview1",
                name: name.clone(),
            };
            link(&mut linker, &module_name, &name, &ty, target)?;
        }
        let instance = linker.instantiate(&mut store, module)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .context("no memory export")?;
        store.data_mut().memory = Some(memory);
        let allocator = ["proxy_on_memory_allocate", "malloc"]
            .iter()
            .find_map(|n| instance.get_typed_func::<i32, i32>(&mut store, n).ok());
        store.data_mut().allocator = allocator;
        for init in ["_initialize", "_start"] {
            if let Some(f) = instance.get_func(&mut store, init) {
                f.call(&mut store, &[], &mut [])?;
                break;
            }
        }
        let mut filter = Filter {
            store,
            instance,
            next_id: 2,
            failed: None,
            failure_policy: opts.failure_policy,
            callbacks: HashMap::new(),
            callback_profile: None,
        };
        filter.call_on(1, "proxy_on_context_create", &[1, 0])?;
        let vm_len = i32::try_from(filter.store.data().vm_config.len())?;
        if filter.call_on(1, "proxy_on_vm_start", &[1, vm_len])? == 0 {
            bail!("proxy_on_vm_start returned false");
        }
        let cfg_len = i32::try_from(filter.store.data().plugin_config.len())?;
        let configured = filter.call_on(1, "proxy_on_configure", &[1, cfg_len])? != 0;
        Ok((filter, configured))
    }

    /// A configuration update, as Envoy applies one to a running worker: the VM stays (its
    /// memory and globals too), a new root context is created and gets `on_vm_start` and
    /// `on_configure` with the new plugin configuration; later streams belong to it. Fails if
    /// the plugin refuses the configuration (Envoy then keeps serving with the old listener).
    pub fn reconfigure(&mut self, plugin_config: &[u8]) -> Result<()> {
        let root = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(2);
        let previous = {
            let s = self.store.data_mut();
            s.plugin_config = plugin_config.to_vec();
            s.tick = None;
            std::mem::replace(&mut s.root_id, root)
        };
        self.call_on(root, "proxy_on_context_create", &[root, 0])?;
        let vm_len = i32::try_from(self.store.data().vm_config.len())?;
        let started = self.call_on(root, "proxy_on_vm_start", &[root, vm_len])? != 0;
        let cfg_len = i32::try_from(plugin_config.len())?;
        if !started || self.call_on(root, "proxy_on_configure", &[root, cfg_len])? == 0 {
            self.store.data_mut().root_id = previous;
            bail!(
                "the plugin refused the new configuration: {:?}",
                self.logs().last()
            );
        }
        Ok(())
    }

    /// Calls an export with `context` as the effective context. A trap fails the VM for good.
    fn call_on(&mut self, context: i32, name: &'static str, args: &[i32]) -> Result<i32> {
        if let Some(why) = &self.failed {
            bail!("the VM has failed: {why}");
        }
        let callback = match self.callbacks.get(name) {
            Some(c) => c.clone(),
            None => {
                let c = Callback::find(&self.instance, &mut self.store, name);
                self.callbacks.insert(name, c.clone());
                c
            }
        };
        self.store.data_mut().effective = context;
        let started = self.callback_profile.is_some().then(Instant::now);
        let result = callback.call(&mut self.store, args);
        if let (Some(profile), Some(t)) = (self.callback_profile.as_mut(), started) {
            let entry = profile.entry(name).or_default();
            entry.0 += 1;
            entry.1 += u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        }
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let why = format!("{name}: {e:?}");
                self.failed = Some(why.clone());
                bail!("the VM failed in {why}")
            }
        }
    }

    /// Starts (or stops and clears) counting where the VM's time goes.
    pub fn set_profiling(&mut self, on: bool) {
        self.callback_profile = on.then(HashMap::new);
        self.store.data_mut().import_profile = on.then(HashMap::new);
    }

    /// Where the time went since profiling started, most expensive first.
    pub fn profile(&self) -> Profile {
        let sorted = |mut v: Vec<(String, u64, u64)>| {
            v.sort_by_key(|e| std::cmp::Reverse(e.2));
            v
        };
        Profile {
            callbacks: sorted(
                self.callback_profile
                    .iter()
                    .flatten()
                    .map(|(k, (n, t))| ((*k).to_owned(), *n, *t))
                    .collect(),
            ),
            imports: sorted(
                self.store
                    .data()
                    .import_profile
                    .iter()
                    .flatten()
                    .map(|(k, (n, t))| (k.clone(), *n, *t))
                    .collect(),
            ),
        }
    }

    /// Why the VM failed, if it did (a trap: a Rust panic, an out-of-bounds access, ...).
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Logs the filter wrote, `(level, message)`.
    pub fn logs(&self) -> &[(i32, String)] {
        &self.store.data().logs
    }

    /// Metrics the filter defined: `(type, name, value)`.
    pub fn metrics(&self) -> Vec<(i32, String, i64)> {
        self.store
            .data()
            .metrics
            .iter()
            .map(|m| (m.kind, m.name.clone(), m.value))
            .collect()
    }

    /// The guest's linear memory size in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.store
            .data()
            .memory
            .map(|m| m.data_size(&self.store))
            .unwrap_or(0)
    }

    /// Runs the event loop (HTTP call answers, queue notifications, ticks) for `duration`.
    pub fn advance(&mut self, duration: Duration) -> Result<()> {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            if !self.pump()? {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// Delivers every event that is due; true if something was delivered.
    fn pump(&mut self) -> Result<bool> {
        let mut delivered = false;
        let now = Instant::now();
        let root = self.store.data().root_id;
        let mut index = 0;
        while index < self.store.data().calls.len() {
            let ready = self
                .store
                .data_mut()
                .calls
                .get_mut(index)
                .and_then(|c| c.poll(now).map(|d| (c.token, d)));
            let Some((token, answer)) = ready else {
                index += 1;
                continue;
            };
            self.store.data_mut().calls.remove(index);
            let (n_headers, body_size) = match &answer.headers {
                Some(h) => (h.len(), answer.body.len()),
                None => (0, 0),
            };
            {
                let s = self.store.data_mut();
                s.last_status = answer.status.clone();
                s.call_response = Some(answer);
            }
            let token = i32::from_ne_bytes(token.to_ne_bytes());
            let result = self.call_on(
                root,
                "proxy_on_http_call_response",
                &[
                    root,
                    token,
                    i32::try_from(n_headers)?,
                    i32::try_from(body_size)?,
                    0,
                ],
            );
            self.store.data_mut().call_response = None;
            result?;
            delivered = true;
        }
        let vm = self.store.data().vm_key;
        for (owner_root, token) in self.store.data().shared.take_announcements(vm) {
            let token = i32::from_ne_bytes(token.to_ne_bytes());
            self.call_on(owner_root, "proxy_on_queue_ready", &[owner_root, token])?;
            delivered = true;
        }
        if let Some((period, next)) = self.store.data().tick
            && now >= next
        {
            self.store.data_mut().tick = Some((period, now + period));
            self.call_on(root, "proxy_on_tick", &[root])?;
            delivered = true;
        }
        Ok(delivered)
    }

    /// Runs the event loop until `done` holds for the current stream.
    fn wait_for(&mut self, done: impl Fn(&StreamState) -> bool) -> Result<()> {
        let since = Instant::now();
        loop {
            let finished = self.store.data().stream.as_ref().is_none_or(&done);
            if finished {
                return Ok(());
            }
            if since.elapsed() > STREAM_PATIENCE {
                bail!("the stream stayed paused for {STREAM_PATIENCE:?}");
            }
            if !self.pump()? {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Runs one request through the filter, Envoy-style: request headers (and body), then
    /// either a local reply or the upstream's answer through the response callbacks, then
    /// `on_log`, `on_done`, `on_delete`. Events due in between (HTTP call answers, ticks, queue
    /// notifications) are delivered, and a paused stream waits for them.
    ///
    /// The request during which the VM traps gets a 503 (as in Envoy, whatever the policy);
    /// later requests get what the failure policy says: a 503 (fail closed) or the upstream's
    /// answer without the filter (fail open).
    pub fn request(&mut self, req: &Request) -> Result<Response> {
        let policy = if self.failed.is_none() {
            match self.stream(req) {
                Ok(r) => return Ok(r),
                Err(e) if self.failed.is_none() => return Err(e),
                // The stream that was in the VM when it trapped fails, whatever the policy.
                Err(_) => FailurePolicy::FailClosed,
            }
        } else {
            self.failure_policy
        };
        self.store.data_mut().stream = None;
        Ok(match policy {
            FailurePolicy::FailClosed => Response {
                status: 503,
                headers: vec![("content-length".to_owned(), b"0".to_vec())],
                body: Vec::new(),
                local: true,
                upstream_request_headers: None,
            },
            FailurePolicy::FailOpen => {
                let (status, headers, body) = upstream_answer(req);
                Response {
                    status,
                    headers: headers
                        .into_iter()
                        .filter(|(k, _)| k != ":status")
                        .collect(),
                    body,
                    local: false,
                    upstream_request_headers: Some(req.headers.clone()),
                }
            }
        })
    }

    fn stream(&mut self, req: &Request) -> Result<Response> {
        self.pump()?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(2);
        let root = self.store.data().root_id;
        let (request_headers, source_address) = match self.store.data().connection_manager {
            Some(cm) => cm.apply(&req.headers, &req.source_address),
            None => (req.headers.clone(), req.source_address.clone()),
        };
        let header_count = request_headers.len();
        self.store.data_mut().stream = Some(StreamState {
            id,
            request_headers,
            request_headers_editable: true,
            source_address,
            route_name: req.route_name.clone(),
            ..StreamState::default()
        });
        self.call_on(id, "proxy_on_context_create", &[id, root])?;
        let n = i32::try_from(header_count)?;
        let has_body = !req.body.is_empty();
        let action = self.call_on(
            id,
            "proxy_on_request_headers",
            &[id, n, i32::from(!has_body)],
        )?;
        let paused = self.hold_if_paused(action, REQUEST)?;
        if !self.has_local_reply() {
            self.with_stream(|s| s.request_headers_editable = false);
            if has_body {
                if paused {
                    // Envoy buffered the body while the filter was paused: all of it at once.
                    self.request_body_chunk(id, &req.body, true)?;
                } else {
                    let action = self.request_body_chunk(id, &req.body, false)?;
                    self.request_body_chunk(id, b"", true)?;
                    self.hold_if_paused(action, REQUEST)?;
                }
            }
        }
        let local = self
            .store
            .data_mut()
            .stream
            .as_mut()
            .and_then(|s| s.local_reply.take());
        let (status, headers, body, upstream_sent, details) = match local {
            Some(reply) => {
                let mut headers =
                    vec![(":status".to_owned(), reply.status.to_string().into_bytes())];
                headers.extend(reply.headers);
                // Envoy adds the length of a body, and `text/plain` unless the filter typed it.
                if !reply.body.is_empty() {
                    headers.push((
                        "content-length".to_owned(),
                        reply.body.len().to_string().into_bytes(),
                    ));
                    if first_header(&headers, "content-type").is_none() {
                        headers.push(("content-type".to_owned(), b"text/plain".to_vec()));
                    }
                }
                (reply.status, headers, reply.body, None, reply.details)
            }
            None => {
                let sent = self.with_stream(|s| s.request_headers.clone());
                let (status, headers, body) = upstream_answer(req);
                (status, headers, body, Some(sent), b"via_upstream".to_vec())
            }
        };
        let is_local = upstream_sent.is_none();
        self.with_stream(|s| {
            s.response_headers = Some(headers.clone());
            s.response_code = Some(status);
            s.code_details = details;
        });
        let n = i32::try_from(headers.len())?;
        let end = i32::from(body.is_empty());
        let action = self.call_on(id, "proxy_on_response_headers", &[id, n, end])?;
        self.hold_if_paused(action, RESPONSE)?;
        if !body.is_empty() {
            // Envoy hands a local reply's body over in one chunk that ends the stream, an
            // upstream body as a chunk and then an empty end-of-stream chunk.
            self.response_body_chunk(id, &body, is_local)?;
            if !is_local {
                self.response_body_chunk(id, b"", true)?;
            }
        }
        let mut response_headers =
            self.with_stream(|s| s.response_headers.clone().unwrap_or_default());
        response_headers.retain(|(k, _)| k != ":status");
        self.call_on(id, "proxy_on_log", &[id])?;
        self.call_on(id, "proxy_on_done", &[id])?;
        self.call_on(id, "proxy_on_delete", &[id])?;
        self.store.data_mut().stream = None;
        Ok(Response {
            status,
            headers: response_headers,
            body,
            local: is_local,
            upstream_request_headers: upstream_sent,
        })
    }

    /// After a callback returned `action`: if it paused its direction (and did not already
    /// continue), runs the event loop until the filter continues it — or, on the request side,
    /// answers with a local reply. Returns whether the stream was paused.
    fn hold_if_paused(&mut self, action: i32, direction: usize) -> Result<bool> {
        let continued = |s: &StreamState| s.continued.get(direction).copied().unwrap_or(true);
        if action == 0 || self.with_stream(|s| continued(s)) {
            return Ok(false);
        }
        self.wait_for(|s| continued(s) || (direction == REQUEST && s.local_reply.is_some()))?;
        Ok(true)
    }

    fn request_body_chunk(&mut self, id: i32, chunk: &[u8], end: bool) -> Result<i32> {
        self.with_stream(|s| s.request_body = chunk.to_vec());
        let size = i32::try_from(chunk.len())?;
        self.call_on(id, "proxy_on_request_body", &[id, size, i32::from(end)])
    }

    fn response_body_chunk(&mut self, id: i32, chunk: &[u8], end: bool) -> Result<i32> {
        self.with_stream(|s| s.response_body = chunk.to_vec());
        let size = i32::try_from(chunk.len())?;
        self.call_on(id, "proxy_on_response_body", &[id, size, i32::from(end)])
    }

    fn has_local_reply(&self) -> bool {
        self.store
            .data()
            .stream
            .as_ref()
            .is_some_and(|s| s.local_reply.is_some())
    }

    fn with_stream<R: Default>(&mut self, f: impl FnOnce(&mut StreamState) -> R) -> R {
        self.store
            .data_mut()
            .stream
            .as_mut()
            .map(f)
            .unwrap_or_default()
    }
}

/// The upstream's answer to a request that reaches it (a fixed origin).
fn upstream_answer(req: &Request) -> (u32, Headers, Vec<u8>) {
    let status = if req.upstream_status == 0 {
        200
    } else {
        req.upstream_status
    };
    let body = b"origin\n".to_vec();
    let headers = vec![
        (":status".to_owned(), status.to_string().into_bytes()),
        ("x-origin".to_owned(), b"yes".to_vec()),
        ("content-type".to_owned(), b"text/plain".to_vec()),
        (
            "content-length".to_owned(),
            body.len().to_string().into_bytes(),
        ),
        ("x-signalbox-leak".to_owned(), b"origin".to_vec()),
    ];
    (status, headers, body)
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
