//! A proxy-wasm (ABI 0.2.1) host on wasmtime that runs HTTP filters in-process, with Envoy's
//! semantics where the filter can tell (see `../shared/envoy-abi-notes.md`):
//!
//! - lifecycle `_initialize` → `proxy_on_context_create(root, 0)` → `proxy_on_vm_start` →
//!   `proxy_on_configure`; per stream `proxy_on_context_create(id, root)`, request and response
//!   callbacks, then `on_log` **before** `on_done` and `on_delete`, as Envoy does;
//! - buffers the host returns are allocated through the guest's own allocator
//!   (`proxy_on_memory_allocate` or `malloc`) with exactly the returned size; an empty property
//!   or buffer is a null pointer and size 0, an empty header value is a real empty value and a
//!   missing header is `NOT_FOUND`;
//! - every guest pointer is bounds-checked: a bad one returns `INVALID_MEMORY_ACCESS` (6),
//!   never a host panic;
//! - `proxy_send_local_response` is queued until the callback returns and forces a stop; the
//!   local reply then passes through the filter's own response callbacks;
//! - shared data is process-wide per host (`SharedData`, cloned into every worker VM), with one
//!   CAS counter that starts at 1, `cas = 0` writes unconditionally, a stale CAS gets
//!   `CAS_MISMATCH`;
//! - metrics: counters refuse increments ≤ 0 (`BAD_ARGUMENT`), histograms cannot be read.
//!
//! It only sees the `.wasm`: this crate does not depend on `signalbox-policy`, so agreement
//! between a filter run here and the native engine means something. Not yet implemented (the
//! rest of the wasmtime-host issue): outgoing HTTP calls, timers, queues, gRPC, the trace
//! comparison with Envoy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use wasmtime::{Caller, Engine, Extern, Instance, Linker, Memory, Module, Store, Val, ValType};

/// ABI status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// Success.
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
    /// Not implemented by this host.
    Unimplemented = 12,
}

/// Process-wide shared data (one per simulated Envoy process), shared by worker VMs.
#[derive(Debug, Default, Clone)]
pub struct SharedData {
    inner: Arc<SharedInner>,
}

/// Key → (value, CAS).
type SharedMap = HashMap<Vec<u8>, (Vec<u8>, u32)>;

#[derive(Debug, Default)]
struct SharedInner {
    map: Mutex<SharedMap>,
    cas: AtomicU32,
}

