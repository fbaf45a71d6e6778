//! The C ABI: `ffi/include/vramswap.h`, generated from this module by cbindgen.
//!
//! Conventions (those of rustls-ffi):
//!
//! - **Opaque handles.** [`vramswap_context`] (a backend, a [`CachingAllocator`] and a
//!   [`SwapEngine`] with the allocator attached) is created by `vramswap_context_create` and
//!   released by `vramswap_context_destroy`; [`vramswap_guard`] (a [`WeightGuard`]) by
//!   `vramswap_engine_acquire` and `vramswap_guard_release`. Both are generation-tagged
//!   slots of a handle table (`handles.rs`), not addresses: a destroyed context or released
//!   guard, used or released again, is `VRAMSWAP_INVALID_STATE`.
//! - **A status from every fallible call** ([`vramswap_status`]), results through
//!   out-parameters. Out-parameters are written only on success, except that `*_json` calls
//!   and `vramswap_guard_read_tensor` write `*needed` on `VRAMSWAP_BUFFER_TOO_SMALL` too, and
//!   pointer out-parameters are set to NULL first.
//! - **A thread-local last-error message** (`vramswap_last_error_message`), set by every call
//!   that fails and cleared by every fallible call on entry.
//! - **No panic crosses the boundary**: every entry point runs inside [`catch_unwind`]; a panic
//!   becomes `VRAMSWAP_PANIC` (or, for calls that return nothing, only the last-error message).
//! - **Every pointer is checked for NULL**; a double free or a pointer the allocator never
//!   handed out is a status, not undefined behaviour; sizes are checked for overflow.
//!
//! What cannot be checked: a pointer to fewer bytes than its length says, a string that is not
//! NUL-terminated.
//!
//! [`CachingAllocator`]: crate::alloc::CachingAllocator
//! [`SwapEngine`]: crate::swap::SwapEngine
//! [`WeightGuard`]: crate::swap::WeightGuard

// The C names are the API: `vramswap_context`, `VRAMSWAP_OK`.
#![allow(non_camel_case_types)]

mod context;
mod engine;
mod handles;
mod torch;

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Error, ErrorKind};

pub use context::*;
pub use engine::*;
pub use torch::*;

/// The result of every fallible call. `VRAMSWAP_OK` is zero; every other value is an error
/// class, with details in `vramswap_last_error_message()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum vramswap_status {
    /// Success.
    VRAMSWAP_OK = 0,
    /// An argument is out of range: a zero or overflowing size, a bad configuration string, an
    /// unknown backend kind.
    VRAMSWAP_INVALID_ARGUMENT = 1,
    /// A required pointer argument is NULL.
    VRAMSWAP_NULL_POINTER = 2,
    /// Device or allocator out of memory, or a device or host budget exceeded.
    VRAMSWAP_OUT_OF_MEMORY = 3,
    /// A named weight set or tensor, a device pointer or a stream is unknown (a pointer this
    /// context never handed out, a stream it may not use or destroy: see `vramswap_malloc`).
    VRAMSWAP_NOT_FOUND = 4,
    /// A weight set of that name is already registered.
    VRAMSWAP_ALREADY_EXISTS = 5,
    /// The operation conflicts with the current state: a double free, an offload of a set a
    /// guard holds.
    VRAMSWAP_INVALID_STATE = 6,
    /// The backend cannot be used here (no CUDA driver, no device).
    VRAMSWAP_BACKEND_UNAVAILABLE = 7,
    /// A CUDA driver call (or the simulated device's) failed.
    VRAMSWAP_DRIVER_ERROR = 8,
    /// A weights file is malformed.
    VRAMSWAP_MALFORMED_FILE = 9,
    /// An I/O error (for example a missing file).
    VRAMSWAP_IO = 10,
    /// Bytes read back do not match what was written.
    VRAMSWAP_CHECKSUM_MISMATCH = 11,
    /// The backend or build does not support the operation.
    VRAMSWAP_UNSUPPORTED = 12,
    /// The output buffer is too small; `*needed` holds the size required.
    VRAMSWAP_BUFFER_TOO_SMALL = 13,
    /// A string argument is not valid UTF-8.
    VRAMSWAP_INVALID_UTF8 = 14,
    /// An internal error: vramswap panicked. The message says where; the handle may be in an
    /// inconsistent state and is best destroyed.
    VRAMSWAP_PANIC = 15,
    /// A device ordinal the backend does not have (as `CUDA_ERROR_INVALID_DEVICE`): on `sim`,
    /// one at or above `VRAMSWAP_SIM_DEVICES` (default 1).
    VRAMSWAP_INVALID_DEVICE = 16,
    /// The shared host store (`VRAMSWAP_STORE`) cannot be reached or does not speak this
    /// library's protocol. Refusals of the store's own have the status of their class (a set of
    /// that name with other contents is `VRAMSWAP_ALREADY_EXISTS`).
    VRAMSWAP_STORE_ERROR = 17,
}

