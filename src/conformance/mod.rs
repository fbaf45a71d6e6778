//! The backend conformance suite, written once and run on every backend: as tests on `sim`
//! and on `cuda` over the emulated driver in CI, and as `vramswap selftest` on a real GPU.
//!
//! Each check pins down one piece of the semantics every layer above the backend relies on.

use std::time::Instant;

use rand::{RngCore, SeedableRng};
use serde::Serialize;

use crate::backend::{self, Backend, CastType, DevicePtr, Stream};
use crate::error::{Error, Result};

mod threads;
use threads::backend_is_usable_from_any_thread;

/// One conformance check.
#[derive(Clone, Copy)]
pub struct Check {
    /// Name, read as a specification (`stream_wait_event_orders_streams`).
    pub name: &'static str,
    /// The check; `Err` says what was wrong.
    pub run: fn(&dyn Backend) -> Result<(), String>,
}

/// Outcome of one check.
#[derive(Clone, Debug, Serialize)]
pub struct CheckOutcome {
    /// The check's name.
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// What went wrong, when it failed.
    pub message: Option<String>,
    /// Milliseconds it took.
    pub ms: f64,
}

/// Every check, in a stable order.
pub fn checks() -> Vec<Check> {
    macro_rules! c {
        ($($f:ident),* $(,)?) => { vec![$(Check { name: stringify!($f), run: $f }),*] };
    }
    c![
        device_reports_sane_properties,
        pinned_copy_round_trips_random_bytes,
        pageable_copy_round_trips_once_the_stream_is_synchronized,
        device_to_device_copy_moves_bytes,
        memset_sets_every_byte,
        work_on_one_stream_runs_in_order,
        stream_wait_event_orders_streams,
        event_query_is_true_after_synchronize,
        event_elapsed_time_is_non_negative,
        allocation_past_capacity_is_out_of_memory,
        zero_byte_allocation_is_rejected,
        free_of_unknown_pointer_is_rejected,
        freed_memory_is_returned_to_the_device,
        vmm_mapping_gives_stable_addresses_across_remaps,
        vmm_copy_into_unmapped_range_fails,
        vmm_misaligned_mapping_is_rejected,
        vmm_partial_unmap_is_rejected,
        stream_ordered_allocation_round_trips,
        registered_host_memory_copies_asynchronously,
        backend_is_usable_from_any_thread,
        checksum_kernel_matches_host,
        fill_kernel_matches_host,
        cast_kernels_match_half,
    ]
}

/// Runs every check on `backend`.
pub fn run_all(backend: &dyn Backend) -> Vec<CheckOutcome> {
    checks().into_iter().map(|c| run_one(backend, &c)).collect()
}

/// Runs one check, catching a panic as a failure.
pub fn run_one(backend: &dyn Backend, check: &Check) -> CheckOutcome {
    let t = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (check.run)(backend)));
    let (passed, message) = match r {
        Ok(Ok(())) => (true, None),
        Ok(Err(m)) => (false, Some(m)),
        Err(p) => (
            false,
            Some(
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()),
            ),
        ),
    };
    CheckOutcome {
        name: check.name,
        passed,
        message,
        ms: t.elapsed().as_secs_f64() * 1e3,
    }
}

fn e(err: Error) -> String {
    err.to_string()
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Pinned host buffer freed on drop.
struct Pinned<'a> {
    b: &'a dyn Backend,
    ptr: *mut u8,
    len: usize,
}

impl<'a> Pinned<'a> {
    fn new(b: &'a dyn Backend, len: usize) -> Result<Self, String> {
        let ptr = b.host_alloc_pinned(len as u64).map_err(e)?;
        Ok(Pinned { b, ptr, len })
    }
    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live pinned allocation of `len` bytes owned by this guard; callers
        // synchronise streams before touching it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        // SAFETY: allocated by this backend in `new`; the checks synchronise before dropping.
        let _ = unsafe { self.b.host_free_pinned(self.ptr) };
    }
}

/// Device allocation freed on drop.
struct Dev<'a> {
    b: &'a dyn Backend,
    ptr: DevicePtr,
}