impl SharedData {
    /// Number of keys stored (shared data never deletes).
    pub fn len(&self) -> usize {
        self.inner.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn next_cas(&self) -> u32 {
        // One global counter starting at 1; 0 is skipped on wrap.
        loop {
            let v = self
                .inner
                .cas
                .fetch_add(1, Ordering::SeqCst)
                .wrapping_add(1);
            if v != 0 {
                return v;
            }
        }
    }
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
    /// The upstream's answer if the request reaches it.
    pub upstream_status: u32,
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
    /// Whether the filter answered with a local reply.
    pub local: bool,
    /// Request headers as they left for the upstream (when not answered locally).
    pub upstream_request_headers: Option<Vec<(String, Vec<u8>)>>,
}

impl Response {
    /// First value of a header (lower-case name).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

#[derive(Debug, Default)]
struct LocalReply {
    status: u32,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

#[derive(Default)]
struct HostState {
    memory: Option<Memory>,
    env: Vec<(String, String)>,
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    shared: SharedData,
    properties: HashMap<Vec<u8>, Vec<u8>>,
    request_headers: Vec<(String, Vec<u8>)>,
    response_headers: Vec<(String, Vec<u8>)>,
    request_body: Vec<u8>,
    local_reply: Option<LocalReply>,
    metrics: Vec<(i32, String, i64)>,
    logs: Vec<(i32, String)>,
    /// Which allocator export to call.
    allocator: Option<String>,
}

/// One VM running one filter (like one Envoy worker thread).
pub struct Filter {
    store: Store<HostState>,
    instance: Instance,
    root_id: i32,
    next_id: i32,
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
    /// Shared data of the process (clone one `SharedData` into every worker).
    pub shared: SharedData,
}

const KNOWN_UNIMPLEMENTED: &[&str] = &[
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_call_foreign_function",
    "proxy_close_stream",
    "proxy_set_buffer_bytes",
    "proxy_set_header_map_pairs",
    "proxy_get_status",
];

/// Compiles a module once; cheap to clone.
pub fn compile(engine: &Engine, wasm: &[u8]) -> Result<Module> {
    Module::new(engine, wasm).map_err(|e| anyhow!("compiling the filter: {e:?}"))
}

impl Filter {
    /// Instantiates the module and runs its start-up: `_initialize`, root context,
    /// `on_vm_start`, `on_configure`. Fails if the plugin refuses its configuration.
    pub fn start(engine: &Engine, module: &Module, opts: &VmOptions) -> Result<Filter> {
        let state = HostState {
            env: opts.env.clone(),
            plugin_config: opts.plugin_config.clone(),
            vm_config: opts.vm_config.clone(),
            shared: opts.shared.clone(),
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
                "env" => is_known_env(&name),
                "wasi_snapshot_preview1" => is_known_wasi(&name),
                _ => false,
            };
            if !known {
                bail!("the filter imports {module_name}.{name}, which this host does not provide");
            }
            let results_are_i32 = ty.results().all(|t| matches!(t, ValType::I32));
            if !results_are_i32 {
                bail!("import {module_name}.{name} has an unexpected result type");
            }
            let n = name.clone();
            let wasi = module_name == "wasi_snapshot_preview1";
            linker.func_new(
                &module_name,
                &name,
                ty,
                move |mut caller, params, results| {
                    let status = if wasi {
                        wasi_call(&mut caller, &n, params)
                    } else {
                        env_call(&mut caller, &n, params)
                    }
                    .map_err(|e| wasmtime::Error::msg(format!("{e:#}")))?;
                    if let Some(slot) = results.first_mut() {
                        *slot = Val::I32(status);
                    }
                    Ok(())
                },
            )?;
        }
        let instance = linker.instantiate(&mut store, module)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .context("no memory export")?;
        store.data_mut().memory = Some(memory);
        store.data_mut().allocator = ["proxy_on_memory_allocate", "malloc"]
            .iter()
            .find(|n| instance.get_func(&mut store, n).is_some())
            .map(|n| (*n).to_owned());
        for init in ["_initialize", "_start"] {
            if let Some(f) = instance.get_func(&mut store, init) {
                f.call(&mut store, &[], &mut [])?;
                break;
            }
        }
        let mut filter = Filter {
            store,
            instance,
            root_id: 1,
            next_id: 2,
        };
        filter.call("proxy_on_context_create", &[1, 0])?;
        let vm_len = i32::try_from(filter.store.data().vm_config.len())?;
        if filter.call("proxy_on_vm_start", &[1, vm_len])? == 0 {
            bail!("proxy_on_vm_start returned false");
        }
        let cfg_len = i32::try_from(filter.store.data().plugin_config.len())?;
        if filter.call("proxy_on_configure", &[1, cfg_len])? == 0 {
            bail!("proxy_on_configure returned false: {:?}", filter.logs());
        }
        Ok(filter)
    }

    fn call(&mut self, name: &str, args: &[i32]) -> Result<i32> {
        let f = self
            .instance
            .get_func(&mut self.store, name)
            .with_context(|| format!("no export {name}"))?;
        let params: Vec<Val> = args.iter().map(|a| Val::I32(*a)).collect();
        let mut results = vec![Val::I32(0); f.ty(&self.store).results().len()];
        f.call(&mut self.store, &params, &mut results)
            .map_err(|e| anyhow!("calling {name}: {e:?}"))?;
        Ok(results.first().and_then(Val::i32).unwrap_or(0))
    }

