//! `vramswap_context`: a backend, a caching allocator and a swap engine; the allocator calls.

use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, RwLock};

use super::handles::HandleTable;
use super::{check_non_null, guarded, str_arg, vramswap_status, write_json, CResult, Failure};
use crate::alloc::CachingAllocator;
use crate::backend::{self, BackendChoice, BackendKind};
use crate::backend::{DevicePtr, SharedBackend, Stream};
use crate::setup::EngineSetup;
use crate::swap::SwapEngine;

/// Which backend a context uses: `VRAMSWAP_BACKEND_AUTO` (0: CUDA when a device answers, the
/// simulated device otherwise; `VRAMSWAP_BACKEND=cuda|sim` overrides), `VRAMSWAP_BACKEND_CUDA`
/// (1) or `VRAMSWAP_BACKEND_SIM` (2). The C enum is written in `ffi/cbindgen.toml`; Rust
/// receives a plain `int`, so that a value outside the enum is an error, not undefined
/// behaviour.
pub type vramswap_backend_kind = c_int;
/// CUDA when a device answers, the simulated device otherwise.
pub const VRAMSWAP_BACKEND_AUTO: vramswap_backend_kind = 0;
/// The CUDA driver.
pub const VRAMSWAP_BACKEND_CUDA: vramswap_backend_kind = 1;
/// The simulated device (host memory; device pointers cannot be dereferenced).
pub const VRAMSWAP_BACKEND_SIM: vramswap_backend_kind = 2;

/// A backend, a caching allocator and a swap engine sharing one device (opaque). The engine
/// has the allocator attached: when the allocator runs out of memory, idle weight sets are
/// offloaded, and swap-ins release the allocator's unused cache. Thread-safe: one context may
/// be used from several threads at once.
pub struct vramswap_context {
    _opaque: [u8; 0],
}

/// The live contexts; a `*mut vramswap_context` is a handle into this table, never an address.
static CONTEXTS: HandleTable<Context> = HandleTable::new();

/// What a context holds; shared with the process-wide contexts of the PyTorch entry points.
pub(crate) struct Context {
    // Declared (and so dropped) first: resident sets go back to the device before the cache.
    pub(crate) engine: SwapEngine,
    pub(crate) alloc: Arc<CachingAllocator>,
    pub(crate) backend: SharedBackend,
    /// The streams `vramswap_stream_create` made and `vramswap_stream_destroy` has not yet
    /// destroyed: the only handles besides NULL that the C calls accept.
    streams: RwLock<HashSet<u64>>,
}

impl Context {
    /// Opens a backend and builds the allocator and engine over it with the crate's one setup
    /// ([`EngineSetup`]). `None` configurations are read from `VRAMSWAP_ALLOC_CONF` and
    /// `VRAMSWAP_SWAP_CONF`.
    pub(crate) fn open(
        backend: BackendChoice,
        device: c_int,
        sim_capacity: u64,
        alloc_conf: Option<&str>,
        swap_conf: Option<&str>,
    ) -> CResult<Context> {
        let built = EngineSetup {
            backend,
            device,
            sim_capacity: (sim_capacity > 0).then_some(sim_capacity),
            alloc_conf: alloc_conf.map(str::to_string),
            swap_conf: swap_conf.map(str::to_string),
            ..EngineSetup::default()
        }
        .build()?;
        // A sim ordinal past `VRAMSWAP_SIM_DEVICES` was refused by the setup (InvalidDevice).
        let (engine, alloc, backend) = (built.engine, built.alloc, built.backend);
        Ok(Context {
            engine,
            alloc,
            backend,
            streams: RwLock::new(HashSet::new()),
        })
    }

    /// A C `stream` argument: NULL (the default stream), a stream this context created and has
    /// not destroyed, or, on CUDA, a `CUstream` of the caller's own (what PyTorch's and RMM's
    /// allocators take; keeping it alive while vramswap may use it is the caller's part, as with
    /// any CUDA call). Never one of the swap engine's copy streams, and on sim (whose streams
    /// all come from this context) nothing else: those are `VRAMSWAP_NOT_FOUND`.
    pub(crate) fn stream(&self, stream: *mut c_void) -> CResult<Stream> {
        let s = stream_arg(stream);
        if s.0 == 0 || self.known_streams().contains(&s.0) {
            return Ok(s);
        }
        if self.backend.kind() == BackendKind::Cuda && !self.engine.is_copy_stream(s) {
            return Ok(s);
        }
        Err(unknown_stream(s))
    }

