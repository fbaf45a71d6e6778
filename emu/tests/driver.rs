//! The emulated driver's documented rules: contexts per thread, allocation errors, the
//! virtual-memory rules, stream and event queries, copy synchronisation, device attributes and
//! error names.

mod common;

use std::ffi::c_void;

use common::{alloc, destroy, free, setup, stream};
use vramswap_cuda_emu as emu;
use vramswap_cuda_emu::result::*;
use vramswap_cuda_emu::types::{CUmemAccessDesc, CUmemAllocationProp, CUmemLocation};

const G: usize = 2 << 20;

fn prop() -> CUmemAllocationProp {
    // SAFETY: all-zero is a valid value of this plain C struct; the used fields are set.
    let mut p: CUmemAllocationProp = unsafe { std::mem::zeroed() };
    p.type_ = 1;
    p.location = CUmemLocation { type_: 1, id: 0 };
    p
}

fn access() -> CUmemAccessDesc {
    CUmemAccessDesc {
        location: CUmemLocation { type_: 1, id: 0 },
        flags: 3,
    }
}

#[test]
fn a_fresh_thread_has_no_current_context_until_cuctxsetcurrent() {
    setup();
    let mut ctx: *mut c_void = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    assert_cu!(unsafe { emu::cuCtxGetCurrent(&mut ctx) }, CUDA_SUCCESS);
    let ctx = ctx as usize;
    assert_ne!(ctx, 0);
    std::thread::spawn(move || {
        let (mut p, mut cur) = (0u64, std::ptr::without_provenance_mut::<c_void>(1));
        // SAFETY: valid out-pointers.
        unsafe {
            assert_cu!(emu::cuCtxGetCurrent(&mut cur), CUDA_SUCCESS);
            assert!(cur.is_null(), "a new thread starts with no current context");
            assert_cu!(emu::cuMemAlloc_v2(&mut p, 4096), CUDA_ERROR_INVALID_CONTEXT);
            assert_cu!(emu::cuCtxSynchronize(), CUDA_ERROR_INVALID_CONTEXT);
            assert_cu!(emu::cuCtxSetCurrent(ctx as *mut c_void), CUDA_SUCCESS);
            assert_cu!(emu::cuMemAlloc_v2(&mut p, 4096), CUDA_SUCCESS);
            assert_cu!(emu::cuMemFree_v2(p), CUDA_SUCCESS);
            assert_cu!(emu::cuCtxSetCurrent(std::ptr::null_mut()), CUDA_SUCCESS);
            assert_cu!(emu::cuMemAlloc_v2(&mut p, 4096), CUDA_ERROR_INVALID_CONTEXT);
            assert_cu!(
                emu::cuCtxSetCurrent(0x1234 as *mut c_void),
                CUDA_ERROR_INVALID_CONTEXT
            );
        }
    })
    .join()
    .unwrap();
}

#[test]
fn allocation_errors_are_the_documented_ones() {
    setup();
    let mut p = 0u64;
    // SAFETY: valid out-pointers; bad pointers are the point of the test.
    unsafe {
        assert_cu!(emu::cuMemAlloc_v2(&mut p, 0), CUDA_ERROR_INVALID_VALUE);
        assert_cu!(
            emu::cuMemAlloc_v2(&mut p, common::CAPACITY as usize + 1),
            CUDA_ERROR_OUT_OF_MEMORY
        );
        assert_cu!(
            emu::cuMemAlloc_v2(std::ptr::null_mut(), 16),
            CUDA_ERROR_INVALID_VALUE
        );
        let q = alloc(4096);
        assert_cu!(emu::cuMemFree_v2(q + 512), CUDA_ERROR_INVALID_VALUE);
        free(q);
        assert_cu!(emu::cuMemFree_v2(q), CUDA_ERROR_INVALID_VALUE);
        assert_cu!(emu::cuMemFree_v2(0xdead_0000), CUDA_ERROR_INVALID_VALUE);
    }
}