    /// Logs the filter wrote, `(level, message)`.
    pub fn logs(&self) -> &[(i32, String)] {
        &self.store.data().logs
    }

    /// Metrics the filter defined: `(type, name, value)`.
    pub fn metrics(&self) -> &[(i32, String, i64)] {
        &self.store.data().metrics
    }

    /// The guest's linear memory size in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.store
            .data()
            .memory
            .map(|m| m.data_size(&self.store))
            .unwrap_or(0)
    }

    /// Runs one request through the filter, Envoy-style: request headers (and body), then
    /// either the local reply or the upstream's answer through the response callback, then
    /// `on_log`, `on_done`, `on_delete`.
    pub fn request(&mut self, req: &Request) -> Result<Response> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(2);
        {
            let s = self.store.data_mut();
            s.request_headers = req.headers.clone();
            s.response_headers.clear();
            s.request_body = req.body.clone();
            s.local_reply = None;
            s.properties.clear();
            s.properties.insert(
                b"source\0address".to_vec(),
                req.source_address.clone().into_bytes(),
            );
        }
        self.call("proxy_on_context_create", &[id, self.root_id])?;
        let n = i32::try_from(req.headers.len())?;
        let eos = i32::from(req.body.is_empty());
        let action = self.call("proxy_on_request_headers", &[id, n, eos])?;
        if self.store.data().local_reply.is_none() && !req.body.is_empty() {
            // Envoy delivers no body to a filter that paused on headers.
            if action == 0 {
                let size = i32::try_from(req.body.len())?;
                self.call("proxy_on_request_body", &[id, size, 1])?;
            }
        }
        let (mut response, upstream) = match self.store.data_mut().local_reply.take() {
            Some(local) => {
                let mut headers =
                    vec![(":status".to_owned(), local.status.to_string().into_bytes())];
                headers.extend(local.headers);
                (
                    Response {
                        status: local.status,
                        headers,
                        body: local.body,
                        local: true,
                        upstream_request_headers: None,
                    },
                    None,
                )
            }
            None => {
                let sent = self.store.data().request_headers.clone();
                let headers = vec![
                    (
                        ":status".to_owned(),
                        req.upstream_status.to_string().into_bytes(),
                    ),
                    ("content-type".to_owned(), b"text/plain".to_vec()),
                    ("x-signalbox-leak".to_owned(), b"origin".to_vec()),
                ];
                (
                    Response {
                        status: req.upstream_status,
                        headers,
                        body: b"origin\n".to_vec(),
                        local: false,
                        upstream_request_headers: None,
                    },
                    Some(sent),
                )
            }
        };
        self.store.data_mut().response_headers = response.headers.clone();
        let n = i32::try_from(response.headers.len())?;
        self.call("proxy_on_response_headers", &[id, n, 0])?;
        response.headers = self.store.data().response_headers.clone();
        response.headers.retain(|(k, _)| k != ":status");
        response.upstream_request_headers = upstream;
        self.call("proxy_on_log", &[id])?;
        self.call("proxy_on_done", &[id])?;
        self.call("proxy_on_delete", &[id])?;
        Ok(response)
    }
}

/// Wall-clock time in nanoseconds since the Unix epoch.
fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `Ok` when a guest-memory write succeeded, `INVALID_MEMORY_ACCESS` otherwise.
fn written(ok: bool) -> Status {
    if ok {
        Status::Ok
    } else {
        Status::InvalidMemoryAccess
    }
}