    fn known_streams(&self) -> std::sync::RwLockReadGuard<'_, HashSet<u64>> {
        // The set is never left half-updated: a panic elsewhere does not poison its contents.
        self.streams.read().unwrap_or_else(|p| p.into_inner())
    }

    fn known_streams_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<u64>> {
        self.streams.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Context {
    /// Destroys the streams `vramswap_stream_create` made that the caller never destroyed:
    /// they belong to the context, and would otherwise outlive it on the device. Each is
    /// synchronized first; a failure is logged (a drop has no caller to tell) and the rest
    /// are still destroyed.
    fn drop(&mut self) {
        let streams: Vec<u64> = self.known_streams_mut().drain().collect();
        for s in streams.into_iter().map(Stream) {
            let done = self.backend.stream_synchronize(s).and_then(|()| {
                self.alloc.forget_stream(s);
                self.backend.stream_destroy(s)
            });
            if let Err(e) = done {
                tracing::error!(stream = s.0, "context destroy: stream not destroyed: {e}");
            }
        }
    }
}

fn unknown_stream(s: Stream) -> Failure {
    Failure::new(
        vramswap_status::VRAMSWAP_NOT_FOUND,
        format!(
            "stream {:#x} was not created by vramswap_stream_create on this context, or was \
             destroyed, or is one of the engine's own copy streams",
            s.0
        ),
    )
}

/// The context behind a handle: a destroyed (or never created) context is
/// `VRAMSWAP_INVALID_STATE`, not undefined behaviour.
///
/// # Safety
/// None beyond the C contract: kept `unsafe` so every entry point reads alike.
pub(crate) unsafe fn context(ctx: *const vramswap_context) -> CResult<Arc<Context>> {
    check_non_null(ctx, "ctx")?;
    CONTEXTS
        .get(ctx as usize)
        .ok_or_else(|| stale("context", ctx as usize))
}

/// The failure for a handle that is not live.
pub(crate) fn stale(what: &str, handle: usize) -> Failure {
    Failure::new(
        vramswap_status::VRAMSWAP_INVALID_STATE,
        format!("{what} handle {handle:#x} is not live: already released, or never created"),
    )
}

/// A C `stream` argument, unchecked: a `CUstream` on CUDA, a stream handle on sim; NULL is the
/// default. The context's calls check it with [`Context::stream`]; the PyTorch calls take
/// PyTorch's streams as they come.
pub(crate) fn stream_arg(stream: *mut c_void) -> Stream {
    Stream(stream as usize as u64)
}

/// A device address as the `void *` C sees (never dereferenced on the host).
pub(crate) fn device_ptr_out(p: DevicePtr) -> *mut c_void {
    std::ptr::without_provenance_mut(p.0 as usize)
}

/// The backend a `vramswap_backend_kind` names.
fn backend_choice(kind: vramswap_backend_kind) -> CResult<BackendChoice> {
    match kind {
        VRAMSWAP_BACKEND_AUTO => Ok(BackendChoice::Auto),
        VRAMSWAP_BACKEND_CUDA => Ok(BackendChoice::Cuda),
        VRAMSWAP_BACKEND_SIM => Ok(BackendChoice::Sim),
        other => Err(Failure::invalid(format!(
            "backend kind {other} is not VRAMSWAP_BACKEND_AUTO (0), _CUDA (1) or _SIM (2)"
        ))),
    }
}

/// A `void *` device address from C.
pub(crate) fn device_ptr_arg(p: *mut c_void) -> DevicePtr {
    DevicePtr(p as usize as u64)
}

/// Creates a context on `backend` (a `vramswap_backend_kind`) and device `device`, with the
/// allocator configured by `VRAMSWAP_ALLOC_CONF` and the engine by `VRAMSWAP_SWAP_CONF`.
/// `sim_capacity_bytes` is the simulated device's memory (0: `VRAMSWAP_SIM_CONF` or 8 GiB);
/// the argument comes before the environment, and the rest of `VRAMSWAP_SIM_CONF` and the
/// fault plan of `VRAMSWAP_SIM_FAULTS` apply either way; other backends ignore it. On the
/// simulated device `device` must be below `VRAMSWAP_SIM_DEVICES` (default 1), as a CUDA
/// ordinal must name a device; another is `VRAMSWAP_INVALID_ARGUMENT`. On success `*out` holds
/// the context, to be released with
/// `vramswap_context_destroy`; on failure `*out` is NULL.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn vramswap_context_create(
    backend: vramswap_backend_kind,
    device: c_int,
    sim_capacity_bytes: u64,
    out: *mut *mut vramswap_context,
) -> vramswap_status {
    // SAFETY: the same contract, with NULL configuration strings.
    unsafe {
        vramswap_context_create_with_config(
            backend,
            device,
            sim_capacity_bytes,
            std::ptr::null(),
            std::ptr::null(),
            out,
        )
    }
}