impl vramswap_status {
    /// Every status, in order of value.
    pub const ALL: [vramswap_status; 18] = [
        vramswap_status::VRAMSWAP_OK,
        vramswap_status::VRAMSWAP_INVALID_ARGUMENT,
        vramswap_status::VRAMSWAP_NULL_POINTER,
        vramswap_status::VRAMSWAP_OUT_OF_MEMORY,
        vramswap_status::VRAMSWAP_NOT_FOUND,
        vramswap_status::VRAMSWAP_ALREADY_EXISTS,
        vramswap_status::VRAMSWAP_INVALID_STATE,
        vramswap_status::VRAMSWAP_BACKEND_UNAVAILABLE,
        vramswap_status::VRAMSWAP_DRIVER_ERROR,
        vramswap_status::VRAMSWAP_MALFORMED_FILE,
        vramswap_status::VRAMSWAP_IO,
        vramswap_status::VRAMSWAP_CHECKSUM_MISMATCH,
        vramswap_status::VRAMSWAP_UNSUPPORTED,
        vramswap_status::VRAMSWAP_BUFFER_TOO_SMALL,
        vramswap_status::VRAMSWAP_INVALID_UTF8,
        vramswap_status::VRAMSWAP_PANIC,
        vramswap_status::VRAMSWAP_INVALID_DEVICE,
        vramswap_status::VRAMSWAP_STORE_ERROR,
    ];

    /// The status for an error class.
    pub fn from_kind(kind: ErrorKind) -> vramswap_status {
        use vramswap_status::*;
        match kind {
            ErrorKind::Driver => VRAMSWAP_DRIVER_ERROR,
            ErrorKind::OutOfMemory => VRAMSWAP_OUT_OF_MEMORY,
            ErrorKind::BackendUnavailable => VRAMSWAP_BACKEND_UNAVAILABLE,
            ErrorKind::InvalidArgument => VRAMSWAP_INVALID_ARGUMENT,
            ErrorKind::InvalidDevice => VRAMSWAP_INVALID_DEVICE,
            ErrorKind::Malformed => VRAMSWAP_MALFORMED_FILE,
            ErrorKind::Io => VRAMSWAP_IO,
            ErrorKind::NotFound => VRAMSWAP_NOT_FOUND,
            ErrorKind::AlreadyExists => VRAMSWAP_ALREADY_EXISTS,
            ErrorKind::InvalidState => VRAMSWAP_INVALID_STATE,
            ErrorKind::ChecksumMismatch => VRAMSWAP_CHECKSUM_MISMATCH,
            ErrorKind::Unsupported => VRAMSWAP_UNSUPPORTED,
            ErrorKind::Store => VRAMSWAP_STORE_ERROR,
        }
    }

