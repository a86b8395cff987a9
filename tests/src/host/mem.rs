//! Bounds-checked access to guest memory and allocation through the guest's own allocator.

use anyhow::{Context as _, Result, bail};
use wasmtime::Caller;

use super::{HostState, Status};

/// Argument `i` of an import call (i32 arguments arrive sign-extended).
pub(crate) fn arg(params: &[i64], i: usize) -> i64 {
    params.get(i).copied().unwrap_or(0)
}

/// Argument `i` as a guest address or size (the low 32 bits, unsigned).
pub(crate) fn uarg(params: &[i64], i: usize) -> usize {
    usize::try_from(arg(params, i) as u32).unwrap_or(0)
}

/// Bounds-checked guest memory access.
pub(crate) struct Mem;

impl Mem {
    pub(crate) fn read(
        caller: &mut Caller<'_, HostState>,
        ptr: usize,
        len: usize,
    ) -> Option<Vec<u8>> {
        let memory = caller.data().memory?;
        memory
            .data(&*caller)
            .get(ptr..ptr.checked_add(len)?)
            .map(<[u8]>::to_vec)
    }

    pub(crate) fn write(caller: &mut Caller<'_, HostState>, ptr: usize, bytes: &[u8]) -> bool {
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

    pub(crate) fn write_u32(caller: &mut Caller<'_, HostState>, ptr: usize, v: u32) -> bool {
        Self::write(caller, ptr, &v.to_le_bytes())
    }

    /// Copies `bytes` into a fresh guest allocation and writes its pointer and size to
    /// `ptr_ptr` / `size_ptr`. Empty data is a null pointer and size 0.
    pub(crate) fn give(
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

    pub(crate) fn allocate(caller: &mut Caller<'_, HostState>, size: usize) -> Result<usize> {
        let f = caller
            .data()
            .allocator
            .clone()
            .context("the filter exports no allocator")?;
        let ptr = f.call(&mut *caller, i32::try_from(size)?)? as u32 as usize;
        if ptr == 0 {
            bail!("guest allocation of {size} bytes failed");
        }
        Ok(ptr)
    }
}