impl<'a> Dev<'a> {
    fn new(b: &'a dyn Backend, len: u64) -> Result<Self, String> {
        Ok(Dev {
            b,
            ptr: b.alloc(len).map_err(e)?,
        })
    }
}

impl Drop for Dev<'_> {
    fn drop(&mut self) {
        let _ = self.b.free(self.ptr);
    }
}

/// Stream destroyed on drop.
struct S<'a> {
    b: &'a dyn Backend,
    s: Stream,
}

impl<'a> S<'a> {
    fn new(b: &'a dyn Backend) -> Result<Self, String> {
        Ok(S {
            b,
            s: b.stream_create().map_err(e)?,
        })
    }
}

impl Drop for S<'_> {
    fn drop(&mut self) {
        let _ = self.b.stream_synchronize(self.s);
        let _ = self.b.stream_destroy(self.s);
    }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

fn device_reports_sane_properties(b: &dyn Backend) -> Result<(), String> {
    let p = b.properties();
    ensure(!p.name.is_empty(), || "empty device name".into())?;
    ensure(p.total_memory > 0, || "zero total memory".into())?;
    let m = b.mem_info().map_err(e)?;
    ensure(m.free <= m.total && m.total == p.total_memory, || {
        format!(
            "mem_info {m:?} disagrees with total memory {}",
            p.total_memory
        )
    })?;
    ensure(
        !p.vmm_supported || p.vmm_granularity.is_power_of_two(),
        || format!("granularity {} is not a power of two", p.vmm_granularity),
    )
}

fn pinned_copy_round_trips_random_bytes(b: &dyn Backend) -> Result<(), String> {
    let len = (3 << 20) + 123;
    let data = random(len, 1);
    let s = S::new(b)?;
    let mut src = Pinned::new(b, len)?;
    let mut dst = Pinned::new(b, len)?;
    src.slice().copy_from_slice(&data);
    let d = Dev::new(b, len as u64)?;
    // SAFETY: both pinned buffers live until after the synchronize below.
    unsafe {
        b.copy_htod_async(d.ptr, src.ptr, len as u64, s.s)
            .map_err(e)?;
        b.copy_dtoh_async(dst.ptr, d.ptr, len as u64, s.s)
            .map_err(e)?;
    }
    b.stream_synchronize(s.s).map_err(e)?;
    ensure(dst.slice() == &data[..], || {
        "bytes differ after a pinned round trip".into()
    })
}

fn pageable_copy_round_trips_once_the_stream_is_synchronized(
    b: &dyn Backend,
) -> Result<(), String> {
    let len = 1 << 20;
    let data = random(len, 2);
    let s = S::new(b)?;
    let d = Dev::new(b, len as u64)?;
    let mut out = vec![0u8; len];
    // SAFETY: both buffers outlive the copies and are not touched by the host until the
    // stream has been synchronised below.
    let queued = unsafe {
        b.copy_htod_async(d.ptr, data.as_ptr(), len as u64, s.s)
            .and_then(|()| b.copy_dtoh_async(out.as_mut_ptr(), d.ptr, len as u64, s.s))
    };
    // A copy with pageable memory "might be synchronous", no more: the destination is read
    // only after the stream is synchronised (also when queueing failed, so that no copy still
    // uses the buffers when they are dropped).
    let synced = b.stream_synchronize(s.s);
    queued.map_err(e)?;
    synced.map_err(e)?;
    ensure(out == data, || {
        "bytes differ after a pageable round trip".into()
    })
}

fn device_to_device_copy_moves_bytes(b: &dyn Backend) -> Result<(), String> {
    let len = 777_777;
    let data = random(len, 3);
    let s = S::new(b)?;
    let x = Dev::new(b, len as u64)?;
    let y = Dev::new(b, len as u64)?;
    backend::upload(b, x.ptr, &data, s.s).map_err(e)?;
    b.copy_dtod_async(y.ptr, x.ptr, len as u64, s.s)
        .map_err(e)?;
    let mut out = vec![0u8; len];
    backend::download(b, &mut out, y.ptr, s.s).map_err(e)?;
    ensure(out == data, || "device-to-device copy changed bytes".into())
}