fn is_known_env(name: &str) -> bool {
    matches!(
        name,
        "proxy_log"
            | "proxy_get_log_level"
            | "proxy_get_current_time_nanoseconds"
            | "proxy_set_tick_period_milliseconds"
            | "proxy_get_buffer_bytes"
            | "proxy_get_header_map_pairs"
            | "proxy_get_header_map_value"
            | "proxy_replace_header_map_value"
            | "proxy_remove_header_map_value"
            | "proxy_add_header_map_value"
            | "proxy_get_property"
            | "proxy_set_property"
            | "proxy_get_shared_data"
            | "proxy_set_shared_data"
            | "proxy_continue_stream"
            | "proxy_send_local_response"
            | "proxy_set_effective_context"
            | "proxy_done"
            | "proxy_define_metric"
            | "proxy_get_metric"
            | "proxy_record_metric"
            | "proxy_increment_metric"
    ) || KNOWN_UNIMPLEMENTED.contains(&name)
}

fn is_known_wasi(name: &str) -> bool {
    matches!(
        name,
        "environ_get"
            | "environ_sizes_get"
            | "fd_write"
            | "proc_exit"
            | "clock_time_get"
            | "random_get"
            | "args_get"
            | "args_sizes_get"
            | "fd_close"
            | "fd_seek"
            | "fd_fdstat_get"
            | "sched_yield"
    )
}

fn arg(params: &[Val], i: usize) -> i64 {
    match params.get(i) {
        Some(Val::I32(v)) => i64::from(*v),
        Some(Val::I64(v)) => *v,
        _ => 0,
    }
}

fn uarg(params: &[Val], i: usize) -> usize {
    usize::try_from(arg(params, i) as u32).unwrap_or(0)
}

/// Bounds-checked guest memory access.
struct Mem;

impl Mem {
    fn read(caller: &mut Caller<'_, HostState>, ptr: usize, len: usize) -> Option<Vec<u8>> {
        let memory = caller.data().memory?;
        memory
            .data(&*caller)
            .get(ptr..ptr.checked_add(len)?)
            .map(<[u8]>::to_vec)
    }

