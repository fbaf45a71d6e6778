//! The engine's moves between states (`state.rs`): bringing sets to the device, eviction under
//! budgets and pressure (as `policy.rs` decides), uploads and offloads, and the idle-timeout
//! loop. Everything here runs under the engine's lock except loads from disk and waits for
//! copies.

use std::path::Path;
use std::sync::{Arc, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::layout::{group_checksums, pieces, Layout};
use super::policy;
use super::state::{Loaded, SetState};
use super::{DeviceSpace, Inner, Origin, State, WeightGuard};
use crate::alloc::CachingAllocator;
use crate::backend::Stream;
use crate::error::{Error, Result};
use crate::load::{self, LoadOptions};
use crate::transfer::{Direction, Transfer};
use crate::weights::HostWeights;

/// Clears a set's `busy` flag if the load that set it panics (a progress callback can), so
/// that other threads waiting on the set do not wait forever.
struct ClearBusyOnPanic<'a> {
    inner: &'a Inner,
    name: &'a str,
}

impl Drop for ClearBusyOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut st = self
                .inner
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(e) = st.sets.get_mut(self.name) {
                e.busy = false;
                e.last_error = Some("the load panicked".into());
            }
            self.inner.changed.notify_all();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Bring {
    Prefetch,
    Guard { wait: bool },
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("engine lock poisoned")
    }

    /// Locks, waiting until `name` is not busy.
    pub(super) fn wait_idle(&self, name: &str) -> Result<MutexGuard<'_, State>> {
        let mut st = self.lock();
        loop {
            if !st.entry(name)?.busy {
                return Ok(st);
            }
            st = self.changed.wait(st).expect("engine lock poisoned");
        }
    }

    /// Brings a set to the device; in guard mode returns a guard.
    pub(super) fn bring(self: &Arc<Self>, name: &str, mode: Bring) -> Result<Option<WeightGuard>> {
        let mut st = self.lock();
        loop {
            let e = st.entry(name)?;
            if e.busy {
                st = self.changed.wait(st).expect("engine lock poisoned");
                continue;
            }
            match &e.state {
                SetState::OnDisk => {
                    let Origin::Path(path, opts) = &e.origin else {
                        return Err(Error::InvalidState(format!(
                            "weight set `{name}` has no host copy and no source"
                        )));
                    };
                    let (path, opts) = (path.clone(), opts.clone());
                    e.busy = true;
                    drop(st);
                    let t = Instant::now();
                    let loaded = {
                        let _unwinding = ClearBusyOnPanic { inner: self, name };
                        self.load_or_attach(name, &path, &opts)
                    };
                    st = self.lock();
                    let e = st.entry(name)?;
                    e.busy = false;
                    self.changed.notify_all();
                    match loaded {
                        Ok((host, layout)) => {
                            e.bytes = layout.desc.total_bytes;
                            e.state = SetState::InHost(Loaded {
                                host: Arc::new(host),
                                layout: Arc::new(layout),
                            });
                            e.last_error = None;
                            if self.stored() {
                                st.counters.store_attaches += 1;
                            } else {
                                st.counters.loads += 1;
                            }
                            st.counters.last_load_ms = t.elapsed().as_secs_f64() * 1e3;
                        }
                        Err(err) => {
                            e.last_error = Some(err.to_string());
                            return Err(err);
                        }
                    }
                }
                SetState::InHost(_) => {
                    if let Err(err) = self.start_upload(&mut st, name) {
                        st.entry(name)?.last_error = Some(err.to_string());
                        return Err(err);
                    }
                }
                SetState::Uploading {
                    loaded, transfer, ..
                } => {
                    let Bring::Guard { wait } = mode else {
                        return Ok(None);
                    };
                    let (t, layout) = (transfer.clone(), loaded.layout.clone());
                    e.guards += 1;
                    st.touch(name);
                    if !wait {
                        drop(st);
                        return Ok(Some(self.guard(name, Some(t))?));
                    }
                    drop(st);
                    // Wait and verify without the lock (verification reads the device back).
                    let waited = t.wait();
                    let verified = match waited {
                        Ok(()) => verify_landed(&layout, &t),
                        Err(_) => Ok(()),
                    };
                    st = self.lock();
                    let finished =
                        waited.and_then(|_| self.finish_upload(&mut st, name, &t, verified, 1));
                    if let Err(err) = finished {
                        let e = st.entry(name)?;
                        e.guards -= 1;
                        e.last_error = Some(err.to_string());
                        self.changed.notify_all();
                        return Err(err);
                    }
                    let e = st.entry(name)?;
                    if !(e.resident() && matches!(e.state, SetState::OnDevice(_))) {
                        // Another thread's attempt failed and took the set back off the device
                        // while this one waited: give up this guard and start over.
                        e.guards -= 1;
                        self.changed.notify_all();
                        continue;
                    }
                    drop(st);
                    return Ok(Some(self.guard(name, None)?));
                }
                SetState::OnDevice(_) => {
                    let Bring::Guard { .. } = mode else {
                        return Ok(None);
                    };
                    e.guards += 1;
                    st.touch(name);
                    drop(st);
                    return Ok(Some(self.guard(name, None)?));
                }
                SetState::Downloading(_) => {
                    st = self.changed.wait(st).expect("engine lock poisoned");
                }
            }
        }
    }

    pub(super) fn guard(
        self: &Arc<Self>,
        name: &str,
        transfer: Option<Arc<Transfer>>,
    ) -> Result<WeightGuard> {
        let st = self.lock();
        let e = st.sets.get(name).ok_or_else(|| Error::NotFound {
            kind: "weight set",
            name: name.to_string(),
        })?;
        let Loaded { host, layout } = match &e.state {
            SetState::Uploading { loaded, .. } | SetState::OnDevice(loaded) => loaded.clone(),
            other => {
                return Err(Error::InvalidState(format!(
                    "weight set `{name}` is {:?}, not on the device",
                    other.residency()
                )))
            }
        };
        let Some(base) = e
            .space
            .as_ref()
            .filter(|s| s.is_backed())
            .and_then(|s| s.base())
        else {
            return Err(Error::InvalidState(format!(
                "weight set `{name}` has no device memory to guard"
            )));
        };
        let stable = e.space.as_ref().is_some_and(|s| s.stable());
        drop(st);
        Ok(WeightGuard::new(
            self.clone(),
            name.to_string(),
            base,
            layout,
            transfer,
            stable,
            host,
        ))
    }

    /// Loads a file into the arena, releasing least recently used idle host copies that can be
    /// reloaded when the host budget is in the way: first sets only in host memory, then idle
    /// sets on the device (offloaded, then released). Never a set held by a guard, being
    /// loaded, registered from memory, or holding device changes its source does not have.
    /// Whether host copies come from the shared host store.
    pub(super) fn stored(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.store.is_some();
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// A set's host copy: from the shared host store when the engine has one (which reads
    /// it from disk only if no process asked for it before), else loaded into the arena.
    fn load_or_attach(
        &self,
        name: &str,
        path: &Path,
        opts: &LoadOptions,
    ) -> Result<(HostWeights, Layout)> {
        #[cfg(target_os = "linux")]
        if let Some(store) = &self.store {
            loop {
                match store.attach(name, path, opts.cast, self.backend.clone()) {
                    Ok(host) => return self.with_layout(host),
                    // The store is full of sets its clients hold, some of them this engine's
                    // idle ones: let one go (as the arena's budget does) and ask again.
                    Err(e) if e.is_out_of_memory() => self.release_a_host_copy(e)?,
                    Err(e) => return Err(e),
                }
            }
        }
        let _ = name;
        self.load_with_room(path, opts)
    }

    /// A host copy with its layout under this engine's transfer settings.
    fn with_layout(&self, host: HostWeights) -> Result<(HostWeights, Layout)> {
        let layout = Layout::new(
            &host,
            self.config.transfer.chunk_bytes,
            self.config.transfer.verify,
        )?;
        Ok((host, layout))
    }

    /// Makes host room by releasing the host copy the policy picks (`policy::host_victim`),
    /// or fails with `full` (why room was needed) when there is none to release. The victim is
    /// clean, so its offload is an unmap with no copy; if that fails, so does this, and the set
    /// stays as it was.
    fn release_a_host_copy(&self, full: Error) -> Result<()> {
        let mut st = self.lock();
        let Some(v) = policy::host_victim(&st.facts(Instant::now())).map(str::to_string) else {
            return Err(full);
        };
        self.offload_locked(&mut st, &v)?;
        self.release_locked(&mut st, &v);
        Ok(())
    }

    pub(super) fn load_with_room(
        &self,
        path: &Path,
        opts: &LoadOptions,
    ) -> Result<(HostWeights, Layout)> {
        loop {
            match load::load(path, &self.arena, opts) {
                Ok(host) => return self.with_layout(host),
                Err(e @ Error::HostBudgetExceeded { .. }) => self.release_a_host_copy(e)?,
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) fn release_locked(&self, st: &mut State, name: &str) {
        if let Some(e) = st.sets.get_mut(name) {
            // A release of a set already released (nothing on the device or in host memory)
            // changes nothing and is not counted again.
            let held_memory = !matches!(e.state, SetState::OnDisk);
            e.host_modified = false;
            e.state = SetState::OnDisk;
            if held_memory {
                st.counters.releases += 1;
            }
        }
    }

    /// Offloads least recently used idle sets until `needed` more bytes fit the budget (or, with
    /// `ignore_budget`, until `needed` bytes were freed). Returns the bytes freed.
    pub(super) fn evict(
        &self,
        st: &mut State,
        needed: u64,
        except: &str,
        ignore_budget: bool,
    ) -> u64 {
        let mut freed = 0;
        loop {
            let fits = if ignore_budget {
                freed >= needed
            } else {
                match self.config.device_budget {
                    None => true,
                    Some(b) => st.device_used() + needed <= b,
                }
            };
            if fits {
                return freed;
            }
            let victim =
                policy::device_victim(&st.facts(Instant::now()), except).map(str::to_string);
            let Some(v) = victim else { return freed };
            let size = st.sets[&v].space.as_ref().map_or(0, |s| s.size());
            match self.offload_locked(st, &v) {
                Ok(()) => {
                    freed += size;
                    st.counters.evictions += 1;
                }
                Err(e) => {
                    tracing::warn!("evicting `{v}` failed: {e}");
                    if let Some(e2) = st.sets.get_mut(&v) {
                        e2.last_error = Some(e.to_string());
                    }
                    return freed;
                }
            }
        }
    }

    /// Asks attached allocators to return their unused cached memory; true if any freed some.
    pub(super) fn release_allocator_cache(&self) -> bool {
        let allocs: Vec<Arc<CachingAllocator>> = self
            .allocators
            .lock()
            .expect("allocators lock")
            .iter()
            .filter_map(|(w, _)| w.upgrade())
            .collect();
        let mut freed = false;
        for a in allocs {
            let before = a.stats().reserved_bytes.current;
            if a.empty_cache().is_ok() && a.stats().reserved_bytes.current < before {
                freed = true;
            }
        }
        freed
    }

    /// Offloads idle sets until `needed` bytes could be allocated on the device (counting what
    /// is already free); returns the bytes freed.
    pub(super) fn relieve(&self, needed: u64) -> u64 {
        let free = self.backend.mem_info().map_or(0, |m| m.free);
        let deficit = needed.saturating_sub(free);
        if deficit == 0 {
            return 0;
        }
        // The allocator calls its pressure handlers with its own lock released, and the engine
        // never allocates through the allocator while holding this lock, so waiting here cannot
        // deadlock; a `try_lock` would fail an allocation merely because another thread was
        // offloading at that moment.
        let mut st = self.lock();
        self.evict(&mut st, deficit, "", true)
    }

    /// Backs device memory for an in-host set and queues the upload.
    pub(super) fn start_upload(&self, st: &mut State, name: &str) -> Result<()> {
        let b = self.backend.as_ref();
        let (loaded, has_space) = {
            let e = st.entry(name)?;
            let SetState::InHost(loaded) = &e.state else {
                return Err(Error::InvalidState(format!(
                    "weight set `{name}` is {:?}, not in host memory only",
                    e.state.residency()
                )));
            };
            (loaded.clone(), e.space.is_some())
        };
        let bytes = loaded.layout.desc.total_bytes;
        if !has_space {
            let space = DeviceSpace::new(b, bytes, self.vmm)?;
            st.entry(name)?.space = Some(space);
        }
        let need = st.sets[name].space.as_ref().map_or(0, |s| s.size());
        if let Some(budget) = self.config.device_budget {
            self.evict(st, need, name, false);
            let used = st.device_used();
            if used + need > budget {
                let pinned: u64 = st
                    .sets
                    .values()
                    .filter(|e| e.resident() && !e.evictable())
                    .map(|e| e.space.as_ref().map_or(0, |s| s.size()))
                    .sum();
                return Err(Error::DeviceBudgetExceeded {
                    requested: need,
                    pinned,
                    budget,
                });
            }
        }
        // Back the range, evicting idle sets while the device itself is out of memory.
        let base = loop {
            let e = st.entry(name)?;
            let Some(space) = e.space.as_mut() else {
                return Err(Error::InvalidState(format!(
                    "weight set `{name}` lost its device range while it was being backed"
                )));
            };
            let r = space.back(b);
            match r {
                Ok(p) => break p,
                Err(err) if err.is_out_of_memory() => {
                    if self.release_allocator_cache() {
                        continue;
                    }
                    if self.evict(st, need, name, true) == 0 {
                        st.entry(name)?.last_error = Some(err.to_string());
                        return Err(err);
                    }
                }
                Err(err) => {
                    st.entry(name)?.last_error = Some(err.to_string());
                    return Err(err);
                }
            }
        };
        let e = st.entry(name)?;
        // SAFETY: the host copy is kept alive by the entry's state until the transfer is
        // dropped (the transfer lives in the same state, and every change of state drops it
        // with or before the host copy), and nothing writes it meanwhile.
        let started = unsafe {
            self.copy.start(
                Direction::HostToDevice,
                &pieces(&loaded.host),
                base,
                &loaded.layout.plan,
            )
        };
        match started {
            Ok(t) => {
                e.state = SetState::Uploading {
                    loaded,
                    transfer: Arc::new(t),
                    started: Instant::now(),
                };
                e.dirty = false;
                // A set just brought in (a prefetch too) is the most recently used: neither
                // the idle offloader nor LRU eviction should take it straight back out.
                st.touch(name);
                Ok(())
            }
            Err(err) => {
                // Never half-valid: the partly written range goes back to the device.
                if let Some(space) = e.space.as_mut() {
                    let _ = space.unback(b);
                }
                e.last_error = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Marks an upload complete after its transfer was waited for, given what
    /// [`verify_landed`] found (computed without the lock); `held` is how many of the set's
    /// guards the caller holds.
    pub(super) fn finish_upload(
        &self,
        st: &mut State,
        name: &str,
        t: &Arc<Transfer>,
        verified: Result<()>,
        held: usize,
    ) -> Result<()> {
        let b = self.backend.as_ref();
        let e = st.entry(name)?;
        let (layout, started) = match &e.state {
            SetState::Uploading {
                loaded,
                transfer,
                started,
            } if Arc::ptr_eq(transfer, t) => (loaded.layout.clone(), *started),
            _ => return Ok(()), // another thread finished it
        };
        // A set changed on the device under a streaming guard (marked dirty) differs from its
        // host copy on purpose: there is nothing to verify it against, and discarding it would
        // lose the change.
        if let (Err(err), false) = (verified, e.dirty) {
            // With no guard but the caller's, the bad copy goes: the set returns to host
            // memory and the next acquire uploads it afresh (after the work recorded on user
            // streams, as an offload). With other guards (streaming acquires), the range must
            // stay mapped under them: the set stays `Uploading` with this transfer, so every
            // acquire fails verification until the last guard is gone and the copy can go.
            if e.guards <= held && sync_uses(b, &mut e.uses).is_ok() {
                if let Some(space) = e.space.as_mut() {
                    let _ = space.unback(b);
                }
                // An unback that failed before unmapping leaves the bad copy mapped: the set
                // stays `Uploading` with its transfer (an `Uploading` set always has one), and
                // the next acquire tries again.
                if !e.resident() {
                    e.state.become_(SetState::InHost);
                }
            }
            return Err(err);
        }
        let elapsed = t
            .elapsed_ms()
            .ok()
            .flatten()
            .and_then(|ms| Duration::try_from_secs_f64(ms as f64 / 1e3).ok())
            .unwrap_or_else(|| started.elapsed());
        e.state.become_(SetState::OnDevice);
        st.counters.swap_in(layout.desc.total_bytes, elapsed);
        Ok(())
    }

    /// Takes a set off the device (copying it back first if dirty). No-op if not resident.
    pub(super) fn offload_locked(&self, st: &mut State, name: &str) -> Result<()> {
        let b = self.backend.as_ref();
        let e = st.entry(name)?;
        if !e.resident() {
            return Ok(());
        }
        let t0 = Instant::now();
        if let Some(t) = e.state.transfer().cloned() {
            // An upload nobody waited for (a prefetch, or a streaming acquire whose guard was
            // dropped early): let it land before unmapping, and finish it so that it is
            // counted. Not verified: the device copy is about to go (or, dirty, to be copied
            // back as it is now). On a wait error the set stays as it was (uploading, its
            // transfer kept).
            t.wait()?;
            self.finish_upload(st, name, &t, Ok(()), 0)?;
        }
        let e = st.entry(name)?;
        // Work recorded on user streams must finish before the range is unmapped; an event
        // that fails to synchronise stays recorded (and the set resident).
        sync_uses(b, &mut e.uses)?;
        let mut copied = 0;
        if e.dirty {
            let Some(Loaded { host, layout }) = e.state.loaded().cloned() else {
                return Err(Error::InvalidState(format!(
                    "weight set `{name}` changed on the device has no host copy to go back to"
                )));
            };
            e.state.become_(SetState::Downloading);
            // Resident (checked above), so the range is there and backed.
            let Some(base) = e.space.as_ref().and_then(|s| s.base()) else {
                e.state.become_(SetState::OnDevice);
                return Err(Error::InvalidState(format!(
                    "weight set `{name}` has no device range to copy back from"
                )));
            };
            // SAFETY: no guard holds the set, so nothing reads the host copy while the device
            // writes it; the transfer is waited for before `host` can go away.
            let r = unsafe {
                self.copy
                    .start(Direction::DeviceToHost, &pieces(&host), base, &layout.plan)
            }
            .and_then(|t| t.wait());
            if let Err(err) = r {
                // The device copy is still good; keep the set resident and dirty.
                e.state.become_(SetState::OnDevice);
                e.last_error = Some(err.to_string());
                return Err(err);
            }
            copied = layout.desc.total_bytes;
            e.dirty = false;
            e.host_modified = true;
            if layout.checksums.is_some() {
                // The host copy changed: later verified swap-ins compare against its new sums.
                let fresh = Arc::new(Layout {
                    desc: layout.desc.clone(),
                    plan: layout.plan.clone(),
                    checksums: Some(group_checksums(&host, &layout.plan.groups)),
                });
                if let Some(l) = e.state.loaded_mut() {
                    l.layout = fresh;
                }
            }
        }
        let unbacked = match e.space.as_mut() {
            Some(space) => space.unback(b),
            None => Ok(()), // not resident: nothing to unmap (checked above)
        };
        if let Err(err) = unbacked {
            // `unback` fails either before unmapping (still resident: `OnDevice`, also after a
            // dirty copy-back, which set `Downloading`) or after (the range is no longer
            // backed, whatever leaked in the driver: `InHost`). The state follows what is
            // mapped, so no guard is ever handed out over unmapped memory and nobody waits on
            // a `Downloading` that will not end.
            e.state.become_(if e.resident() {
                SetState::OnDevice
            } else {
                SetState::InHost
            });
            e.last_error = Some(err.to_string());
            self.changed.notify_all();
            return Err(err);
        }
        e.state.become_(SetState::InHost);
        st.counters.swap_out(copied, t0.elapsed());
        self.changed.notify_all();
        Ok(())
    }

    pub(super) fn release_guard(&self, name: &str) {
        let mut st = self.lock();
        let mut done = None;
        if let Some(e) = st.sets.get_mut(name) {
            e.guards = e.guards.saturating_sub(1);
            // The last guard of a streaming acquire: if its upload has landed, finish it now
            // (verify, count, mark `OnDevice`) rather than leave the set `Uploading` until the
            // next acquire or offload. One still in flight is finished by whoever waits next.
            if let (
                0,
                SetState::Uploading {
                    loaded, transfer, ..
                },
            ) = (e.guards, &e.state)
            {
                done = Some(transfer.clone())
                    .filter(|t| t.is_complete().unwrap_or(false))
                    .map(|t| (t, loaded.layout.clone()));
            }
        }
        if let Some((t, layout)) = done {
            // Verify without the lock (it reads the device back); `finish_upload` re-checks
            // that the set still waits on this transfer.
            drop(st);
            let verified = verify_landed(&layout, &t);
            st = self.lock();
            if let Err(err) = self.finish_upload(&mut st, name, &t, verified, 0) {
                tracing::warn!("swap-in of `{name}` failed verification: {err}");
                if let Some(e) = st.sets.get_mut(name) {
                    e.last_error = Some(err.to_string());
                }
            }
        }
        st.touch(name);
        self.changed.notify_all();
    }

    pub(super) fn record_use(&self, name: &str, stream: Stream) -> Result<()> {
        let ev = self.backend.event_create(false)?;
        if let Err(e) = self.backend.event_record(ev, stream) {
            let _ = self.backend.event_destroy(ev);
            return Err(e);
        }
        let mut st = self.lock();
        let e = st.entry(name)?;
        // Keep only uses still in flight: a set that stays resident for many batches would
        // otherwise collect an event per batch.
        let b = self.backend.as_ref();
        e.uses.retain(|&old| {
            if b.event_query(old).unwrap_or(false) {
                let _ = b.event_destroy(old);
                false
            } else {
                true
            }
        });
        e.uses.push(ev);
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (w, id) in self
            .allocators
            .get_mut()
            .expect("allocators lock")
            .drain(..)
        {
            if let Some(a) = w.upgrade() {
                a.remove_pressure_handler(id);
            }
        }
        let b = self.backend.clone();
        let st = self.state.get_mut().expect("engine lock poisoned");
        for (_, mut e) in std::mem::take(&mut st.sets) {
            e.state = SetState::OnDisk; // drops an upload's transfer before its range goes
            for ev in e.uses.drain(..) {
                let _ = b.event_synchronize(ev);
                let _ = b.event_destroy(ev);
            }
            if let Some(mut space) = e.space.take() {
                let _ = space.destroy(b.as_ref());
            }
        }
    }
}

/// Checks a landed upload against the host copy's checksums, when the set keeps them (the
/// `verify` setting). Reads the device: call it without the engine's lock.
fn verify_landed(layout: &Layout, t: &Transfer) -> Result<()> {
    match &layout.checksums {
        Some(sums) => t.verify(sums, Stream::DEFAULT),
        None => Ok(()),
    }
}

/// Waits for the work recorded on user streams (`record_stream`) before a range is unmapped.
/// An event that fails to synchronise stays recorded, and the error says the range must stay.
fn sync_uses(b: &dyn crate::backend::Backend, uses: &mut Vec<crate::backend::Event>) -> Result<()> {
    while let Some(&ev) = uses.first() {
        b.event_synchronize(ev)?;
        uses.remove(0);
        let _ = b.event_destroy(ev);
    }
    Ok(())
}

pub(super) fn idle_loop(weak: Weak<Inner>, timeout: Duration) {
    let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let Some(inner) = weak.upgrade() else { return };
        {
            let stop = inner.stop.lock().expect("stop lock");
            if *stop {
                return;
            }
            let (stop, _) = inner.stop_cv.wait_timeout(stop, tick).expect("stop lock");
            if *stop {
                return;
            }
        }
        let mut st = inner.lock();
        let now = Instant::now();
        let idle: Vec<String> = policy::idle_sets(&st.facts(now), Some(timeout))
            .into_iter()
            .map(str::to_string)
            .collect();
        for n in idle {
            if let Err(e) = inner.offload_locked(&mut st, &n) {
                tracing::warn!("idle offload of `{n}` failed: {e}");
            }
        }
    }
}
