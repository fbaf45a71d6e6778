//! Device memory, the virtual-memory-management calls, and page-locked host memory.
//!
//! Reference: NVIDIA CUDA Driver API, "Memory Management", "Stream Ordered Memory Allocator"
//! and "Virtual Memory Management" (<https://docs.nvidia.com/cuda/cuda-driver-api/>).

use std::ffi::{c_uint, c_ulonglong, c_void};

use crate::api::context::ctx;
use crate::result::{code, fail, guard, sim_fail, CUresult, Res, CUDA_ERROR_INVALID_VALUE};
use crate::result::{CUDA_ERROR_INVALID_DEVICE, CUDA_ERROR_NOT_SUPPORTED};
use crate::state::{non_null, stream_id};
use crate::types::{CUmemAccessDesc, CUmemAllocationProp};

/// `CU_MEM_ALLOCATION_TYPE_PINNED`.
const ALLOCATION_TYPE_PINNED: u32 = 1;
/// `CU_MEM_LOCATION_TYPE_DEVICE`.
const LOCATION_TYPE_DEVICE: u32 = 1;
/// `CU_MEM_ACCESS_FLAGS_PROT_READWRITE`.
const PROT_READWRITE: u32 = 3;

macro_rules! export {
    ($call:literal, $body:block) => {
        guard($call, || code((|| -> Res<()> { $body })()))
    };
}

/// `cuMemGetInfo_v2`: free and total bytes of the device.
///
/// # Safety
/// `free` and `total` must be NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    export!("cuMemGetInfo_v2", {
        let d = ctx("cuMemGetInfo_v2")?;
        non_null("cuMemGetInfo_v2", free, "free")?;
        non_null("cuMemGetInfo_v2", total, "total")?;
        let (f, t) = d.dev.mem_info();
        // SAFETY: both checked non-null.
        unsafe {
            *free = f as usize;
            *total = t as usize;
        }
        Ok(())
    })
}

/// `cuMemAlloc_v2`: "If bytesize is 0, cuMemAlloc() returns CUDA_ERROR_INVALID_VALUE"; past the
/// capacity, `CUDA_ERROR_OUT_OF_MEMORY`.
///
/// # Safety
/// `dptr` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut u64, bytes: usize) -> CUresult {
    export!("cuMemAlloc_v2", {
        let d = ctx("cuMemAlloc_v2")?;
        non_null("cuMemAlloc_v2", dptr, "dptr")?;
        let p = d
            .dev
            .alloc(bytes as u64)
            .map_err(|e| sim_fail("cuMemAlloc_v2", e))?;
        // SAFETY: checked non-null.
        unsafe { *dptr = p };
        Ok(())
    })
}

/// `cuMemFree_v2`: frees memory from `cuMemAlloc`/`cuMemAllocAsync`; any other address gives
/// `CUDA_ERROR_INVALID_VALUE`.
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: u64) -> CUresult {
    export!("cuMemFree_v2", {
        let d = ctx("cuMemFree_v2")?;
        d.dev.free(dptr).map_err(|e| sim_fail("cuMemFree_v2", e))
    })
}

/// `cuMemAllocAsync`: stream-ordered allocation (memory pools are supported).
///
/// # Safety
/// `dptr` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut u64,
    bytes: usize,
    stream: *mut c_void,
) -> CUresult {
    export!("cuMemAllocAsync", {
        let d = ctx("cuMemAllocAsync")?;
        non_null("cuMemAllocAsync", dptr, "dptr")?;
        let s = stream_id("cuMemAllocAsync", stream)?;
        let p = d
            .dev
            .alloc_async(bytes as u64, s)
            .map_err(|e| sim_fail("cuMemAllocAsync", e))?;
        // SAFETY: checked non-null.
        unsafe { *dptr = p };
        Ok(())
    })
}

/// `cuMemFreeAsync`: frees once the work queued on the stream before it has completed.
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: u64, stream: *mut c_void) -> CUresult {
    export!("cuMemFreeAsync", {
        let d = ctx("cuMemFreeAsync")?;
        let s = stream_id("cuMemFreeAsync", stream)?;
        d.dev
            .free_async(dptr, s)
            .map_err(|e| sim_fail("cuMemFreeAsync", e))
    })
}