fn memset_sets_every_byte(b: &dyn Backend) -> Result<(), String> {
    let len = 100_003;
    let s = S::new(b)?;
    let x = Dev::new(b, len as u64)?;
    b.memset_d8_async(x.ptr, 0xA5, len as u64, s.s).map_err(e)?;
    let mut out = vec![0u8; len];
    backend::download(b, &mut out, x.ptr, s.s).map_err(e)?;
    ensure(out.iter().all(|&v| v == 0xA5), || {
        "memset left other bytes".into()
    })
}

fn work_on_one_stream_runs_in_order(b: &dyn Backend) -> Result<(), String> {
    // Many dependent steps on one stream with no host synchronisation in between: each copy
    // reads what the previous one wrote.
    let len = 1 << 20;
    let data = random(len, 4);
    let s = S::new(b)?;
    let mut host = Pinned::new(b, len)?;
    host.slice().copy_from_slice(&data);
    let bufs: Vec<Dev> = (0..6)
        .map(|_| Dev::new(b, len as u64))
        .collect::<Result<_, _>>()?;
    // SAFETY: `host` lives until after the synchronize.
    unsafe {
        b.copy_htod_async(bufs[0].ptr, host.ptr, len as u64, s.s)
            .map_err(e)?
    };
    for w in bufs.windows(2) {
        b.copy_dtod_async(w[1].ptr, w[0].ptr, len as u64, s.s)
            .map_err(e)?;
    }
    b.stream_synchronize(s.s).map_err(e)?;
    let mut out = Pinned::new(b, len)?;
    // SAFETY: `out` lives until after the synchronize.
    unsafe {
        b.copy_dtoh_async(out.ptr, bufs[5].ptr, len as u64, s.s)
            .map_err(e)?
    };
    b.stream_synchronize(s.s).map_err(e)?;
    ensure(out.slice() == &data[..], || {
        "a chain of copies on one stream reordered".into()
    })
}

fn stream_wait_event_orders_streams(b: &dyn Backend) -> Result<(), String> {
    let len = 8 << 20;
    let data = random(len, 5);
    let a = S::new(b)?;
    let c = S::new(b)?;
    let mut host = Pinned::new(b, len)?;
    host.slice().copy_from_slice(&data);
    let x = Dev::new(b, len as u64)?;
    let y = Dev::new(b, len as u64)?;
    let ev = b.event_create(false).map_err(e)?;
    let r = (|| {
        // SAFETY: `host` lives until after the synchronize below.
        unsafe {
            b.copy_htod_async(x.ptr, host.ptr, len as u64, a.s)
                .map_err(e)?
        };
        b.event_record(ev, a.s).map_err(e)?;
        b.stream_wait_event(c.s, ev).map_err(e)?;
        b.copy_dtod_async(y.ptr, x.ptr, len as u64, c.s)
            .map_err(e)?;
        let mut out = vec![0u8; len];
        b.stream_synchronize(c.s).map_err(e)?;
        backend::download(b, &mut out, y.ptr, c.s).map_err(e)?;
        ensure(out == data, || {
            "work after stream_wait_event saw stale bytes".into()
        })?;
        if let Some(sim) = b.sim_device() {
            let v: Vec<_> = sim
                .violations()
                .into_iter()
                .filter(|v| v.start < y.ptr.0 + len as u64 && v.end > x.ptr.0)
                .collect();
            ensure(v.is_empty(), || {
                format!("race reported despite event ordering: {v:?}")
            })?;
        }
        Ok(())
    })();
    b.synchronize().map_err(e)?;
    b.event_destroy(ev).map_err(e)?;
    r
}

