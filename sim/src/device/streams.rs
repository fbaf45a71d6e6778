//! Streams and events of the simulated device, and the submission of work to a stream with
//! its accesses checked by the stream-ordering checker.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::SimDevice;
use crate::error::{SimError, SimResult};
use crate::race::Access;
use crate::stream::{EventPoint, EventState, Job, Stream, WorkMark};
use crate::{FaultOp, RaceMode};

impl SimDevice {
    // ----- streams and events ----------------------------------------------------------------

    pub(crate) fn stream(&self, id: u64) -> SimResult<Arc<Stream>> {
        self.inner
            .streams
            .read()
            .expect("streams lock")
            .get(&id)
            .cloned()
            .ok_or_else(|| SimError::InvalidHandle(format!("stream {id:#x} does not exist")))
    }

    /// Creates a stream (`cuStreamCreate`). A `blocking` stream synchronises with the NULL
    /// stream (id 0) as CUDA's legacy default stream does; pass `false` for
    /// `CU_STREAM_NON_BLOCKING`.
    pub fn stream_create(&self, blocking: bool) -> SimResult<u64> {
        self.fault(FaultOp::StreamCreate)?;
        let id = super::NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let s = Stream::new(id, blocking);
        self.inner
            .streams
            .write()
            .expect("streams lock")
            .insert(id, s);
        Ok(id)
    }

    /// Destroys a stream (`cuStreamDestroy`). Work already queued still runs.
    pub fn stream_destroy(&self, id: u64) -> SimResult<()> {
        if id == 0 {
            return Err(SimError::InvalidHandle(
                "the NULL stream cannot be destroyed".into(),
            ));
        }
        let s = self
            .inner
            .streams
            .write()
            .expect("streams lock")
            .remove(&id)
            .ok_or_else(|| SimError::InvalidHandle(format!("stream {id:#x} does not exist")))?;
        let last = s.submit.lock().expect("submit lock").seq;
        s.detach();
        // "In case the device is still doing work in the stream hStream when cuStreamDestroy()
        // is called, the function will return immediately and the resources associated with
        // hStream will be released automatically once the device has completed all work in
        // hStream" (cuStreamDestroy): the work still runs, and a device synchronisation still
        // waits for it.
        // Kept even when its work is already done: the host has not observed that yet, and the
        // next device synchronisation must order later work after it (the race checker's view).
        self.inner
            .retired
            .lock()
            .expect("retired lock")
            .push((id, s, last));
        Ok(())
    }

    /// Blocks the host until `stream` has completed `seq` operations, and records that the host
    /// has seen them complete (so later work is ordered after them).
    pub(crate) fn host_wait(&self, stream: u64, seq: u64) -> SimResult<()> {
        self.stream(stream)?.shared.wait_for(seq);
        let mut checker = self.inner.checker.lock().expect("checker lock");
        let clock = checker.clock_of(stream);
        checker.host_observed(&clock);
        Ok(())
    }

    /// A mark of everything submitted to `stream` so far (no device operation, no fault
    /// injection): [`WorkMark::is_done`] says later whether that work has completed.
    pub fn work_mark(&self, stream: u64) -> SimResult<WorkMark> {
        let s = self.stream(stream)?;
        let seq = s.submit.lock().expect("submit lock").seq;
        Ok(WorkMark {
            stream: s.shared.clone(),
            seq,
        })
    }

    /// Waits for all work queued on `stream` (`cuStreamSynchronize`).
    pub fn stream_synchronize(&self, stream: u64) -> SimResult<()> {
        let s = self.stream(stream)?;
        let seq = s.submit.lock().expect("submit lock").seq;
        self.host_wait(stream, seq)?;
        let err = s
            .shared
            .progress
            .lock()
            .expect("progress lock")
            .error
            .take();
        err.map_or(Ok(()), Err)
    }

    /// `Ok(true)` when all work on `stream` has completed (`cuStreamQuery`).
    pub fn stream_query(&self, stream: u64) -> SimResult<bool> {
        let s = self.stream(stream)?;
        let seq = s.submit.lock().expect("submit lock").seq;
        let mut p = s.shared.progress.lock().expect("progress lock");
        if let Some(e) = p.error.take() {
            return Err(e);
        }
        Ok(p.completed >= seq)
    }