/// Like `vramswap_context_create`, with the allocator configuration `alloc_conf` (the syntax
/// of `VRAMSWAP_ALLOC_CONF`, e.g. `"limit_mb:512,max_split_size_mb:64"`) and the engine's
/// `swap_conf` (the syntax of `VRAMSWAP_SWAP_CONF`, e.g. `"device_budget:4GiB,streams:2"`).
/// A NULL string means: read the environment variable.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer; each string is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn vramswap_context_create_with_config(
    backend: vramswap_backend_kind,
    device: c_int,
    sim_capacity_bytes: u64,
    alloc_conf: *const c_char,
    swap_conf: *const c_char,
    out: *mut *mut vramswap_context,
) -> vramswap_status {
    guarded("vramswap_context_create", || {
        check_non_null(out, "out")?;
        // SAFETY: not NULL and valid for a pointer write (caller's contract).
        unsafe { out.write(std::ptr::null_mut()) };
        let opt = |p: *const c_char, what| -> CResult<Option<&str>> {
            // SAFETY: NULL-checked here; otherwise NUL-terminated (caller's contract).
            (!p.is_null())
                .then(|| unsafe { str_arg(p, what) })
                .transpose()
        };
        let (aconf, sconf) = (opt(alloc_conf, "alloc_conf")?, opt(swap_conf, "swap_conf")?);
        let inner = Context::open(
            backend_choice(backend)?,
            device,
            sim_capacity_bytes,
            aconf,
            sconf,
        )?;
        let handle = CONTEXTS.insert(inner);
        // SAFETY: as above.
        unsafe { out.write(std::ptr::without_provenance_mut(handle)) };
        Ok(())
    })
}

/// Destroys a context: frees the engine's device memory and the allocator's cache, and
/// destroys the streams `vramswap_stream_create` made on it that are still alive. Blocks the
/// allocator handed out and not freed are released with the device memory. NULL is ignored
/// (`VRAMSWAP_OK`). Release every guard first: a live guard keeps its weight set on the device
/// until it is released. Handles are checked: destroying a context twice, or using it after,
/// is `VRAMSWAP_INVALID_STATE`, never undefined behaviour; a call running on another thread
/// finishes first, and the context goes when it returns.
///
/// # Safety
/// None beyond the C contract (the handle is checked).
#[no_mangle]
pub unsafe extern "C" fn vramswap_context_destroy(ctx: *mut vramswap_context) -> vramswap_status {
    guarded("vramswap_context_destroy", || {
        if ctx.is_null() {
            return Ok(());
        }
        // The context goes when the last call using it (on another thread) returns.
        CONTEXTS
            .remove(ctx as usize)
            .map(drop)
            .ok_or_else(|| stale("context", ctx as usize))
    })
}

/// Allocates `size` bytes of device memory for use on `stream` from the caching allocator.
/// `stream` is NULL (the default stream), a stream from `vramswap_stream_create` on this
/// context, or on CUDA a `CUstream` of the caller's own, kept alive while vramswap may use it:
/// until every block allocated or recorded on it is freed and the cache is emptied
/// (`vramswap_empty_cache`), or the context destroyed;
/// any other handle (the engine's own copy streams; on sim, anything else) is
/// `VRAMSWAP_NOT_FOUND`. `size` 0, or a size too large to round, is
/// `VRAMSWAP_INVALID_ARGUMENT`. On failure `*out_ptr` is NULL.
///
/// # Safety
/// `ctx` is NULL or live; `out_ptr` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn vramswap_malloc(
    ctx: *mut vramswap_context,
    size: usize,
    stream: *mut c_void,
    out_ptr: *mut *mut c_void,
) -> vramswap_status {
    guarded("vramswap_malloc", || {
        check_non_null(out_ptr, "out_ptr")?;
        // SAFETY: not NULL and valid for a pointer write (caller's contract).
        unsafe { out_ptr.write(std::ptr::null_mut()) };
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let c = unsafe { context(ctx) }?;
        let p = allocate(&c, size as u64, c.stream(stream)?)?;
        // SAFETY: as above.
        unsafe { out_ptr.write(device_ptr_out(p)) };
        Ok(())
    })
}