fn event_query_is_true_after_synchronize(b: &dyn Backend) -> Result<(), String> {
    let s = S::new(b)?;
    let ev = b.event_create(false).map_err(e)?;
    let r = (|| {
        ensure(b.event_query(ev).map_err(e)?, || {
            "a never-recorded event is not complete".into()
        })?;
        let x = Dev::new(b, 1 << 20)?;
        b.memset_d8_async(x.ptr, 1, 1 << 20, s.s).map_err(e)?;
        b.event_record(ev, s.s).map_err(e)?;
        b.event_synchronize(ev).map_err(e)?;
        ensure(b.event_query(ev).map_err(e)?, || {
            "event not complete after synchronize".into()
        })?;
        ensure(b.stream_query(s.s).map_err(e)?, || {
            "stream busy after its last event completed".into()
        })
    })();
    b.event_destroy(ev).map_err(e)?;
    r
}

fn event_elapsed_time_is_non_negative(b: &dyn Backend) -> Result<(), String> {
    let s = S::new(b)?;
    let t0 = b.event_create(true).map_err(e)?;
    let t1 = b.event_create(true).map_err(e)?;
    let r = (|| {
        let x = Dev::new(b, 4 << 20)?;
        b.event_record(t0, s.s).map_err(e)?;
        b.memset_d8_async(x.ptr, 3, 4 << 20, s.s).map_err(e)?;
        b.event_record(t1, s.s).map_err(e)?;
        b.event_synchronize(t1).map_err(e)?;
        let ms = b.event_elapsed_ms(t0, t1).map_err(e)?;
        ensure(ms >= 0.0 && ms.is_finite(), || {
            format!("elapsed time {ms} ms")
        })
    })();
    b.event_destroy(t0).map_err(e)?;
    b.event_destroy(t1).map_err(e)?;
    r
}

fn allocation_past_capacity_is_out_of_memory(b: &dyn Backend) -> Result<(), String> {
    let total = b.properties().total_memory;
    match b.alloc(total.saturating_mul(2)) {
        Ok(p) => {
            let _ = b.free(p);
            Err(format!(
                "allocating {} bytes on a {total}-byte device succeeded",
                total * 2
            ))
        }
        Err(err) if err.is_out_of_memory() => Ok(()),
        Err(err) => Err(format!("expected out-of-memory, got: {err}")),
    }
}

fn zero_byte_allocation_is_rejected(b: &dyn Backend) -> Result<(), String> {
    match b.alloc(0) {
        Ok(p) => {
            let _ = b.free(p);
            Err("a 0-byte allocation succeeded".into())
        }
        Err(err) => ensure(
            err.driver_name() == Some("CUDA_ERROR_INVALID_VALUE"),
            || format!("expected CUDA_ERROR_INVALID_VALUE, got: {err}"),
        ),
    }
}

fn free_of_unknown_pointer_is_rejected(b: &dyn Backend) -> Result<(), String> {
    let x = b.alloc(4096).map_err(e)?;
    b.free(x).map_err(e)?;
    ensure(b.free(x).is_err(), || "a double free succeeded".into())
}

fn freed_memory_is_returned_to_the_device(b: &dyn Backend) -> Result<(), String> {
    let size = 64 << 20;
    let before = b.mem_info().map_err(e)?.free;
    let x = b.alloc(size).map_err(e)?;
    let during = b.mem_info().map_err(e)?.free;
    b.free(x).map_err(e)?;
    let after = b.mem_info().map_err(e)?.free;
    ensure(during < before, || {
        format!("free memory did not drop: {before} -> {during}")
    })?;
    ensure(after > during, || {
        format!("free memory did not recover: {during} -> {after}")
    })
}

fn granule(b: &dyn Backend) -> Result<u64, String> {
    let p = b.properties();
    ensure(p.vmm_supported, || {
        "the device does not support the virtual-memory API".into()
    })?;
    Ok(p.vmm_granularity)
}

fn vmm_mapping_gives_stable_addresses_across_remaps(b: &dyn Backend) -> Result<(), String> {
    let g = granule(b)?;
    let s = S::new(b)?;
    let va = b.reserve(2 * g).map_err(e)?;
    let r = (|| {
        let data = random((2 * g) as usize, 6);
        for round in 0..2 {
            let h = b.create_physical(2 * g).map_err(e)?;
            b.map(va, 2 * g, h).map_err(e)?;
            b.release_physical(h).map_err(e)?;
            backend::upload(b, va, &data, s.s).map_err(e)?;
            let mut out = vec![0u8; data.len()];
            backend::download(b, &mut out, va, s.s).map_err(e)?;
            ensure(out == data, || {
                format!("round {round}: bytes differ through the mapping")
            })?;
            b.unmap(va, 2 * g).map_err(e)?;
        }
        Ok(())
    })();
    b.free_reservation(va, 2 * g).map_err(e)?;
    r
}

