//! Streams and events of the simulated device.
//!
//! Each stream is a worker thread that runs its operations in order. Sequence numbers count the
//! operations submitted to a stream; `completed` says how many have finished. An event records
//! a point in a stream (its sequence number at the time), and is complete once the stream has
//! finished that many operations.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

use crate::error::SimError;

pub(crate) type Job = Box<dyn FnOnce() -> Result<(), SimError> + Send + 'static>;

pub(crate) struct Progress {
    /// Operations completed.
    pub(crate) completed: u64,
    /// The first asynchronous failure, reported by the next synchronise or query (errors of
    /// asynchronous work are sticky, as on CUDA).
    pub(crate) error: Option<SimError>,
}

pub(crate) struct StreamShared {
    pub(crate) progress: Mutex<Progress>,
    pub(crate) cond: Condvar,
}

impl StreamShared {
    pub(crate) fn completed(&self) -> u64 {
        self.progress
            .lock()
            .expect("stream progress lock")
            .completed
    }

    /// Blocks until `seq` operations have completed.
    pub(crate) fn wait_for(&self, seq: u64) {
        let mut p = self.progress.lock().expect("stream progress lock");
        while p.completed < seq {
            p = self.cond.wait(p).expect("stream progress lock");
        }
    }
}

pub(crate) struct Stream {
    /// Submission lock: holds the sequence number of the last submitted operation and the
    /// channel to the worker.
    pub(crate) submit: Mutex<Submit>,
    pub(crate) shared: Arc<StreamShared>,
    /// Legacy default-stream semantics: a blocking stream's work waits for the NULL stream and
    /// the NULL stream's work waits for all blocking streams.
    pub(crate) blocking: bool,
    worker: Mutex<Option<thread::JoinHandle<()>>>,
}

pub(crate) struct Submit {
    pub(crate) seq: u64,
    tx: Option<mpsc::Sender<(u64, Job)>>,
}

impl Submit {
    /// Queues `job` as operation number `seq` (the caller has already advanced `self.seq`).
    pub(crate) fn send(&self, seq: u64, job: Job) {
        if let Some(tx) = &self.tx {
            // The worker only exits when the sender is dropped, so this cannot fail.
            let _ = tx.send((seq, job));
        }
    }
}

impl Stream {
    pub(crate) fn new(id: u64, blocking: bool) -> Arc<Stream> {
        let (tx, rx) = mpsc::channel::<(u64, Job)>();
        let shared = Arc::new(StreamShared {
            progress: Mutex::new(Progress {
                completed: 0,
                error: None,
            }),
            cond: Condvar::new(),
        });
        let worker_shared = shared.clone();
        let worker = thread::Builder::new()
            .name(format!("sim-stream-{id}"))
            .spawn(move || {
                for (seq, job) in rx {
                    // A job that panics (a modelled time no `Duration` holds, a bug) fails its
                    // operation with a sticky error and the stream goes on: the operation is
                    // still counted complete, so no waiter is left blocked on it.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                        .unwrap_or_else(|panic| {
                            let why = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "a panic".into());
                            Err(SimError::InvalidValue(format!(
                                "stream {id}: operation #{seq} failed in the simulator: {why}"
                            )))
                        });
                    let mut p = worker_shared
                        .progress
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    if let Err(e) = result {
                        if p.error.is_none() {
                            p.error = Some(e);
                        }
                    }
                    p.completed = seq;
                    drop(p);
                    worker_shared.cond.notify_all();
                }
            })
            .expect("spawn stream worker");
        Arc::new(Stream {
            submit: Mutex::new(Submit {
                seq: 0,
                tx: Some(tx),
            }),
            shared,
            blocking,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Lets the worker finish the queued work and exit, without waiting for it (a destroyed
    /// stream's pending work still runs, as `cuStreamDestroy` documents).
    pub(crate) fn detach(&self) {
        self.submit.lock().expect("stream submit lock").tx = None;
        drop(self.worker.lock().expect("stream worker lock").take());
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.detach();
    }
}

/// A recorded point in a stream.
/// A point in a stream's queue: everything submitted to the stream up to the moment the mark
/// was taken ([`crate::SimDevice::work_mark`]). It stays meaningful after the stream is
/// destroyed, whose queued work still runs. The emulated driver uses it to tell whether work
/// that used a resource (a module's kernels) is still queued when the resource goes away.
#[derive(Clone)]
pub struct WorkMark {
    pub(crate) stream: Arc<StreamShared>,
    pub(crate) seq: u64,
}

impl WorkMark {
    /// Whether the stream has completed everything up to the mark.
    pub fn is_done(&self) -> bool {
        self.stream.completed() >= self.seq
    }
}

impl std::fmt::Debug for WorkMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkMark")
            .field("seq", &self.seq)
            .field("done", &self.is_done())
            .finish()
    }
}

#[derive(Clone)]
pub(crate) struct EventPoint {
    pub(crate) stream: Arc<StreamShared>,
    pub(crate) seq: u64,
    pub(crate) clock: crate::race::Clock,
}

pub(crate) struct EventState {
    pub(crate) point: Option<EventPoint>,
    /// When the marker operation of the latest record ran (for elapsed time).
    pub(crate) time: Arc<Mutex<Option<Instant>>>,
    pub(crate) timing: bool,
}

#[cfg(test)]
mod tests {
    use crate::{Bandwidth, SimConfig, SimDevice};

    /// A stream operation that panics in the simulator (here: a modelled transfer time of
    /// 6.4e31 seconds, which no `Duration` holds) fails with an error the next synchronize
    /// reports, instead of killing the worker and leaving the caller blocked forever.
    #[test]
    fn an_operation_that_panics_fails_instead_of_blocking_its_waiters() {
        let dev = SimDevice::new(SimConfig {
            bandwidth: Some(Bandwidth {
                h2d: 1e-30,
                ..Bandwidth::default()
            }),
            ..SimConfig::default()
        });
        let p = dev.alloc(64).unwrap();
        let s = dev.stream_create(true).unwrap();
        let buf = [7u8; 64];
        // SAFETY: `buf` outlives the synchronize below, which waits for the copy.
        let queued = unsafe { dev.copy_htod(p, buf.as_ptr(), 64, s) };
        assert!(queued.is_ok());
        let err = dev.stream_synchronize(s).unwrap_err().to_string();
        assert!(err.contains("failed in the simulator"), "{err}");
        dev.stream_destroy(s).unwrap();
        dev.free(p).unwrap();
    }
}