/// The size checks shared by `vramswap_malloc` and `vramswap_torch_malloc`.
pub(crate) fn allocate(c: &Context, size: u64, stream: Stream) -> CResult<DevicePtr> {
    if size == 0 {
        return Err(Failure::invalid("size is 0"));
    }
    if size > isize::MAX as u64 {
        return Err(Failure::invalid(format!(
            "size {size} is larger than PTRDIFF_MAX (a negative size cast to size_t?)"
        )));
    }
    Ok(c.alloc.allocate(size, stream)?)
}

/// Frees a block from `vramswap_malloc`. NULL is `VRAMSWAP_NULL_POINTER`; a pointer this
/// context never handed out is `VRAMSWAP_NOT_FOUND`; freeing a block twice is
/// `VRAMSWAP_INVALID_STATE` (or `VRAMSWAP_NOT_FOUND` once its bytes were merged into a
/// neighbour), and a double free after the address was handed out again frees the new block:
/// the allocator cannot tell those apart. A free that fails leaves the block allocated.
///
/// # Safety
/// `ctx` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn vramswap_free(
    ctx: *mut vramswap_context,
    ptr: *mut c_void,
) -> vramswap_status {
    guarded("vramswap_free", || {
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let c = unsafe { context(ctx) }?;
        check_non_null(ptr, "ptr")?;
        Ok(c.alloc.free(device_ptr_arg(ptr))?)
    })
}

/// Marks a live block as used on `stream` too: once freed, it is reused only after the work
/// queued on `stream` before the free has completed. `stream` is as for `vramswap_malloc`.
/// A stream from `vramswap_stream_create` may be destroyed before the free (destroying it
/// waits for its work); a `CUstream` of the caller's own must outlive the free.
///
/// # Safety
/// `ctx` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn vramswap_record_stream(
    ctx: *mut vramswap_context,
    ptr: *mut c_void,
    stream: *mut c_void,
) -> vramswap_status {
    guarded("vramswap_record_stream", || {
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let c = unsafe { context(ctx) }?;
        check_non_null(ptr, "ptr")?;
        let s = c.stream(stream)?;
        Ok(c.alloc.record_stream(device_ptr_arg(ptr), s)?)
    })
}

/// Returns every cached, unused block to the device.
///
/// # Safety
/// `ctx` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn vramswap_empty_cache(ctx: *mut vramswap_context) -> vramswap_status {
    guarded("vramswap_empty_cache", || {
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let c = unsafe { context(ctx) }?;
        Ok(c.alloc.empty_cache()?)
    })
}

/// Writes the allocator's statistics as JSON (current and peak allocated and reserved bytes,
/// hits, misses, segments, OOMs) and a NUL into `buf` of `buf_len` bytes. `*needed` (when
/// `needed` is not NULL) receives the bytes required, NUL included; a buffer too small is
/// `VRAMSWAP_BUFFER_TOO_SMALL` and leaves `buf` untouched. Call with `buf` NULL and `buf_len` 0
/// to ask for the size.
///
/// # Safety
/// `ctx` is NULL or live; `buf` is NULL or valid for `buf_len` bytes; `needed` is NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn vramswap_stats_json(
    ctx: *mut vramswap_context,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> vramswap_status {
    guarded("vramswap_stats_json", || {
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let c = unsafe { context(ctx) }?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { write_json(&c.alloc.stats(), buf, buf_len, needed) }
    })
}