fn vmm_copy_into_unmapped_range_fails(b: &dyn Backend) -> Result<(), String> {
    let g = granule(b)?;
    let s = S::new(b)?;
    let va = b.reserve(2 * g).map_err(e)?;
    let r = (|| {
        let h = b.create_physical(g).map_err(e)?;
        b.map(va.offset(g), g, h).map_err(e)?;
        b.release_physical(h).map_err(e)?;
        let data = vec![1u8; 4096];
        // The destination is checked when the copy is queued, so the error is immediate.
        // SAFETY: `data` outlives the copies, which are synchronised below.
        let bad = unsafe { b.copy_htod_async(va, data.as_ptr(), 4096, s.s) };
        let good = unsafe { b.copy_htod_async(va.offset(g), data.as_ptr(), 4096, s.s) };
        b.stream_synchronize(s.s).map_err(e)?;
        b.unmap(va.offset(g), g).map_err(e)?;
        ensure(bad.is_err(), || {
            "a copy into an unmapped range succeeded".into()
        })?;
        good.map_err(e)
    })();
    b.free_reservation(va, 2 * g).map_err(e)?;
    r
}

fn vmm_misaligned_mapping_is_rejected(b: &dyn Backend) -> Result<(), String> {
    let g = granule(b)?;
    let va = b.reserve(2 * g).map_err(e)?;
    let r = (|| {
        let h = b.create_physical(g).map_err(e)?;
        let bad = b.map(va.offset(4096), g, h);
        if bad.is_ok() {
            let _ = b.unmap(va.offset(4096), g);
        }
        b.release_physical(h).map_err(e)?;
        ensure(bad.is_err(), || {
            "a mapping at a non-granular address succeeded".into()
        })?;
        let odd = b.create_physical(g + 4096);
        if let Ok(h) = odd {
            let _ = b.release_physical(h);
        }
        ensure(odd.is_err(), || {
            "a physical allocation of a non-granular size succeeded".into()
        })
    })();
    b.free_reservation(va, 2 * g).map_err(e)?;
    r
}

fn vmm_partial_unmap_is_rejected(b: &dyn Backend) -> Result<(), String> {
    let g = granule(b)?;
    let va = b.reserve(2 * g).map_err(e)?;
    let r = (|| {
        let h = b.create_physical(2 * g).map_err(e)?;
        b.map(va, 2 * g, h).map_err(e)?;
        b.release_physical(h).map_err(e)?;
        let partial = b.unmap(va, g);
        let whole = b.unmap(va, 2 * g);
        ensure(partial.is_err(), || {
            "unmapping half of a mapping succeeded".into()
        })?;
        whole.map_err(e)
    })();
    b.free_reservation(va, 2 * g).map_err(e)?;
    r
}

fn stream_ordered_allocation_round_trips(b: &dyn Backend) -> Result<(), String> {
    if !b.properties().memory_pools {
        return Ok(());
    }
    let s = S::new(b)?;
    let len = 65536usize;
    let data = random(len, 7);
    let p = b.alloc_async(len as u64, s.s).map_err(e)?;
    let mut out = vec![0u8; len];
    let r = backend::upload(b, p, &data, s.s).and_then(|_| backend::download(b, &mut out, p, s.s));
    b.free_async(p, s.s).map_err(e)?;
    b.stream_synchronize(s.s).map_err(e)?;
    r.map_err(e)?;
    ensure(out == data, || {
        "bytes differ through a stream-ordered allocation".into()
    })
}

