//! Checks of using one backend from several threads. CUDA contexts are current per thread, so
//! a backend that binds its context only on the thread that opened it fails here (on a real
//! driver and on the emulated one alike) instead of in a swap engine's worker thread.

use super::{e, ensure, random};
use crate::backend::{self, Backend};

/// The backend opened on this thread works, unchanged, on threads it has never seen: memory,
/// streams, events and copies made on one thread are usable on another.
pub(super) fn backend_is_usable_from_any_thread(b: &dyn Backend) -> Result<(), String> {
    let len = 65536usize;
    let data = random(len, 11);
    // Made here, used on the workers below.
    let shared = b.alloc(len as u64).map_err(e)?;
    let r = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2u64)
            .map(|i| {
                let data = &data;
                scope.spawn(move || -> Result<(), String> {
                    let s = b.stream_create().map_err(e)?;
                    let r = (|| {
                        let own = b.alloc(len as u64).map_err(e)?;
                        let copied = (|| {
                            backend::upload(b, own, data, s).map_err(e)?;
                            if i == 0 {
                                b.copy_dtod_async(shared, own, len as u64, s).map_err(e)?;
                            }
                            b.stream_synchronize(s).map_err(e)?;
                            let mut out = vec![0u8; len];
                            backend::download(b, &mut out, own, s).map_err(e)?;
                            ensure(out == *data, || {
                                format!("worker {i}: bytes differ through its own allocation")
                            })
                        })();
                        b.free(own).map_err(e)?;
                        copied
                    })();
                    b.stream_destroy(s).map_err(e)?;
                    r
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("worker thread panicked".into()))
            })
            .collect::<Result<Vec<()>, String>>()
    });
    let checked = r.and_then(|_| {
        let mut out = vec![0u8; len];
        backend::download(b, &mut out, shared, backend::Stream::DEFAULT).map_err(e)?;
        ensure(out == data, || {
            "bytes a worker thread copied are not visible on the opening thread".into()
        })
    });
    b.free(shared).map_err(e)?;
    checked
}