/// Checks an allocation description: pinned device memory on device 0 is all the emulator (and
/// vramswap) uses.
///
/// # Safety
/// `prop` must be NULL or point to a `CUmemAllocationProp`.
unsafe fn check_prop(call: &str, prop: *const CUmemAllocationProp) -> Res<()> {
    non_null(call, prop, "prop")?;
    // SAFETY: checked non-null; the caller passes a valid description.
    let p = unsafe { &*prop };
    if p.type_ != ALLOCATION_TYPE_PINNED || p.location.type_ != LOCATION_TYPE_DEVICE {
        return Err(fail(
            call,
            CUDA_ERROR_INVALID_VALUE,
            "prop must describe CU_MEM_ALLOCATION_TYPE_PINNED memory on CU_MEM_LOCATION_TYPE_DEVICE",
        ));
    }
    if p.location.id != 0 {
        return Err(fail(
            call,
            CUDA_ERROR_INVALID_DEVICE,
            &format!(
                "location id {}: the emulator has one device, 0",
                p.location.id
            ),
        ));
    }
    Ok(())
}

/// `cuMemGetAllocationGranularity`: the configured granularity (2 MiB, as on Hopper), for both
/// the minimum and the recommended granularity.
///
/// # Safety
/// `granularity` must be NULL or valid for a write; `prop` NULL or a valid description.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetAllocationGranularity(
    granularity: *mut usize,
    prop: *const CUmemAllocationProp,
    flags: c_uint,
) -> CUresult {
    export!("cuMemGetAllocationGranularity", {
        let d = ctx("cuMemGetAllocationGranularity")?;
        non_null("cuMemGetAllocationGranularity", granularity, "granularity")?;
        // SAFETY: forwarded contract.
        unsafe { check_prop("cuMemGetAllocationGranularity", prop)? };
        if flags > 1 {
            return Err(fail(
                "cuMemGetAllocationGranularity",
                CUDA_ERROR_INVALID_VALUE,
                "option must be MINIMUM (0) or RECOMMENDED (1)",
            ));
        }
        // SAFETY: checked non-null.
        unsafe { *granularity = d.dev.granularity() as usize };
        Ok(())
    })
}

/// `cuMemAddressReserve`: "size - Size of the reserved virtual address range requested";
/// size must be a multiple of the granularity, `alignment` 0 means the granularity, `addr` is
/// only a hint (ignored), and `flags` is "Currently unused, must be zero".
///
/// # Safety
/// `ptr` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemAddressReserve(
    ptr: *mut u64,
    size: usize,
    alignment: usize,
    _addr: u64,
    flags: c_ulonglong,
) -> CUresult {
    export!("cuMemAddressReserve", {
        let d = ctx("cuMemAddressReserve")?;
        non_null("cuMemAddressReserve", ptr, "ptr")?;
        if flags != 0 {
            return Err(fail(
                "cuMemAddressReserve",
                CUDA_ERROR_INVALID_VALUE,
                "flags must be 0",
            ));
        }
        let va = d
            .dev
            .reserve(size as u64, alignment as u64)
            .map_err(|e| sim_fail("cuMemAddressReserve", e))?;
        // SAFETY: checked non-null.
        unsafe { *ptr = va };
        Ok(())
    })
}

/// `cuMemAddressFree`: frees a whole reservation; one that still has mappings is refused
/// (`CUDA_ERROR_NOT_PERMITTED`: unmap first).
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuMemAddressFree(ptr: u64, size: usize) -> CUresult {
    export!("cuMemAddressFree", {
        let d = ctx("cuMemAddressFree")?;
        d.dev
            .address_free(ptr, size as u64)
            .map_err(|e| sim_fail("cuMemAddressFree", e))
    })
}