    /// Waits for all work on all streams (`cuCtxSynchronize`).
    pub fn synchronize(&self) -> SimResult<()> {
        let ids: Vec<u64> = self
            .inner
            .streams
            .read()
            .expect("streams lock")
            .keys()
            .copied()
            .collect();
        let mut first = None;
        for id in ids {
            if let Err(e) = self.stream_synchronize(id) {
                if !matches!(e, SimError::InvalidHandle(_)) {
                    first.get_or_insert(e);
                }
            }
        }
        // "Blocks until the device has completed all preceding requested tasks"
        // (cuCtxSynchronize): destroyed streams' remaining work included.
        // Wait on a copy of the list: a concurrent caller must wait for the same streams, so
        // entries leave the list only once their work has completed.
        let retired: Vec<(u64, Arc<Stream>, u64)> =
            self.inner.retired.lock().expect("retired lock").clone();
        for (id, s, last) in &retired {
            s.shared.wait_for(*last);
            let mut checker = self.inner.checker.lock().expect("checker lock");
            let clock = checker.clock_of(*id);
            checker.host_observed(&clock);
        }
        self.inner
            .retired
            .lock()
            .expect("retired lock")
            .retain(|(id, _, _)| !retired.iter().any(|(r, _, _)| r == id));
        first.map_or(Ok(()), Err)
    }

    /// Creates an event (`cuEventCreate`); `timing` enables [`SimDevice::event_elapsed_ms`].
    pub fn event_create(&self, timing: bool) -> SimResult<u64> {
        self.fault(FaultOp::EventCreate)?;
        let id = super::NEXT_ID.fetch_add(1, Ordering::SeqCst);
        self.inner.events.lock().expect("events lock").insert(
            id,
            EventState {
                point: None,
                time: Arc::new(Mutex::new(None)),
                timing,
            },
        );
        Ok(id)
    }

    /// Destroys an event (`cuEventDestroy`).
    pub fn event_destroy(&self, event: u64) -> SimResult<()> {
        self.inner
            .events
            .lock()
            .expect("events lock")
            .remove(&event)
            .map(|_| ())
            .ok_or_else(|| SimError::InvalidHandle(format!("event {event:#x} does not exist")))
    }

    /// Records `event` at the current end of `stream` (`cuEventRecord`).
    pub fn event_record(&self, event: u64, stream: u64) -> SimResult<()> {
        if !self
            .inner
            .events
            .lock()
            .expect("events lock")
            .contains_key(&event)
        {
            return Err(SimError::InvalidHandle(format!(
                "event {event:#x} does not exist"
            )));
        }
        let fresh = Arc::new(Mutex::new(None::<Instant>));
        let marker = fresh.clone();
        let s = self.stream(stream)?;
        let seq = self.enqueue(
            stream,
            "cuEventRecord",
            Vec::new(),
            Box::new(move || {
                *marker.lock().expect("event time lock") = Some(Instant::now());
                Ok(())
            }),
        )?;
        let clock = self
            .inner
            .checker
            .lock()
            .expect("checker lock")
            .clock_of(stream);
        let mut ev = self.inner.events.lock().expect("events lock");
        if let Some(e) = ev.get_mut(&event) {
            e.point = Some(EventPoint {
                stream: s.shared.clone(),
                seq,
                clock,
            });
            e.time = fresh;
        }
        Ok(())
    }

    pub(crate) fn event_point(&self, event: u64) -> SimResult<Option<EventPoint>> {
        let ev = self.inner.events.lock().expect("events lock");
        let e = ev
            .get(&event)
            .ok_or_else(|| SimError::InvalidHandle(format!("event {event:#x} does not exist")))?;
        Ok(e.point.clone())
    }

    /// `Ok(true)` when the work before the event's latest record has completed, or it was never
    /// recorded (`cuEventQuery`).
    pub fn event_query(&self, event: u64) -> SimResult<bool> {
        Ok(match self.event_point(event)? {
            None => true,
            Some(p) => p.stream.completed() >= p.seq,
        })
    }

