//! The `env.proxy_*` imports of ABI 0.2.1, with the statuses Envoy 1.40 returns (checked by the
//! trace fixture, `tests/tests/trace_fidelity.rs`).

use anyhow::Result;
use wasmtime::Caller;

use super::calls::{CallRequest, PendingCall};
use super::mem::{Mem, arg, uarg};
use super::{HostState, LocalReply, Metric, Status, first_header};

const IMPLEMENTED: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_add_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_continue_stream",
    "proxy_send_local_response",
    "proxy_set_effective_context",
    "proxy_http_call",
    "proxy_get_status",
    "proxy_done",
    "proxy_define_metric",
    "proxy_get_metric",
    "proxy_record_metric",
    "proxy_increment_metric",
];

/// Imports a filter may declare that this host answers with `UNIMPLEMENTED` (gRPC, foreign
/// functions, buffer and map replacement, closing a stream): the SDK imports them all.
const UNIMPLEMENTED: &[&str] = &[
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_call_foreign_function",
    "proxy_close_stream",
    "proxy_set_buffer_bytes",
    "proxy_set_header_map_pairs",
];

/// Whether this host provides an `env` import.
pub(crate) fn is_known(name: &str) -> bool {
    IMPLEMENTED.contains(&name) || UNIMPLEMENTED.contains(&name)
}

/// `Ok` when a guest-memory write succeeded, `INVALID_MEMORY_ACCESS` otherwise.
fn written(ok: bool) -> Status {
    if ok {
        Status::Ok
    } else {
        Status::InvalidMemoryAccess
    }
}

fn serialize_map(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let size: usize = pairs.iter().map(|(k, v)| 8 + k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + size);
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

fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let word = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?) as usize)
    };
    let n = word(0)?;
    if n > bytes.len() / 8 {
        return None;
    }
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        sizes.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut p = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (k, v) in sizes {
        let key = bytes.get(p..p.checked_add(k)?)?;
        p = p.checked_add(k + 1)?;
        let value = bytes.get(p..p.checked_add(v)?)?;
        p = p.checked_add(v + 1)?;
        out.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
    }
    Some(out)
}

/// A header map of the effective context: `None` when that context has no such map (yet).
fn header_map(s: &mut HostState, which: i64) -> Option<&mut Vec<(String, Vec<u8>)>> {
    let effective = s.effective;
    match which {
        6 => s.call_response.as_mut().and_then(|r| r.headers.as_mut()),
        _ => {
            let stream = s.stream.as_mut().filter(|st| st.id == effective)?;
            match which {
                0 => Some(&mut stream.request_headers),
                2 => stream.response_headers.as_mut(),
                _ => None,
            }
        }
    }
}

/// Envoy's read-only view: a property of the effective context, if it has one.
fn property(s: &HostState, path: &[u8]) -> Option<Vec<u8>> {
    match path {
        b"plugin_name" => return Some(s.plugin_name.clone()),
        b"plugin_root_id" => return Some(s.plugin_root_id.clone()),
        b"plugin_vm_id" => return Some(s.plugin_vm_id.clone()),
        _ => {}
    }
    let Some(stream) = s.stream.as_ref().filter(|st| st.id == s.effective) else {
        return s.root_properties.get(path).cloned();
    };
    if let Some(v) = stream.properties.get(path) {
        return Some(v.clone());
    }
    let header = |name: &str| first_header(&stream.request_headers, name).map(<[u8]>::to_vec);
    let port = || {
        stream
            .source_address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<i64>().ok())
    };
    match path {
        b"request\0path" => header(":path"),
        b"request\0url_path" => header(":path").map(|p| {
            let end = p.iter().position(|b| *b == b'?').unwrap_or(p.len());
            p.get(..end).map(<[u8]>::to_vec).unwrap_or_default()
        }),
        b"request\0method" => header(":method"),
        b"request\0host" => header(":authority"),
        b"request\0scheme" => Some(b"http".to_vec()),
        b"request\0protocol" => Some(b"HTTP/1.1".to_vec()),
        b"source\0address" => Some(stream.source_address.clone().into_bytes()),
        b"source\0port" => port().map(|p| p.to_le_bytes().to_vec()),
        b"xds\0route_name" | b"route_name" => stream.route_name.clone().map(String::into_bytes),
        b"response\0code" => stream
            .response_code
            .map(|c| i64::from(c).to_le_bytes().to_vec()),
        b"response\0code_details" => stream.response_code.map(|_| stream.code_details.clone()),
        _ => None,
    }
}