    /// The constant's name, NUL-terminated (for `vramswap_status_name`).
    fn name_c(self) -> &'static CStr {
        use vramswap_status::*;
        match self {
            VRAMSWAP_OK => c"VRAMSWAP_OK",
            VRAMSWAP_INVALID_ARGUMENT => c"VRAMSWAP_INVALID_ARGUMENT",
            VRAMSWAP_NULL_POINTER => c"VRAMSWAP_NULL_POINTER",
            VRAMSWAP_OUT_OF_MEMORY => c"VRAMSWAP_OUT_OF_MEMORY",
            VRAMSWAP_NOT_FOUND => c"VRAMSWAP_NOT_FOUND",
            VRAMSWAP_ALREADY_EXISTS => c"VRAMSWAP_ALREADY_EXISTS",
            VRAMSWAP_INVALID_STATE => c"VRAMSWAP_INVALID_STATE",
            VRAMSWAP_BACKEND_UNAVAILABLE => c"VRAMSWAP_BACKEND_UNAVAILABLE",
            VRAMSWAP_DRIVER_ERROR => c"VRAMSWAP_DRIVER_ERROR",
            VRAMSWAP_MALFORMED_FILE => c"VRAMSWAP_MALFORMED_FILE",
            VRAMSWAP_IO => c"VRAMSWAP_IO",
            VRAMSWAP_CHECKSUM_MISMATCH => c"VRAMSWAP_CHECKSUM_MISMATCH",
            VRAMSWAP_UNSUPPORTED => c"VRAMSWAP_UNSUPPORTED",
            VRAMSWAP_BUFFER_TOO_SMALL => c"VRAMSWAP_BUFFER_TOO_SMALL",
            VRAMSWAP_INVALID_UTF8 => c"VRAMSWAP_INVALID_UTF8",
            VRAMSWAP_PANIC => c"VRAMSWAP_PANIC",
            VRAMSWAP_INVALID_DEVICE => c"VRAMSWAP_INVALID_DEVICE",
            VRAMSWAP_STORE_ERROR => c"VRAMSWAP_STORE_ERROR",
        }
    }
}

/// The numbers of the allocator's out-of-memory error, for `vramswap_last_error_oom`: what a
/// caller needs to decide whether to free cache, lower a batch size or give up.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct vramswap_oom_info {
    /// Bytes asked for (after rounding).
    pub requested: u64,
    /// Bytes in live blocks.
    pub allocated: u64,
    /// Bytes the allocator holds from the device (live blocks and its cache).
    pub reserved: u64,
    /// Bytes free on the device when the allocation failed.
    pub device_free: u64,
    /// The allocator's memory limit; `UINT64_MAX` when it has none.
    pub limit: u64,
    /// Reserved bytes that are free but in pieces too small for the request.
    pub fragmented: u64,
}

impl vramswap_oom_info {
    /// The numbers of `e` when it is the allocator's out-of-memory error.
    pub(crate) fn of(e: &Error) -> Option<vramswap_oom_info> {
        match *e {
            Error::AllocatorOutOfMemory {
                requested,
                allocated,
                reserved,
                device_free,
                limit,
                fragmented,
            } => Some(vramswap_oom_info {
                requested,
                allocated,
                reserved,
                device_free,
                limit: limit.unwrap_or(u64::MAX),
                fragmented,
            }),
            _ => None,
        }
    }
}

/// A failed call: its status, the message for `vramswap_last_error_message`, and the numbers
/// for `vramswap_last_error_oom` when it ran out of memory in the allocator.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: vramswap_status,
    pub(crate) message: String,
    pub(crate) oom: Option<vramswap_oom_info>,
}

impl Failure {
    pub(crate) fn new(status: vramswap_status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
            oom: None,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(vramswap_status::VRAMSWAP_INVALID_ARGUMENT, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure {
            oom: vramswap_oom_info::of(&e),
            ..Failure::new(vramswap_status::from_kind(e.kind()), e.to_string())
        }
    }
}

/// What the body of an entry point returns.
pub(crate) type CResult<T = ()> = Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static LAST_OOM: std::cell::Cell<Option<vramswap_oom_info>> = const { std::cell::Cell::new(None) };
}

pub(crate) fn set_last_error(message: &str) {
    // An interior NUL would end the C string early: show it instead.
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // `try_with`: during thread teardown the slot may be gone; the message is then lost.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = c);
}

fn clear_last_error() {
    let _ = LAST_OOM.try_with(|slot| slot.set(None));
    let _ = LAST_ERROR.try_with(|slot| {
        let mut s = slot.borrow_mut();
        if !s.as_bytes().is_empty() {
            *s = CString::default();
        }
    });
}