/// `cuMemCreate`: physical memory of `size` bytes, "size of this allocation must be a multiple
/// of the value given via cuMemGetAllocationGranularity"; `flags` "for future use, must be
/// zero now".
///
/// # Safety
/// `handle` must be NULL or valid for a write; `prop` NULL or a valid description.
#[no_mangle]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut c_ulonglong,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: c_ulonglong,
) -> CUresult {
    export!("cuMemCreate", {
        let d = ctx("cuMemCreate")?;
        non_null("cuMemCreate", handle, "handle")?;
        // SAFETY: forwarded contract.
        unsafe { check_prop("cuMemCreate", prop)? };
        if flags != 0 {
            return Err(fail(
                "cuMemCreate",
                CUDA_ERROR_INVALID_VALUE,
                "flags must be 0",
            ));
        }
        let h = d
            .dev
            .create(size as u64)
            .map_err(|e| sim_fail("cuMemCreate", e))?;
        // SAFETY: checked non-null.
        unsafe { *handle = h };
        Ok(())
    })
}

/// `cuMemRelease`: releases the handle; "The memory allocation will be freed when all outstanding
/// mappings to the memory are unmapped and when all outstanding references to the handle
/// (including its shareable counterparts) are also released."
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuMemRelease(handle: c_ulonglong) -> CUresult {
    export!("cuMemRelease", {
        let d = ctx("cuMemRelease")?;
        d.dev
            .release(handle)
            .map_err(|e| sim_fail("cuMemRelease", e))
    })
}

/// `cuMemMap`: maps physical memory into a reservation. "offset - Offset into the memory
/// represented by handle ... (currently must be zero)"; ptr and size must be multiples of the
/// granularity; "flags - flags for future use, must be zero now". "Please note calling
/// cuMemMap does not make the address accessible, the caller needs to update accessibility of
/// a contiguous mapped VA range by calling cuMemSetAccess."
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuMemMap(
    ptr: u64,
    size: usize,
    offset: usize,
    handle: c_ulonglong,
    flags: c_ulonglong,
) -> CUresult {
    export!("cuMemMap", {
        let d = ctx("cuMemMap")?;
        if flags != 0 {
            return Err(fail(
                "cuMemMap",
                CUDA_ERROR_INVALID_VALUE,
                "flags must be 0",
            ));
        }
        d.dev
            .map(ptr, size as u64, handle, offset as u64)
            .map_err(|e| sim_fail("cuMemMap", e))
    })
}

/// `cuMemUnmap`: "The range must be the entire contiguous address range that was mapped to."
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuMemUnmap(ptr: u64, size: usize) -> CUresult {
    export!("cuMemUnmap", {
        let d = ctx("cuMemUnmap")?;
        d.dev
            .unmap(ptr, size as u64)
            .map_err(|e| sim_fail("cuMemUnmap", e))
    })
}

/// `cuMemSetAccess`: grants device 0 read-write access to a mapped range (the only access the
/// emulator models; other protections give `CUDA_ERROR_NOT_SUPPORTED`). Every byte of the
/// range must be mapped.
///
/// # Safety
/// `desc` must be NULL or point to `count` descriptors.
#[no_mangle]
pub unsafe extern "C" fn cuMemSetAccess(
    ptr: u64,
    size: usize,
    desc: *const CUmemAccessDesc,
    count: usize,
) -> CUresult {
    export!("cuMemSetAccess", {
        let d = ctx("cuMemSetAccess")?;
        non_null("cuMemSetAccess", desc, "desc")?;
        if count == 0 {
            return Err(fail(
                "cuMemSetAccess",
                CUDA_ERROR_INVALID_VALUE,
                "count is 0",
            ));
        }
        // SAFETY: the caller passes `count` descriptors at `desc` (checked non-null).
        let descs = unsafe { std::slice::from_raw_parts(desc, count) };
        for a in descs {
            if a.location.type_ != LOCATION_TYPE_DEVICE || a.location.id != 0 {
                return Err(fail(
                    "cuMemSetAccess",
                    CUDA_ERROR_INVALID_DEVICE,
                    "access descriptors must name device 0",
                ));
            }
            if a.flags != PROT_READWRITE {
                return Err(fail(
                    "cuMemSetAccess",
                    CUDA_ERROR_NOT_SUPPORTED,
                    &format!("access flags {}: only PROT_READWRITE is emulated", a.flags),
                ));
            }
        }
        d.dev
            .set_access(ptr, size as u64)
            .map_err(|e| sim_fail("cuMemSetAccess", e))
    })
}

/// `CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_WRITECOMBINED`.
const HOSTALLOC_FLAGS: c_uint = 1 | 2 | 4;