#[test]
fn vmm_rules_granularity_offset_access_and_order() {
    setup();
    let p = prop();
    // SAFETY: valid out-pointers and descriptors.
    unsafe {
        let mut g = 0usize;
        assert_cu!(
            emu::cuMemGetAllocationGranularity(&mut g, &p, 0),
            CUDA_SUCCESS
        );
        assert_eq!(g, G, "2 MiB, as on Hopper");
        let (mut va, mut h) = (0u64, 0u64);
        assert_cu!(
            emu::cuMemAddressReserve(&mut va, G + 4096, 0, 0, 0),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_cu!(
            emu::cuMemAddressReserve(&mut va, 2 * G, 0, 0, 0),
            CUDA_SUCCESS
        );
        assert_cu!(
            emu::cuMemCreate(&mut h, G + 4096, &p, 0),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_cu!(emu::cuMemCreate(&mut h, 2 * G, &p, 0), CUDA_SUCCESS);
        // The offset must be zero; the address granular.
        assert_cu!(emu::cuMemMap(va, 2 * G, G, h, 0), CUDA_ERROR_INVALID_VALUE);
        assert_cu!(
            emu::cuMemMap(va + 4096, G, 0, h, 0),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_cu!(emu::cuMemMap(va, 2 * G, 0, h, 0), CUDA_SUCCESS);
        // Mapped but not yet accessible: a copy into it fails.
        let data = vec![7u8; 4096];
        assert_cu!(
            emu::cuMemcpyHtoD_v2(va, data.as_ptr() as *const c_void, 4096),
            CUDA_ERROR_ILLEGAL_ADDRESS
        );
        let a = access();
        assert_cu!(
            emu::cuMemSetAccess(va, 2 * G, &a, 0),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_cu!(emu::cuMemSetAccess(va, 2 * G, &a, 1), CUDA_SUCCESS);
        assert_cu!(
            emu::cuMemcpyHtoD_v2(va, data.as_ptr() as *const c_void, 4096),
            CUDA_SUCCESS
        );
        let mut back = vec![0u8; 4096];
        assert_cu!(
            emu::cuMemcpyDtoH_v2(back.as_mut_ptr() as *mut c_void, va, 4096),
            CUDA_SUCCESS
        );
        assert_eq!(back, data);
        // The handle may be released while mapped; the memory lives until unmapped.
        assert_cu!(emu::cuMemRelease(h), CUDA_SUCCESS);
        assert_cu!(emu::cuMemRelease(h), CUDA_ERROR_INVALID_VALUE);
        // A reservation with mappings cannot be freed; a partial unmap is refused.
        assert_cu!(emu::cuMemAddressFree(va, 2 * G), CUDA_ERROR_NOT_PERMITTED);
        assert_cu!(emu::cuMemUnmap(va, G), CUDA_ERROR_INVALID_VALUE);
        assert_cu!(emu::cuMemUnmap(va, 2 * G), CUDA_SUCCESS);
        assert_cu!(
            emu::cuMemcpyHtoD_v2(va, data.as_ptr() as *const c_void, 4096),
            CUDA_ERROR_ILLEGAL_ADDRESS
        );
        assert_cu!(emu::cuMemAddressFree(va, 2 * G), CUDA_SUCCESS);
    }
}

#[test]
fn queries_are_not_ready_while_a_pinned_copy_is_pending() {
    setup();
    let s = stream();
    // 4 MiB at 10 MB/s: the copy stays pending for about 0.4 s.
    let n = 4 << 20;
    // SAFETY: valid out-pointers; the pinned buffer outlives the copy (synchronised below).
    unsafe {
        let mut host: *mut c_void = std::ptr::null_mut();
        assert_cu!(emu::cuMemHostAlloc(&mut host, n, 0), CUDA_SUCCESS);
        let d = alloc(n);
        let mut ev = std::ptr::null_mut();
        assert_cu!(emu::cuEventCreate(&mut ev, 0), CUDA_SUCCESS);
        assert_cu!(emu::cuMemcpyHtoDAsync_v2(d, host, n, s), CUDA_SUCCESS);
        assert_cu!(emu::cuEventRecord(ev, s), CUDA_SUCCESS);
        assert_cu!(emu::cuStreamQuery(s), CUDA_ERROR_NOT_READY);
        assert_cu!(emu::cuEventQuery(ev), CUDA_ERROR_NOT_READY);
        assert_cu!(emu::cuEventSynchronize(ev), CUDA_SUCCESS);
        assert_cu!(emu::cuEventQuery(ev), CUDA_SUCCESS);
        assert_cu!(emu::cuStreamQuery(s), CUDA_SUCCESS);
        assert_cu!(emu::cuEventDestroy_v2(ev), CUDA_SUCCESS);
        destroy(s);
        free(d);
        assert_cu!(emu::cuMemFreeHost(host), CUDA_SUCCESS);
    }
}

#[test]
fn a_pageable_copy_is_only_stream_ordered() {
    setup();
    let s = stream();
    // 1 MiB at the test device's 10 MB/s: 100 ms, far longer than the gap between the calls.
    let n = 1 << 20;
    let data: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
    let d = alloc(n);
    let mut back = vec![0u8; n];
    // SAFETY: `data` and `back` outlive the copies, which are waited for before `back` is read
    // or either is dropped.
    unsafe {
        assert_cu!(
            emu::cuMemcpyHtoDAsync_v2(d, data.as_ptr() as *const c_void, n, s),
            CUDA_SUCCESS
        );
        // "might be synchronous": the emulator does not make it so, the copy is still queued.
        assert_cu!(emu::cuStreamQuery(s), CUDA_ERROR_NOT_READY);
        assert_cu!(
            emu::cuMemcpyDtoHAsync_v2(back.as_mut_ptr() as *mut c_void, d, n, s),
            CUDA_SUCCESS
        );
        assert_cu!(emu::cuStreamQuery(s), CUDA_ERROR_NOT_READY);
        assert_cu!(emu::cuStreamSynchronize(s), CUDA_SUCCESS);
    }
    assert_eq!(back, data, "the stream orders the two copies");
    destroy(s);
    free(d);
}

#[test]
fn read_only_registered_memory_is_never_written_by_the_device() {
    setup();
    let n = 8192;
    let mut buf = vec![1u8; n];
    let d = alloc(n);
    // SAFETY: `buf` stays alive while registered.
    unsafe {
        let p = buf.as_mut_ptr() as *mut c_void;
        assert_cu!(emu::cuMemHostRegister_v2(p, n, 8), CUDA_SUCCESS);
        assert_cu!(
            emu::cuMemHostRegister_v2(p, n, 0),
            CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED
        );
        assert_cu!(emu::cuMemcpyHtoD_v2(d, p, n), CUDA_SUCCESS);
        assert_cu!(emu::cuMemcpyDtoH_v2(p, d, n), CUDA_ERROR_NOT_PERMITTED);
        assert_cu!(emu::cuMemHostUnregister(p), CUDA_SUCCESS);
        assert_cu!(
            emu::cuMemHostUnregister(p),
            CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED
        );
    }
    free(d);
}

#[test]
fn stream_handles_are_checked() {
    setup();
    // SAFETY: bad handles are the point; the emulator never dereferences them.
    unsafe {
        assert_cu!(
            emu::cuStreamSynchronize(0x2 as *mut c_void),
            CUDA_ERROR_NOT_SUPPORTED
        );
        assert_cu!(
            emu::cuStreamSynchronize(std::ptr::without_provenance_mut::<c_void>(1)),
            CUDA_SUCCESS
        );
        assert_cu!(
            emu::cuStreamSynchronize(0x7777 as *mut c_void),
            CUDA_ERROR_INVALID_HANDLE
        );
        let s = stream();
        destroy(s);
        assert_cu!(emu::cuStreamSynchronize(s), CUDA_ERROR_INVALID_HANDLE);
        let mut x = std::ptr::null_mut();
        assert_cu!(emu::cuStreamCreate(&mut x, 4), CUDA_ERROR_INVALID_VALUE);
    }
}

#[test]
fn the_device_is_a_hopper_like_emulated_gpu() {
    setup();
    let attr = |a: i32| {
        let mut v = -1;
        // SAFETY: valid out-pointer.
        assert_cu!(
            unsafe { emu::cuDeviceGetAttribute(&mut v, a, 0) },
            CUDA_SUCCESS
        );
        v
    };
    assert_eq!((attr(75), attr(76)), (9, 0), "compute capability 9.0");
    assert_eq!(attr(102), 1, "VMM supported");
    assert_eq!(attr(40), 2, "two async copy engines");
    assert_eq!(attr(115), 1, "memory pools supported");
    let mut name = [0i8; 64];
    let (mut v, mut total, mut dev, mut n) = (0, 0usize, -1, 0);
    // SAFETY: valid buffers and out-pointers.
    unsafe {
        assert_cu!(
            emu::cuDeviceGetAttribute(&mut v, 0, 0),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_cu!(
            emu::cuDeviceGetAttribute(&mut v, 13, 0),
            CUDA_ERROR_NOT_SUPPORTED
        );
        assert_cu!(
            emu::cuDeviceGetAttribute(&mut v, 75, 1),
            CUDA_ERROR_INVALID_DEVICE
        );
        assert_cu!(emu::cuDeviceGetName(name.as_mut_ptr(), 64, 0), CUDA_SUCCESS);
        let s = std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy();
        assert!(s.contains("emulated"), "{s}");
        assert_cu!(emu::cuDeviceTotalMem_v2(&mut total, 0), CUDA_SUCCESS);
        assert_eq!(total as u64, common::CAPACITY);
        assert_cu!(emu::cuDeviceGetCount(&mut n), CUDA_SUCCESS);
        assert_eq!(n, 1);
        assert_cu!(emu::cuDeviceGet(&mut dev, 1), CUDA_ERROR_INVALID_DEVICE);
    }
}

#[test]
fn every_result_the_emulator_returns_has_a_name_and_a_description() {
    for (code, want, _) in ERRORS {
        let (mut n, mut s) = (std::ptr::null(), std::ptr::null());
        // SAFETY: valid out-pointers; results are static strings.
        unsafe {
            assert_eq!(emu::cuGetErrorName(*code, &mut n), CUDA_SUCCESS);
            assert_eq!(emu::cuGetErrorString(*code, &mut s), CUDA_SUCCESS);
            assert_eq!(std::ffi::CStr::from_ptr(n).to_str().unwrap(), *want);
            assert!(!std::ffi::CStr::from_ptr(s).to_bytes().is_empty());
        }
    }
    let mut n = std::ptr::without_provenance::<std::ffi::c_char>(1);
    // SAFETY: valid out-pointer.
    assert_eq!(
        unsafe { emu::cuGetErrorName(12345, &mut n) },
        CUDA_ERROR_INVALID_VALUE
    );
    assert!(n.is_null());
    for name in [
        "CUDA_ERROR_INVALID_VALUE",
        "CUDA_ERROR_OUT_OF_MEMORY",
        "CUDA_ERROR_ILLEGAL_ADDRESS",
        "CUDA_ERROR_NOT_READY",
        "CUDA_ERROR_NOT_PERMITTED",
        "CUDA_ERROR_NOT_SUPPORTED",
        "CUDA_ERROR_INVALID_HANDLE",
        "CUDA_ERROR_ILLEGAL_STATE",
        "CUDA_ERROR_LAUNCH_FAILED",
        "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
        "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
    ] {
        let code = vramswap_sim::cuda_code_of(name);
        assert!(
            ERRORS.iter().any(|(c, n, _)| *c == code && *n == name),
            "{name}"
        );
    }
}

#[test]
fn the_report_lists_a_leaked_allocation() {
    setup();
    let p = alloc(1 << 20);
    let mut buf = vec![0 as std::ffi::c_char; 4096];
    // SAFETY: `buf` holds 4096 bytes.
    let n = unsafe { emu::vramswap_emu_report(buf.as_mut_ptr(), buf.len()) };
    assert!(n < buf.len());
    // SAFETY: NUL-terminated by the call.
    let r = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    assert!(r.contains("\"clean\":false"), "{r}");
    assert!(!r.contains("\"allocations\":0"), "{r}");
    // A sizing call with no buffer gives the full length, and a short buffer gets a
    // NUL-terminated prefix. (Exact lengths are not compared between calls: other tests share
    // the emulated device and change the report meanwhile.)
    // SAFETY: sizing call with no buffer.
    assert!(unsafe { emu::vramswap_emu_report(std::ptr::null_mut(), 0) } > 16);
    let mut short = [1 as std::ffi::c_char; 8];
    // SAFETY: `short` holds 8 bytes.
    let full = unsafe { emu::vramswap_emu_report(short.as_mut_ptr(), short.len()) };
    assert!(full > short.len());
    assert_eq!(short[7], 0, "the truncated copy is NUL-terminated");
    free(p);
}

#[test]
fn unordered_writes_on_two_streams_are_reported_and_an_event_orders_them() {
    setup();
    let n = 4096;
    let (s1, s2) = (stream(), stream());
    let d = alloc(n);
    let report = || {
        let mut buf = vec![0 as std::ffi::c_char; 1 << 16];
        // SAFETY: `buf` holds the given number of bytes; NUL-terminated by the call.
        unsafe {
            emu::vramswap_emu_report(buf.as_mut_ptr(), buf.len());
            std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned()
        }
    };
    let mentions = |r: &str| r.matches(&format!("{d:#x}")).count();
    // SAFETY: pinned buffers outlive the copies (synchronised before they are freed).
    unsafe {
        let (mut h1, mut h2) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_cu!(emu::cuMemHostAlloc(&mut h1, n, 0), CUDA_SUCCESS);
        assert_cu!(emu::cuMemHostAlloc(&mut h2, n, 0), CUDA_SUCCESS);
        // Ordered by an event: no violation on this range.
        let mut ev = std::ptr::null_mut();
        assert_cu!(emu::cuEventCreate(&mut ev, 2), CUDA_SUCCESS);
        assert_cu!(emu::cuMemcpyHtoDAsync_v2(d, h1, n, s1), CUDA_SUCCESS);
        assert_cu!(emu::cuEventRecord(ev, s1), CUDA_SUCCESS);
        assert_cu!(emu::cuStreamWaitEvent(s2, ev, 0), CUDA_SUCCESS);
        assert_cu!(emu::cuMemcpyHtoDAsync_v2(d, h2, n, s2), CUDA_SUCCESS);
        assert_eq!(mentions(&report()), 0, "{}", report());
        // Unordered: the second stream writes the same bytes with no event between.
        assert_cu!(emu::cuMemcpyHtoDAsync_v2(d, h1, n, s1), CUDA_SUCCESS);
        assert_cu!(emu::cuMemcpyHtoDAsync_v2(d, h2, n, s2), CUDA_SUCCESS);
        assert!(mentions(&report()) > 0, "{}", report());
        destroy(s1);
        destroy(s2);
        assert_cu!(emu::cuEventDestroy_v2(ev), CUDA_SUCCESS);
        assert_cu!(emu::cuMemFreeHost(h1), CUDA_SUCCESS);
        assert_cu!(emu::cuMemFreeHost(h2), CUDA_SUCCESS);
    }
    free(d);
}
