//! The events, physical allocations and streams this backend made and has not yet destroyed.
//!
//! The Driver API leaves an invalid handle undefined, and the real driver dereferences it: on
//! an H200 (driver 580, 2026-12-04) `tests/backend_parity.rs`, which destroys an event twice and
//! queries a made-up one, died with SIGSEGV where the emulated driver returned
//! `CUDA_ERROR_INVALID_HANDLE`. So every handle goes through this table before the driver sees
//! it, and a misuse is an [`Error::Driver`] named `CUDA_ERROR_INVALID_HANDLE`, as on `sim`.
//!
//! Events and physical allocations are only ever this backend's own, so an unknown one is
//! refused wherever it is used. Streams are different: a caller may pass a stream another
//! library made (PyTorch's current stream, recorded by `vramswap.torch`), which this table
//! cannot tell from a made-up value. An unknown stream is therefore passed to the driver as the
//! caller's own (keeping it valid is the caller's duty, as in CUDA), and only destroying one is
//! refused: a stream this backend did not make, or made and destroyed already, is not its to
//! destroy.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The kinds of handle the table keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// `CUstream`.
    Stream,
    /// `CUevent`.
    Event,
    /// `CUmemGenericAllocationHandle`.
    Physical,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Event => "event",
            Kind::Physical => "physical allocation handle",
        }
    }
}

/// The live handles, one set per kind.
#[derive(Debug, Default)]
pub(super) struct LiveHandles {
    streams: Mutex<HashSet<u64>>,
    events: Mutex<HashSet<u64>>,
    physical: Mutex<HashSet<u64>>,
}

/// The error a misused handle gets, as the simulator and the emulated driver answer it:
/// `CUDA_ERROR_INVALID_HANDLE` (400), except `cuMemRelease` of a handle that is not live,
/// `CUDA_ERROR_INVALID_VALUE` (1).
fn invalid(call: &'static str, kind: Kind, handle: u64) -> Error {
    let (code, name) = if call == "cuMemRelease" {
        (1, "CUDA_ERROR_INVALID_VALUE")
    } else {
        (400, "CUDA_ERROR_INVALID_HANDLE")
    };
    Error::Driver {
        call,
        code,
        name: name.into(),
        detail: format!(
            "{} {handle:#x} was not made by this backend, or was destroyed already; vramswap \
             refuses it before the driver sees it (the driver would read freed memory)",
            kind.noun()
        ),
    }
}

impl LiveHandles {
    fn set(&self, kind: Kind) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        let m = match kind {
            Kind::Stream => &self.streams,
            Kind::Event => &self.events,
            Kind::Physical => &self.physical,
        };
        // A panic while holding the lock cannot leave the set half-changed (one insert or
        // remove), so a poisoned lock is still sound to use.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a handle the driver just made.
    pub(super) fn insert(&self, kind: Kind, handle: u64) {
        self.set(kind).insert(handle);
    }

    /// Ok where `handle` may be given to `call`: a live event or physical handle; any stream
    /// (see the module documentation).
    pub(super) fn check(&self, call: &'static str, kind: Kind, handle: u64) -> Result<()> {
        if kind == Kind::Stream || self.set(kind).contains(&handle) {
            Ok(())
        } else {
            Err(invalid(call, kind, handle))
        }
    }

    /// Takes a handle out before `call` destroys it: refused where it is not live (for streams
    /// too: only this backend's own are its to destroy). Where the driver then fails to destroy
    /// it, [`LiveHandles::insert`] puts it back.
    pub(super) fn remove(&self, call: &'static str, kind: Kind, handle: u64) -> Result<()> {
        if self.set(kind).remove(&handle) {
            Ok(())
        } else {
            Err(invalid(call, kind, handle))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<()>) -> String {
        match r {
            Err(Error::Driver { name, code, .. }) => format!("{name} {code}"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn events_and_physical_handles_are_checked_wherever_used() {
        let t = LiveHandles::default();
        for kind in [Kind::Event, Kind::Physical] {
            assert_eq!(
                refused(t.check("cuEventQuery", kind, 0x4242)),
                "CUDA_ERROR_INVALID_HANDLE 400"
            );
            t.insert(kind, 0x10);
            t.check("cuEventQuery", kind, 0x10).unwrap();
            t.remove("cuEventDestroy_v2", kind, 0x10).unwrap();
            assert_eq!(
                refused(t.remove("cuEventDestroy_v2", kind, 0x10)),
                "CUDA_ERROR_INVALID_HANDLE 400"
            );
            t.insert(kind, 0x10);
            t.remove("cuMemRelease", kind, 0x10).unwrap();
            assert_eq!(
                refused(t.remove("cuMemRelease", kind, 0x10)),
                "CUDA_ERROR_INVALID_VALUE 1"
            );
            assert!(t.check("cuEventQuery", kind, 0x10).is_err());
        }
    }

    #[test]
    fn foreign_streams_pass_but_only_own_streams_are_destroyed() {
        let t = LiveHandles::default();
        t.check("cuStreamSynchronize", Kind::Stream, 0x7777)
            .unwrap();
        assert!(t
            .remove("cuStreamDestroy_v2", Kind::Stream, 0x7777)
            .is_err());
        t.insert(Kind::Stream, 0x20);
        t.remove("cuStreamDestroy_v2", Kind::Stream, 0x20).unwrap();
        assert!(t.remove("cuStreamDestroy_v2", Kind::Stream, 0x20).is_err());
    }

    #[test]
    fn the_error_names_the_call_and_the_handle() {
        let t = LiveHandles::default();
        let e = t.check("cuMemMap", Kind::Physical, 0xabc).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("cuMemMap") && s.contains("0xabc"), "{s}");
    }
}