/// The message a panic carried, without panicking again.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    };
    // Dropping the payload runs arbitrary Drop code, which may itself panic.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    text
}

/// Runs the body of a fallible entry point: clears the last error, catches panics, and turns
/// the outcome into a status (setting the last-error message on failure).
pub(crate) fn guarded(call: &str, body: impl FnOnce() -> CResult) -> vramswap_status {
    clear_last_error();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => vramswap_status::VRAMSWAP_OK,
        Ok(Err(f)) => {
            set_last_error(&format!("{call}: {}", f.message));
            let _ = LAST_OOM.try_with(|slot| slot.set(f.oom));
            f.status
        }
        Err(payload) => {
            set_last_error(&format!(
                "{call}: internal error (panic): {}",
                panic_message(payload)
            ));
            vramswap_status::VRAMSWAP_PANIC
        }
    }
}

/// Like [`guarded`] for entry points that return a value instead of a status (`fallback` on
/// failure or panic; the last-error message says why).
pub(crate) fn guarded_value<T>(call: &str, fallback: T, body: impl FnOnce() -> CResult<T>) -> T {
    let mut out = None;
    let status = guarded(call, || {
        out = Some(body()?);
        Ok(())
    });
    match (status, out) {
        (vramswap_status::VRAMSWAP_OK, Some(v)) => v,
        _ => fallback,
    }
}

/// Fails with `VRAMSWAP_NULL_POINTER` when `p` is NULL.
pub(crate) fn check_non_null<T>(p: *const T, what: &str) -> CResult {
    if p.is_null() {
        Err(Failure::new(
            vramswap_status::VRAMSWAP_NULL_POINTER,
            format!("`{what}` is NULL"),
        ))
    } else {
        Ok(())
    }
}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p`, when not NULL, points to a NUL-terminated string that stays valid for `'a`.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> CResult<&'a str> {
    check_non_null(p, what)?;
    // SAFETY: `p` is not NULL, and the caller promises a NUL-terminated string valid for 'a.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|_| {
        Failure::new(
            vramswap_status::VRAMSWAP_INVALID_UTF8,
            format!("`{what}` is not valid UTF-8"),
        )
    })
}

/// Copies `text` and a terminating NUL into `buf` of `buf_len` bytes, writing the bytes
/// needed (text plus NUL) to `*needed` when `needed` is not NULL. `buf` may be NULL only when
/// `buf_len` is 0 (a size query, answered with `VRAMSWAP_BUFFER_TOO_SMALL`).
///
/// # Safety
/// `buf`, when not NULL, is valid for `buf_len` writable bytes; `needed`, when not NULL, is
/// valid for a `size_t` write.
pub(crate) unsafe fn write_text(
    text: &str,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> CResult {
    if buf.is_null() && buf_len != 0 {
        return Err(Failure::new(
            vramswap_status::VRAMSWAP_NULL_POINTER,
            format!("`buf` is NULL but `buf_len` is {buf_len}"),
        ));
    }
    let need = text.len() + 1;
    if !needed.is_null() {
        // SAFETY: not NULL, and the caller promises it is valid for a write.
        unsafe { needed.write(need) };
    }
    if buf_len < need {
        return Err(Failure::new(
            vramswap_status::VRAMSWAP_BUFFER_TOO_SMALL,
            format!("the text needs {need} bytes with its NUL, the buffer has {buf_len}"),
        ));
    }
    // SAFETY: `buf` is not NULL (buf_len >= need >= 1) and valid for buf_len >= need bytes;
    // `text` is a distinct Rust allocation, so the ranges do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        buf.add(text.len()).write(0);
    }
    Ok(())
}