    /// Waits for the event's latest record to complete (`cuEventSynchronize`).
    pub fn event_synchronize(&self, event: u64) -> SimResult<()> {
        if let Some(p) = self.event_point(event)? {
            p.stream.wait_for(p.seq);
            self.inner
                .checker
                .lock()
                .expect("checker lock")
                .host_observed(&p.clock);
        }
        Ok(())
    }

    /// Makes future work on `stream` wait for the event's latest record (`cuStreamWaitEvent`).
    pub fn stream_wait_event(&self, stream: u64, event: u64) -> SimResult<()> {
        let point = self.event_point(event)?;
        let Some(p) = point else { return Ok(()) };
        let clock = p.clock.clone();
        let s = self.stream(stream)?;
        // Hold the submission lock so the wait is ordered with this stream's other work.
        let mut sub = s.submit.lock().expect("submit lock");
        self.inner
            .checker
            .lock()
            .expect("checker lock")
            .wait(stream, &clock);
        sub.seq += 1;
        let seq = sub.seq;
        sub.send(
            seq,
            Box::new(move || {
                p.stream.wait_for(p.seq);
                Ok(())
            }),
        );
        Ok(())
    }

    /// Milliseconds between two completed timing events (`cuEventElapsedTime`).
    pub fn event_elapsed_ms(&self, start: u64, end: u64) -> SimResult<f32> {
        let get = |id: u64| -> SimResult<Instant> {
            let ev = self.inner.events.lock().expect("events lock");
            let e = ev
                .get(&id)
                .ok_or_else(|| SimError::InvalidHandle(format!("event {id:#x} does not exist")))?;
            if !e.timing {
                return Err(SimError::InvalidHandle(format!(
                    "event {id:#x} was created with timing disabled"
                )));
            }
            if e.point.is_none() {
                return Err(SimError::InvalidHandle(format!(
                    "event {id:#x} was never recorded"
                )));
            }
            let t = *e.time.lock().expect("event time lock");
            t.ok_or(SimError::NotReady)
        };
        let (a, b) = (get(start)?, get(end)?);
        Ok(if b >= a {
            (b - a).as_secs_f32() * 1e3
        } else {
            -((a - b).as_secs_f32() * 1e3)
        })
    }

    /// Queues `job` on `stream` after checking its accesses; returns its sequence number.
    pub(crate) fn enqueue(
        &self,
        stream: u64,
        op: &'static str,
        accesses: Vec<Access>,
        job: Job,
    ) -> SimResult<u64> {
        let s = self.stream(stream)?;
        // Legacy default stream: the NULL stream waits for every blocking stream, and a blocking
        // stream waits for the NULL stream.
        // (id, stream, sequence number to wait for). The ids are taken here, with the streams
        // lock, so that lock is never wanted while a submit or the checker lock is held.
        let mut deps: Vec<(u64, Arc<Stream>, u64)> = Vec::new();
        if stream == 0 {
            for (id, other) in self.inner.streams.read().expect("streams lock").iter() {
                if *id != 0 && other.blocking {
                    let seq = other.submit.lock().expect("submit lock").seq;
                    deps.push((*id, other.clone(), seq));
                }
            }
        } else if s.blocking {
            let null = self.stream(0)?;
            let seq = null.submit.lock().expect("submit lock").seq;
            deps.push((0, null, seq));
        }
        let mut sub = s.submit.lock().expect("submit lock");
        let seq = sub.seq + 1;
        {
            let mut checker = self.inner.checker.lock().expect("checker lock");
            for (id, _, _) in &deps {
                let c = checker.clock_of(*id);
                checker.wait(stream, &c);
            }
            let found = checker.enqueue(stream, seq, op, &accesses);
            if self.inner.config.race_mode == RaceMode::Error && !found.is_empty() {
                let msg = found[0].message.clone();
                checker.forget_last(accesses.len());
                return Err(SimError::Race(msg));
            }
        }
        sub.seq = seq;
        let job: Job = if deps.is_empty() {
            job
        } else {
            let deps: Vec<_> = deps
                .into_iter()
                .map(|(_, d, n)| (d.shared.clone(), n))
                .collect();
            Box::new(move || {
                for (d, n) in deps {
                    d.wait_for(n);
                }
                job()
            })
        };
        sub.send(seq, job);
        Ok(seq)
    }
}