/// A status as the import's result (`Ok` below is `Status::Ok`).
fn done(status: Status) -> Result<i32> {
    std::result::Result::Ok(status as i32)
}

pub(crate) fn call(caller: &mut Caller<'_, HostState>, name: &str, p: &[i64]) -> Result<i32> {
    use Status::*;
    let status = match name {
        "proxy_log" => match Mem::read(caller, uarg(p, 1), uarg(p, 2)) {
            Some(m) => {
                let level = arg(p, 0) as i32;
                caller
                    .data_mut()
                    .logs
                    .push((level, String::from_utf8_lossy(&m).into_owned()));
                Ok
            }
            None => InvalidMemoryAccess,
        },
        "proxy_get_log_level" => written(Mem::write_u32(caller, uarg(p, 0), 2)),
        "proxy_get_current_time_nanoseconds" => {
            let now = caller.data().now_nanos();
            written(Mem::write(caller, uarg(p, 0), &now.to_le_bytes()))
        }
        "proxy_set_tick_period_milliseconds" => {
            // Whatever context calls it, the period is its root context's.
            let ms = u64::from(arg(p, 0) as u32);
            caller.data_mut().tick = (ms > 0).then(|| {
                let period = std::time::Duration::from_millis(ms);
                (period, std::time::Instant::now() + period)
            });
            Ok
        }
        "proxy_done" => Ok,
        "proxy_set_effective_context" => {
            let id = arg(p, 0) as i32;
            let s = caller.data_mut();
            let known = id == s.root_id || s.stream.as_ref().is_some_and(|st| st.id == id);
            if known {
                s.effective = id;
                Ok
            } else {
                BadArgument
            }
        }
        "proxy_continue_stream" => {
            let s = caller.data_mut();
            let effective = s.effective;
            match (s.stream.as_mut().filter(|st| st.id == effective), arg(p, 0)) {
                (Some(stream), 0) => {
                    // Deferred: the stream resumes after this callback returns, but its
                    // headers are on their way and can no longer be edited.
                    stream.continued[0] = true;
                    stream.request_headers_editable = false;
                    Ok
                }
                (Some(stream), 1) => {
                    stream.continued[1] = true;
                    Ok
                }
                _ => BadArgument,
            }
        }
        "proxy_get_buffer_bytes" => {
            let s = caller.data();
            let effective_stream = s.stream.as_ref().filter(|st| st.id == s.effective);
            let data = match arg(p, 0) {
                0 => effective_stream.map(|st| st.request_body.clone()),
                1 => effective_stream.map(|st| st.response_body.clone()),
                4 => s
                    .call_response
                    .as_ref()
                    .filter(|r| r.headers.is_some())
                    .map(|r| r.body.clone()),
                6 => Some(s.vm_config.clone()),
                7 => Some(s.plugin_config.clone()),
                _ => None,
            };
            let Some(data) = data else {
                return done(NotFound);
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
            let bytes = header_map(caller.data_mut(), arg(p, 0)).map(|m| serialize_map(m));
            match bytes {
                Some(bytes) => Mem::give(caller, &bytes, uarg(p, 1), uarg(p, 2))?,
                None => BadArgument,
            }
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
            let editing = name != "proxy_get_header_map_value";
            let locked = which == 0
                && editing
                && s.stream
                    .as_ref()
                    .is_some_and(|st| !st.request_headers_editable);
            if locked || (editing && which == 6) {
                return done(BadArgument);
            }
            let Some(map) = header_map(s, which) else {
                return done(BadArgument);
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
            match property(caller.data(), &path) {
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
                    let s = caller.data_mut();
                    let effective = s.effective;
                    match s.stream.as_mut().filter(|st| st.id == effective) {
                        Some(stream) => stream.properties.insert(k, v),
                        None => s.root_properties.insert(k, v),
                    };
                    Ok
                }
                _ => InvalidMemoryAccess,
            }
        }
        "proxy_get_shared_data" => {
            let Some(key) = Mem::read(caller, uarg(p, 0), uarg(p, 1)) else {
                return done(InvalidMemoryAccess);
            };
            match caller.data().shared.get(&key) {
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
            caller.data().shared.set(key, value, arg(p, 4) as u32)
        }
        "proxy_register_shared_queue" => {
            let Some(queue) = Mem::read(caller, uarg(p, 0), uarg(p, 1)) else {
                return done(InvalidMemoryAccess);
            };
            let s = caller.data();
            let token = s
                .shared
                .register_queue(&s.plugin_vm_id, &queue, s.vm_key, s.root_id);
            written(Mem::write_u32(caller, uarg(p, 2), token))
        }
        "proxy_resolve_shared_queue" => {
            let (Some(vm_id), Some(queue)) = (
                Mem::read(caller, uarg(p, 0), uarg(p, 1)),
                Mem::read(caller, uarg(p, 2), uarg(p, 3)),
            ) else {
                return done(InvalidMemoryAccess);
            };
            match caller.data().shared.resolve_queue(&vm_id, &queue) {
                Some(token) => written(Mem::write_u32(caller, uarg(p, 4), token)),
                None => NotFound,
            }
        }
        "proxy_enqueue_shared_queue" => {
            let Some(item) = Mem::read(caller, uarg(p, 1), uarg(p, 2)) else {
                return done(InvalidMemoryAccess);
            };
            caller.data().shared.enqueue(arg(p, 0) as u32, item)
        }
        "proxy_dequeue_shared_queue" => match caller.data().shared.dequeue(arg(p, 0) as u32) {
            std::result::Result::Ok(item) => Mem::give(caller, &item, uarg(p, 1), uarg(p, 2))?,
            Err(status) => status,
        },
        "proxy_send_local_response" => {
            let details = Mem::read(caller, uarg(p, 1), uarg(p, 2));
            let body = Mem::read(caller, uarg(p, 3), uarg(p, 4));
            let headers = Mem::read(caller, uarg(p, 5), uarg(p, 6));
            let (Some(details), Some(body), Some(headers)) = (details, body, headers) else {
                return done(InvalidMemoryAccess);
            };
            let headers = deserialize_map(&headers)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            let s = caller.data_mut();
            let effective = s.effective;
            match s.stream.as_mut().filter(|st| st.id == effective) {
                Some(stream) => {
                    // Queued: it takes effect when the callback returns, whatever it returns.
                    stream.local_reply = Some(LocalReply {
                        status: arg(p, 0) as u32,
                        details,
                        headers,
                        body,
                    });
                    Ok
                }
                None => BadArgument,
            }
        }
        "proxy_http_call" => http_call(caller, p)?,
        "proxy_get_status" => {
            let (code, message) = caller.data().last_status.clone();
            let st = Mem::give(caller, &message, uarg(p, 1), uarg(p, 2))?;
            if st == Ok && !Mem::write_u32(caller, uarg(p, 0), code as u32) {
                InvalidMemoryAccess
            } else {
                st
            }
        }
        "proxy_define_metric" => {
            let Some(metric) = Mem::read(caller, uarg(p, 1), uarg(p, 2)) else {
                return done(InvalidMemoryAccess);
            };
            let kind = arg(p, 0) as i32;
            if !(0..=2).contains(&kind) {
                return done(BadArgument);
            }
            let metric = String::from_utf8_lossy(&metric).into_owned();
            let s = caller.data_mut();
            let index = match s
                .metrics
                .iter()
                .position(|m| m.kind == kind && m.name == metric)
            {
                Some(i) => i,
                None => {
                    s.metrics.push(Metric {
                        kind,
                        name: metric,
                        value: 0,
                    });
                    s.metrics.len() - 1
                }
            };
            // Envoy hands out a fresh id each time; the id's low bits encode the type.
            s.metric_ids.push(index);
            let id = (s.metric_ids.len() as u32) * 4 + kind as u32;
            written(Mem::write_u32(caller, uarg(p, 3), id))
        }
        "proxy_increment_metric" | "proxy_record_metric" | "proxy_get_metric" => {
            let id = arg(p, 0) as u32;
            let s = caller.data_mut();
            let index = (id / 4)
                .checked_sub(1)
                .and_then(|i| s.metric_ids.get(i as usize).copied());
            let Some(metric) = index.and_then(|i| s.metrics.get_mut(i)) else {
                return done(NotFound);
            };
            match (name, metric.kind) {
                ("proxy_increment_metric", 0) if arg(p, 1) <= 0 => BadArgument,
                ("proxy_increment_metric", 2) => BadArgument,
                ("proxy_increment_metric", _) => {
                    metric.value += arg(p, 1);
                    Ok
                }
                // Recording on a counter adds, as Envoy does.
                ("proxy_record_metric", 0) => {
                    metric.value += arg(p, 1);
                    Ok
                }
                ("proxy_record_metric", 1) => {
                    metric.value = arg(p, 1);
                    Ok
                }
                ("proxy_record_metric", _) => {
                    metric.value += 1; // histograms: the count of samples
                    Ok
                }
                (_, 2) => BadArgument,
                _ => {
                    let v = metric.value as u64;
                    written(Mem::write(caller, uarg(p, 1), &v.to_le_bytes()))
                }
            }
        }
        _ => Unimplemented,
    };
    done(status)
}

/// `proxy_http_call`: a known cluster and `:method`, `:path`, `:authority` are required — present,
/// as Envoy checks them, not necessarily non-empty (a control-plane client that sends an empty
/// `:authority` syncs in Envoy; the trace fixture pins each empty value); the call runs in the
/// background and its answer arrives later, on the root context.
fn http_call(caller: &mut Caller<'_, HostState>, p: &[i64]) -> Result<Status> {
    let cluster = Mem::read(caller, uarg(p, 0), uarg(p, 1));
    let headers = Mem::read(caller, uarg(p, 2), uarg(p, 3));
    let body = Mem::read(caller, uarg(p, 4), uarg(p, 5));
    let (Some(cluster), Some(headers), Some(body)) = (cluster, headers, body) else {
        return Ok(Status::InvalidMemoryAccess);
    };
    let Some(headers) = deserialize_map(&headers) else {
        return Ok(Status::BadArgument);
    };
    let cluster = String::from_utf8_lossy(&cluster).into_owned();
    let s = caller.data_mut();
    let Some(target) = s.clusters.get(&cluster).cloned() else {
        return Ok(Status::BadArgument);
    };
    let required = [":method", ":path", ":authority"];
    if !required.iter().all(|r| headers.iter().any(|(k, _)| k == r)) {
        return Ok(Status::BadArgument);
    }
    s.last_token = s.last_token.wrapping_add(1).max(1);
    let token = s.last_token;
    let timeout_ms = arg(p, 8) as u32;
    s.calls.push(PendingCall::start(
        token,
        &target,
        CallRequest { headers, body },
        timeout_ms,
    ));
    if Mem::write_u32(caller, uarg(p, 9), token) {
        Ok(Status::Ok)
    } else {
        Ok(Status::InvalidMemoryAccess)
    }
}