/// Serializes `value` to JSON and writes it like [`write_text`].
///
/// # Safety
/// As for [`write_text`].
pub(crate) unsafe fn write_json<T: serde::Serialize>(
    value: &T,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> CResult {
    let text = serde_json::to_string(value)
        .map_err(|e| Failure::invalid(format!("cannot serialize to JSON: {e}")))?;
    // SAFETY: forwarded from the caller.
    unsafe { write_text(&text, buf, buf_len, needed) }
}

/// The message of the last call on this thread that failed, or an empty string when the last
/// fallible call succeeded. Never NULL. The text stays valid until the next vramswap call on
/// the same thread; copy it to keep it.
#[no_mangle]
pub extern "C" fn vramswap_last_error_message() -> *const c_char {
    catch_unwind(|| {
        LAST_ERROR
            .try_with(|slot| slot.borrow().as_ptr())
            .unwrap_or(c"".as_ptr())
    })
    .unwrap_or(c"".as_ptr())
}

/// When the last call on this thread that failed ran out of memory in the caching allocator
/// (`VRAMSWAP_OUT_OF_MEMORY` from `vramswap_malloc`, `vramswap_torch_malloc`, ...), writes its
/// numbers to `*out` and returns `VRAMSWAP_OK`; otherwise (the last call succeeded, or failed
/// another way) returns `VRAMSWAP_NOT_FOUND` and leaves `*out` alone. `VRAMSWAP_NULL_POINTER`
/// for a NULL `out`. Like `vramswap_last_error_message`, it does not itself reset the last
/// error.
///
/// # Safety
/// `out` is NULL or valid for writing one `vramswap_oom_info`.
#[no_mangle]
pub unsafe extern "C" fn vramswap_last_error_oom(out: *mut vramswap_oom_info) -> vramswap_status {
    catch_unwind(|| {
        if out.is_null() {
            return vramswap_status::VRAMSWAP_NULL_POINTER;
        }
        match LAST_OOM.try_with(|slot| slot.get()).ok().flatten() {
            Some(info) => {
                // SAFETY: `out` is non-NULL and valid for one write (caller's contract).
                unsafe { out.write(info) };
                vramswap_status::VRAMSWAP_OK
            }
            None => vramswap_status::VRAMSWAP_NOT_FOUND,
        }
    })
    .unwrap_or(vramswap_status::VRAMSWAP_PANIC)
}

/// The name of a status as a static NUL-terminated string, e.g. `"VRAMSWAP_NOT_FOUND"`;
/// `"VRAMSWAP_UNKNOWN_STATUS"` for a value that is no status. Never NULL.
#[no_mangle]
pub extern "C" fn vramswap_status_name(status: c_int) -> *const c_char {
    usize::try_from(status)
        .ok()
        .and_then(|i| vramswap_status::ALL.get(i))
        .map_or(c"VRAMSWAP_UNKNOWN_STATUS", |s| s.name_c())
        .as_ptr()
}

/// The version of the library, e.g. `"0.1.0"`, as a static NUL-terminated string.
#[no_mangle]
pub extern "C" fn vramswap_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: never NULL, NUL-terminated.
        unsafe { CStr::from_ptr(vramswap_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_in_an_entry_point_becomes_a_status_and_a_message() {
        let st = guarded("vramswap_test", || panic!("boom {}", 42));
        assert_eq!(st, vramswap_status::VRAMSWAP_PANIC);
        assert_eq!(last(), "vramswap_test: internal error (panic): boom 42");
        let v = guarded_value("vramswap_test", 7u8, || panic!("again"));
        assert_eq!(v, 7);
        assert!(last().contains("again"));
    }

    #[test]
    fn every_error_kind_has_its_own_status() {
        let kinds = [
            ErrorKind::Driver,
            ErrorKind::OutOfMemory,
            ErrorKind::BackendUnavailable,
            ErrorKind::InvalidArgument,
            ErrorKind::InvalidDevice,
            ErrorKind::Malformed,
            ErrorKind::Io,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::InvalidState,
            ErrorKind::ChecksumMismatch,
            ErrorKind::Unsupported,
        ];
        let mut seen: Vec<_> = kinds
            .iter()
            .map(|k| vramswap_status::from_kind(*k))
            .collect();
        assert!(!seen.contains(&vramswap_status::VRAMSWAP_OK));
        seen.sort_by_key(|s| *s as i32);
        seen.dedup();
        assert_eq!(seen.len(), kinds.len());
    }

    #[test]
    fn messages_with_interior_nuls_survive() {
        set_last_error("a\0b");
        assert_eq!(last(), "a\\0b");
    }
}
