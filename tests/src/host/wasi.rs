//! WASI preview 1, as much of it as a `wasm32-wasip1` filter imports: environment variables
//! (Envoy's `vm_config.environment_variables`), clocks, randomness, and stdout/stderr (discarded).

use anyhow::{Result, bail};
use wasmtime::Caller;

use super::HostState;
use super::mem::{Mem, arg, uarg};
use super::unix_nanos;

/// Whether this host provides a WASI import.
pub(crate) fn is_known(name: &str) -> bool {
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

pub(crate) fn call(caller: &mut Caller<'_, HostState>, name: &str, p: &[i64]) -> Result<i32> {
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
            let now = caller.data().now_nanos();
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