    fn write(caller: &mut Caller<'_, HostState>, ptr: usize, bytes: &[u8]) -> bool {
        let Some(memory) = caller.data().memory else {
            return false;
        };
        let Some(end) = ptr.checked_add(bytes.len()) else {
            return false;
        };
        match memory.data_mut(&mut *caller).get_mut(ptr..end) {
            Some(slot) => {
                slot.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    fn write_u32(caller: &mut Caller<'_, HostState>, ptr: usize, v: u32) -> bool {
        Self::write(caller, ptr, &v.to_le_bytes())
    }

    /// Copies `bytes` into a fresh guest allocation and writes its pointer and size to
    /// `ptr_ptr` / `size_ptr`. Empty data is a null pointer and size 0.
    fn give(
        caller: &mut Caller<'_, HostState>,
        bytes: &[u8],
        ptr_ptr: usize,
        size_ptr: usize,
    ) -> Result<Status> {
        let ptr = if bytes.is_empty() {
            0
        } else {
            Self::allocate(caller, bytes.len())?
        };
        if ptr != 0 && !Self::write(caller, ptr, bytes) {
            return Ok(Status::InvalidMemoryAccess);
        }
        let ptr32 = u32::try_from(ptr).unwrap_or(0);
        let len32 = u32::try_from(bytes.len()).unwrap_or(0);
        if !Self::write_u32(caller, ptr_ptr, ptr32) || !Self::write_u32(caller, size_ptr, len32) {
            return Ok(Status::InvalidMemoryAccess);
        }
        Ok(Status::Ok)
    }

    fn allocate(caller: &mut Caller<'_, HostState>, size: usize) -> Result<usize> {
        let name = caller
            .data()
            .allocator
            .clone()
            .context("the filter exports no allocator")?;
        let f = caller
            .get_export(&name)
            .and_then(Extern::into_func)
            .context("allocator")?;
        let mut out = [Val::I32(0)];
        f.call(&mut *caller, &[Val::I32(i32::try_from(size)?)], &mut out)?;
        let ptr = out.first().and_then(Val::i32).unwrap_or(0) as u32 as usize;
        if ptr == 0 {
            bail!("guest allocation of {size} bytes failed");
        }
        Ok(ptr)
    }
}

fn serialize_map(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// A status as the import's result (`Ok` below is `Status::Ok`).
fn done(status: Status) -> Result<i32> {
    std::result::Result::Ok(status as i32)
}

fn env_call(caller: &mut Caller<'_, HostState>, name: &str, p: &[Val]) -> Result<i32> {
    use Status::*;
    let status = match name {
        "proxy_log" => {
            let msg = Mem::read(caller, uarg(p, 1), uarg(p, 2));
            match msg {
                Some(m) => {
                    let level = arg(p, 0) as i32;
                    caller
                        .data_mut()
                        .logs
                        .push((level, String::from_utf8_lossy(&m).into_owned()));
                    Ok
                }
                None => InvalidMemoryAccess,
            }
        }
        "proxy_get_log_level" => written(Mem::write_u32(caller, uarg(p, 0), 2)),
        "proxy_get_current_time_nanoseconds" => {
            let now = unix_nanos();
            written(Mem::write(caller, uarg(p, 0), &now.to_le_bytes()))
        }
        "proxy_set_tick_period_milliseconds"
        | "proxy_continue_stream"
        | "proxy_set_effective_context"
        | "proxy_done" => Ok,
        "proxy_get_buffer_bytes" => {
            let data = match arg(p, 0) {
                0 => caller.data().request_body.clone(),
                6 => caller.data().vm_config.clone(),
                7 => caller.data().plugin_config.clone(),
                _ => return done(NotFound),
            };
            let (start, max) = (uarg(p, 1), uarg(p, 2));
            let slice = data.get(start.min(data.len())..).unwrap_or_default();
            let slice = slice
                .get(..max.min(slice.len()))
                .unwrap_or_default()
                .to_vec();
            Mem::give(caller, &slice, uarg(p, 3), uarg(p, 4))?
        }
        "proxy_get_header_map_pairs" => {
            let map = match arg(p, 0) {
                0 => caller.data().request_headers.clone(),
                2 => caller.data().response_headers.clone(),
                _ => Vec::new(),
            };
            Mem::give(caller, &serialize_map(&map), uarg(p, 1), uarg(p, 2))?
        }
        "proxy_get_header_map_value"
        | "proxy_replace_header_map_value"
        | "proxy_remove_header_map_value"
        | "proxy_add_header_map_value" => {
            let Some(key) = Mem::read(caller, uarg(p, 1), uarg(p, 2)) else {
                return done(InvalidMemoryAccess);
            };
            let key = String::from_utf8_lossy(&key).to_ascii_lowercase();
            let which = arg(p, 0);
            let value = match name {
                "proxy_replace_header_map_value" | "proxy_add_header_map_value" => {
                    match Mem::read(caller, uarg(p, 3), uarg(p, 4)) {
                        Some(v) => Some(v),
                        None => return done(InvalidMemoryAccess),
                    }
                }
                _ => None,
            };
            let s = caller.data_mut();
            let map = match which {
                0 => &mut s.request_headers,
                2 => &mut s.response_headers,
                _ => return done(BadArgument),
            };
            match name {
                "proxy_get_header_map_value" => {
                    let found = map.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
                    match found {
                        // An empty value is a real value: allocate it (not null + 0).
                        Some(v) => {
                            let ptr = Mem::allocate(caller, v.len().max(1))?;
                            if !Mem::write(caller, ptr, &v)
                                || !Mem::write_u32(caller, uarg(p, 3), ptr as u32)
                                || !Mem::write_u32(caller, uarg(p, 4), v.len() as u32)
                            {
                                InvalidMemoryAccess
                            } else {
                                Ok
                            }
                        }
                        None => NotFound,
                    }
                }
                "proxy_remove_header_map_value" => {
                    map.retain(|(k, _)| *k != key);
                    Ok
                }
                "proxy_replace_header_map_value" => {
                    map.retain(|(k, _)| *k != key);
                    map.push((key, value.unwrap_or_default()));
                    Ok
                }
                _ => {
                    map.push((key, value.unwrap_or_default()));
                    Ok
                }
            }
        }
        "proxy_get_property" => {
            let Some(path) = Mem::read(caller, uarg(p, 0), uarg(p, 1)) else {
                return done(InvalidMemoryAccess);
            };
            match caller.data().properties.get(&path).cloned() {
                Some(v) => Mem::give(caller, &v, uarg(p, 2), uarg(p, 3))?,
                None => NotFound,
            }
        }
        "proxy_set_property" => {
            match (
                Mem::read(caller, uarg(p, 0), uarg(p, 1)),
                Mem::read(caller, uarg(p, 2), uarg(p, 3)),
            ) {
                (Some(k), Some(v)) => {
                    caller.data_mut().properties.insert(k, v);
                    Ok
                }
                _ => InvalidMemoryAccess,
            }
        }
        "proxy_get_shared_data" => {
            let Some(key) = Mem::read(caller, uarg(p, 0), uarg(p, 1)) else {
                return done(InvalidMemoryAccess);
            };
            let found = caller
                .data()
                .shared
                .inner
                .map
                .lock()
                .map_err(|_| anyhow!("poisoned"))?
                .get(&key)
                .cloned();
            match found {
                Some((value, cas)) => {
                    let st = Mem::give(caller, &value, uarg(p, 2), uarg(p, 3))?;
                    if st == Ok && !Mem::write_u32(caller, uarg(p, 4), cas) {
                        InvalidMemoryAccess
                    } else {
                        st
                    }
                }
                None => NotFound,
            }
        }
        "proxy_set_shared_data" => {
            let (Some(key), Some(value)) = (
                Mem::read(caller, uarg(p, 0), uarg(p, 1)),
                Mem::read(caller, uarg(p, 2), uarg(p, 3)),
            ) else {
                return done(InvalidMemoryAccess);
            };
            let cas = arg(p, 4) as u32;
            let shared = caller.data().shared.clone();
            let mut map = shared.inner.map.lock().map_err(|_| anyhow!("poisoned"))?;
            match map.get(&key) {
                Some((_, current)) if cas != 0 && *current != cas => CasMismatch,
                _ => {
                    map.insert(key, (value, shared.next_cas()));
                    Ok
                }
            }
        }
        "proxy_send_local_response" => {
            let body = Mem::read(caller, uarg(p, 3), uarg(p, 4));
            let headers = Mem::read(caller, uarg(p, 5), uarg(p, 6));
            match (body, headers) {
                (Some(body), Some(headers)) => {
                    let headers = deserialize_map(&headers).unwrap_or_default();
                    let headers = headers
                        .into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect();
                    caller.data_mut().local_reply = Some(LocalReply {
                        status: arg(p, 0) as u32,
                        headers,
                        body,
                    });
                    Ok
                }
                _ => InvalidMemoryAccess,
            }
        }
        "proxy_define_metric" => {
            let Some(name) = Mem::read(caller, uarg(p, 1), uarg(p, 2)) else {
                return done(InvalidMemoryAccess);
            };
            let kind = arg(p, 0) as i32;
            let s = caller.data_mut();
            let id = (s.metrics.len() as u32 + 1) * 4 + kind as u32; // the id encodes the type
            s.metrics
                .push((kind, String::from_utf8_lossy(&name).into_owned(), 0));
            written(Mem::write_u32(caller, uarg(p, 3), id))
        }
        "proxy_increment_metric" | "proxy_record_metric" | "proxy_get_metric" => {
            let id = arg(p, 0) as u32;
            let index = (id / 4).checked_sub(1).map(|i| i as usize);
            let s = caller.data_mut();
            let Some(metric) = index.and_then(|i| s.metrics.get_mut(i)) else {
                return done(NotFound);
            };
            match (name, metric.0) {
                ("proxy_increment_metric", 0) if arg(p, 1) <= 0 => BadArgument,
                ("proxy_increment_metric", 2) => BadArgument,
                ("proxy_increment_metric", _) => {
                    metric.2 += arg(p, 1);
                    Ok
                }
                ("proxy_record_metric", 1) => {
                    metric.2 = arg(p, 1);
                    Ok
                }
                ("proxy_record_metric", 2) => {
                    metric.2 += 1; // histograms: count of samples
                    Ok
                }
                ("proxy_record_metric", _) => {
                    metric.2 = arg(p, 1);
                    Ok
                }
                (_, 2) => BadArgument,
                _ => {
                    let v = metric.2 as u64;
                    written(Mem::write(caller, uarg(p, 1), &v.to_le_bytes()))
                }
            }
        }
        _ => Unimplemented,
    };
    done(status)
}

fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let n = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        let at = 4 + i * 8;
        let k = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        sizes.push((k, v));
    }
    let mut p = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (k, v) in sizes {
        let key = bytes.get(p..p + k)?;
        p += k + 1;
        let value = bytes.get(p..p + v)?;
        p += v + 1;
        out.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
    }
    Some(out)
}

fn wasi_call(caller: &mut Caller<'_, HostState>, name: &str, p: &[Val]) -> Result<i32> {
    const SUCCESS: i32 = 0;
    const FAULT: i32 = 21;
    const BADF: i32 = 8;
    Ok(match name {
        "environ_sizes_get" => {
            let env = caller.data().env.clone();
            let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            if Mem::write_u32(caller, uarg(p, 0), env.len() as u32)
                && Mem::write_u32(caller, uarg(p, 1), bytes as u32)
            {
                SUCCESS
            } else {
                FAULT
            }
        }
        "environ_get" => {
            let env = caller.data().env.clone();
            let (mut ptrs, mut buf) = (uarg(p, 0), uarg(p, 1));
            for (k, v) in env {
                let entry = format!("{k}={v}\0");
                if !Mem::write_u32(caller, ptrs, buf as u32)
                    || !Mem::write(caller, buf, entry.as_bytes())
                {
                    return Ok(FAULT);
                }
                ptrs += 4;
                buf += entry.len();
            }
            SUCCESS
        }
        "args_sizes_get" => {
            if Mem::write_u32(caller, uarg(p, 0), 0) && Mem::write_u32(caller, uarg(p, 1), 0) {
                SUCCESS
            } else {
                FAULT
            }
        }
        "args_get" | "sched_yield" | "fd_close" => SUCCESS,
        "fd_write" => {
            // Count the bytes written (stdout/stderr are discarded, as Envoy does).
            let (iovs, n) = (uarg(p, 1), uarg(p, 2));
            let mut total = 0u32;
            for i in 0..n {
                let Some(iov) = Mem::read(caller, iovs + i * 8, 8) else {
                    return Ok(FAULT);
                };
                let len: [u8; 4] = iov
                    .get(4..8)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 4]);
                total = total.saturating_add(u32::from_le_bytes(len));
            }
            if Mem::write_u32(caller, uarg(p, 3), total) {
                SUCCESS
            } else {
                FAULT
            }
        }
        "clock_time_get" => {
            let now = unix_nanos();
            if Mem::write(caller, uarg(p, 2), &now.to_le_bytes()) {
                SUCCESS
            } else {
                FAULT
            }
        }
        "random_get" => {
            let len = uarg(p, 1);
            let mut bytes = vec![0u8; len];
            let seed = unix_nanos().max(7);
            let mut x = seed | 1;
            for b in bytes.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if Mem::write(caller, uarg(p, 0), &bytes) {
                SUCCESS
            } else {
                FAULT
            }
        }
        "proc_exit" => bail!("the filter called proc_exit({})", arg(p, 0)),
        _ => BADF,
    })
}