/// `cuMemHostAlloc`: page-locked host memory; copies from and to it are asynchronous.
///
/// # Safety
/// `pp` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    bytes: usize,
    flags: c_uint,
) -> CUresult {
    export!("cuMemHostAlloc", {
        let d = ctx("cuMemHostAlloc")?;
        non_null("cuMemHostAlloc", pp, "pp")?;
        if flags & !HOSTALLOC_FLAGS != 0 {
            return Err(fail(
                "cuMemHostAlloc",
                CUDA_ERROR_INVALID_VALUE,
                "unknown flags",
            ));
        }
        let p = d
            .dev
            .host_alloc(bytes as u64)
            .map_err(|e| sim_fail("cuMemHostAlloc", e))?;
        // SAFETY: checked non-null.
        unsafe { *pp = p as *mut c_void };
        Ok(())
    })
}

/// `cuMemFreeHost`: frees memory from `cuMemHostAlloc`.
///
/// # Safety
/// No copy may still use the memory.
#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    export!("cuMemFreeHost", {
        let d = ctx("cuMemFreeHost")?;
        d.dev
            .host_free(p as *mut u8)
            .map_err(|e| sim_fail("cuMemFreeHost", e))
    })
}

/// `CU_MEMHOSTREGISTER_PORTABLE | DEVICEMAP | READ_ONLY`.
const REGISTER_FLAGS: c_uint = 1 | 2 | 8;
/// `CU_MEMHOSTREGISTER_IOMEMORY`.
const REGISTER_IOMEMORY: c_uint = 4;
/// `CU_MEMHOSTREGISTER_READ_ONLY`.
const REGISTER_READ_ONLY: c_uint = 8;

/// `cuMemHostRegister_v2`: page-locks an existing range. With `CU_MEMHOSTREGISTER_READ_ONLY`
/// "The pointer is treated as pointing to memory that is considered read-only by the device":
/// a device-to-host copy into it fails; "Using this flag with a current context associated
/// with a device that does not have this attribute set
/// [CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED] will cause cuMemHostRegister to
/// error with CUDA_ERROR_NOT_SUPPORTED" (`VRAMSWAP_EMU_CONF` `read_only_host_register:0`). A
/// range overlapping one already registered gives `CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED`.
///
/// # Safety
/// The range must stay valid while registered.
#[no_mangle]
pub unsafe extern "C" fn cuMemHostRegister_v2(
    p: *mut c_void,
    bytes: usize,
    flags: c_uint,
) -> CUresult {
    export!("cuMemHostRegister_v2", {
        let d = ctx("cuMemHostRegister_v2")?;
        if flags & REGISTER_IOMEMORY != 0 {
            return Err(fail(
                "cuMemHostRegister_v2",
                CUDA_ERROR_NOT_SUPPORTED,
                "CU_MEMHOSTREGISTER_IOMEMORY is not emulated",
            ));
        }
        if flags & !REGISTER_FLAGS != 0 {
            return Err(fail(
                "cuMemHostRegister_v2",
                CUDA_ERROR_INVALID_VALUE,
                "unknown flags",
            ));
        }
        if flags & REGISTER_READ_ONLY != 0 && !d.opts.read_only_host_register {
            return Err(fail(
                "cuMemHostRegister_v2",
                CUDA_ERROR_NOT_SUPPORTED,
                "CU_MEMHOSTREGISTER_READ_ONLY on a device without \
                 CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED",
            ));
        }
        d.dev
            .host_register(
                p as *const u8,
                bytes as u64,
                flags & REGISTER_READ_ONLY != 0,
            )
            .map_err(|e| sim_fail("cuMemHostRegister_v2", e))
    })
}

/// `cuMemHostUnregister`: unregisters a range registered by `cuMemHostRegister`; anything else
/// gives `CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED`.
///
/// # Safety
/// No copy may still use the range.
#[no_mangle]
pub unsafe extern "C" fn cuMemHostUnregister(p: *mut c_void) -> CUresult {
    export!("cuMemHostUnregister", {
        let d = ctx("cuMemHostUnregister")?;
        d.dev
            .host_unregister(p as *const u8)
            .map_err(|e| sim_fail("cuMemHostUnregister", e))
    })
}