/// Writes the device's properties as JSON (`backend` `"cuda"` or `"sim"`, `name`, `ordinal`,
/// `emulated`, total memory, ...), like `vramswap_stats_json`.
///
/// # Safety
/// As for `vramswap_stats_json`.
#[no_mangle]
pub unsafe extern "C" fn vramswap_device_json(
    ctx: *mut vramswap_context,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> vramswap_status {
    guarded("vramswap_device_json", || {
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let c = unsafe { context(ctx) }?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { write_json(c.backend.properties(), buf, buf_len, needed) }
    })
}

/// Copies `bytes` bytes from host memory `src` to device memory `dst` on `stream` and waits
/// for the copy; 0 bytes is a successful no-op, as with `cuMemcpy`. The way to fill device memory on the simulated device, whose pointers the
/// host cannot dereference. `stream` is as for `vramswap_malloc`.
///
/// # Safety
/// `ctx` is NULL or live; `src` is NULL or valid for reading `bytes` bytes; `dst` is a device
/// range of `bytes` bytes (checked by the backend).
#[no_mangle]
pub unsafe extern "C" fn vramswap_copy_to_device(
    ctx: *mut vramswap_context,
    dst: *mut c_void,
    src: *const c_void,
    bytes: usize,
    stream: *mut c_void,
) -> vramswap_status {
    guarded("vramswap_copy_to_device", || {
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let c = unsafe { context(ctx) }?;
        check_non_null(dst, "dst")?;
        check_non_null(src, "src")?;
        check_len(bytes)?;
        let s = c.stream(stream)?;
        if bytes == 0 {
            // As cuMemcpy: a copy of nothing succeeds.
            return Ok(());
        }
        // SAFETY: not NULL, valid for `bytes` bytes (caller's contract), bytes <= isize::MAX.
        let data = unsafe { std::slice::from_raw_parts(src.cast::<u8>(), bytes) };
        Ok(backend::upload(&*c.backend, device_ptr_arg(dst), data, s)?)
    })
}

/// Copies `bytes` bytes from device memory `src` to host memory `dst` on `stream` and waits
/// for the copy; 0 bytes is a successful no-op, as with `cuMemcpy`. `stream` is as for `vramswap_copy_to_device`.
///
/// # Safety
/// `ctx` is NULL or live; `dst` is NULL or valid for writing `bytes` bytes; `src` is a device
/// range of `bytes` bytes (checked by the backend).
#[no_mangle]
pub unsafe extern "C" fn vramswap_copy_to_host(
    ctx: *mut vramswap_context,
    dst: *mut c_void,
    src: *const c_void,
    bytes: usize,
    stream: *mut c_void,
) -> vramswap_status {
    guarded("vramswap_copy_to_host", || {
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let c = unsafe { context(ctx) }?;
        check_non_null(dst, "dst")?;
        check_non_null(src, "src")?;
        check_len(bytes)?;
        let s = c.stream(stream)?;
        if bytes == 0 {
            // As cuMemcpy: a copy of nothing succeeds.
            return Ok(());
        }
        // SAFETY: not NULL, valid for writing `bytes` bytes (caller's contract), no Rust
        // reference aliases it, bytes <= isize::MAX.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.cast::<u8>(), bytes) };
        let src = DevicePtr(src as usize as u64);
        Ok(backend::download(&*c.backend, out, src, s)?)
    })
}

fn check_len(bytes: usize) -> CResult {
    if bytes > isize::MAX as usize {
        return Err(Failure::invalid(format!(
            "byte count {bytes} is over isize::MAX ({})",
            isize::MAX
        )));
    }
    Ok(())
}

/// Creates a stream on the context's device (a `CUstream` on CUDA) into `*out`. Destroy it
/// with `vramswap_stream_destroy`. Besides NULL (the default stream), the streams made here
/// are the only ones this context's calls accept: a `CUstream` created elsewhere is
/// `VRAMSWAP_NOT_FOUND`.
///
/// # Safety
/// `ctx` is NULL or live; `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn vramswap_stream_create(
    ctx: *mut vramswap_context,
    out: *mut *mut c_void,
) -> vramswap_status {
    guarded("vramswap_stream_create", || {
        check_non_null(out, "out")?;
        // SAFETY: not NULL and valid for a pointer write (caller's contract).
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let c = unsafe { context(ctx) }?;
        let s = c.backend.stream_create()?;
        c.known_streams_mut().insert(s.0);
        // SAFETY: not NULL and valid for a pointer write (caller's contract).
        unsafe { out.write(std::ptr::without_provenance_mut(s.0 as usize)) };
        Ok(())
    })
}

/// Waits for the work on `stream` and destroys it. `stream` must come from
/// `vramswap_stream_create` on this context: NULL (the default stream) is
/// `VRAMSWAP_INVALID_ARGUMENT`; any other handle, a stream destroyed already included, is
/// `VRAMSWAP_NOT_FOUND`. When the wait or the destruction fails, the stream stays known to
/// the context and the call may be repeated.
///
/// # Safety
/// `ctx` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn vramswap_stream_destroy(
    ctx: *mut vramswap_context,
    stream: *mut c_void,
) -> vramswap_status {
    guarded("vramswap_stream_destroy", || {
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let c = unsafe { context(ctx) }?;
        if stream.is_null() {
            return Err(Failure::invalid("the default stream cannot be destroyed"));
        }
        let s = stream_arg(stream);
        // Taken out first: of two threads destroying one stream, only one reaches the driver.
        if !c.known_streams_mut().remove(&s.0) {
            return Err(unknown_stream(s));
        }
        let done = c.backend.stream_synchronize(s).and_then(|()| {
            // Its work is done: the allocator's blocks of `s` move to the default stream, so
            // that no later free or reuse names the destroyed stream.
            c.alloc.forget_stream(s);
            c.backend.stream_destroy(s)
        });
        if done.is_err() {
            c.known_streams_mut().insert(s.0);
        }
        Ok(done?)
    })
}