fn registered_host_memory_copies_asynchronously(b: &dyn Backend) -> Result<(), String> {
    let len = 2 << 20;
    // A page-aligned buffer to register.
    let layout = std::alloc::Layout::from_size_align(len, 4096).map_err(|x| x.to_string())?;
    // SAFETY: non-zero layout; freed at the end of this function.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    ensure(!buf.is_null(), || "host allocation failed".into())?;
    let data = random(len, 8);
    // SAFETY: `buf` holds `len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf, len) };
    let s = S::new(b)?;
    let r = (|| {
        // SAFETY: `buf` stays allocated until after unregistering below.
        unsafe { b.host_register(buf, len as u64, false).map_err(e)? };
        let x = Dev::new(b, len as u64)?;
        let mut out = vec![0u8; len];
        // SAFETY: the registered buffer outlives the copy, synchronised below.
        unsafe { b.copy_htod_async(x.ptr, buf, len as u64, s.s).map_err(e)? };
        b.stream_synchronize(s.s).map_err(e)?;
        backend::download(b, &mut out, x.ptr, s.s).map_err(e)?;
        // SAFETY: no copy uses the range any more.
        unsafe { b.host_unregister(buf).map_err(e)? };
        ensure(out == data, || "bytes differ from registered memory".into())
    })();
    // SAFETY: allocated above with this layout; unregistered (or never registered).
    unsafe { std::alloc::dealloc(buf, layout) };
    r
}

fn checksum_kernel_matches_host(b: &dyn Backend) -> Result<(), String> {
    let s = S::new(b)?;
    for (i, len) in [1usize, 7, 8, 4096, 1_000_003].into_iter().enumerate() {
        let data = random(len, 100 + i as u64);
        let x = Dev::new(b, len as u64)?;
        backend::upload(b, x.ptr, &data, s.s).map_err(e)?;
        let got = backend::checksum(b, x.ptr, len as u64, s.s).map_err(e)?;
        let want = vramswap_sim::kernels::checksum(&data);
        ensure(got == want, || {
            format!("checksum of {len} bytes: device {got:#x}, host {want:#x}")
        })?;
    }
    Ok(())
}

fn fill_kernel_matches_host(b: &dyn Backend) -> Result<(), String> {
    let s = S::new(b)?;
    let len = 10_001usize;
    let x = Dev::new(b, len as u64)?;
    b.fill_u32_async(x.ptr, len as u64, 0xDEAD_BEEF, s.s)
        .map_err(e)?;
    let mut out = vec![0u8; len];
    backend::download(b, &mut out, x.ptr, s.s).map_err(e)?;
    let mut want = vec![0u8; len];
    vramswap_sim::kernels::fill_u32(&mut want, 0xDEAD_BEEF);
    ensure(out == want, || {
        "fill kernel differs from the host fill".into()
    })
}

fn cast_kernels_match_half(b: &dyn Backend) -> Result<(), String> {
    let s = S::new(b)?;
    let n = 4099usize;
    let mut src32 = random(n * 4, 9);
    // Include the hard cases: NaN, infinities, subnormals, ties.
    let specials = [
        f32::NAN,
        f32::INFINITY,
        -f32::INFINITY,
        1e-40,
        -0.0,
        1.000_976_6,
        65520.0,
    ];
    for (i, v) in specials.iter().enumerate() {
        src32[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    let types = [CastType::F32, CastType::F16, CastType::BF16];
    for from in types {
        for to in types {
            if from == to {
                continue;
            }
            let mut input = vec![0u8; n * from.size()];
            vramswap_sim::kernels::cast(&src32, CastType::F32, &mut input, from, n);
            let x = Dev::new(b, input.len() as u64)?;
            let y = Dev::new(b, (n * to.size()) as u64)?;
            backend::upload(b, x.ptr, &input, s.s).map_err(e)?;
            b.cast_async(x.ptr, from, y.ptr, to, n as u64, s.s)
                .map_err(e)?;
            let mut out = vec![0u8; n * to.size()];
            backend::download(b, &mut out, y.ptr, s.s).map_err(e)?;
            let mut want = vec![0u8; n * to.size()];
            vramswap_sim::kernels::cast(&input, from, &mut want, to, n);
            ensure(out == want, || {
                format!("cast {from:?} -> {to:?} differs from half")
            })?;
        }
    }
    Ok(())
}
