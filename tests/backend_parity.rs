//! The `sim` backend and the backend under test (`VRAMSWAP_TEST_BACKEND`; in CI, `cuda` over
//! the emulated driver) fail the same misuses with the same driver error: any difference is a
//! bug in one of them. On `sim` alone the test compares the simulator with itself.

mod common;

use vramswap::backend::{sim::SimBackend, Backend, DevicePtr, Event, Stream};
use vramswap::Error;

/// What a result looks like from above the backend: `ok`, the driver's error name, or the
/// crate error kind.
fn sig<T>(r: vramswap::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(Error::Driver { name, .. }) => name,
        Err(other) => format!("{:?}", other.kind()),
    }
}

/// Runs each misuse on `b`, cleaning up after itself, and returns (case, outcome) pairs.
fn misuses(b: &dyn Backend) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let g = b.properties().vmm_granularity;
    let total = b.properties().total_memory;
    out.push(("alloc 0 bytes", sig(b.alloc(0))));
    out.push(("alloc past capacity", sig(b.alloc(total + 1))));
    // Below every simulated address (sim addresses are unique process-wide, so a fixed one
    // above the base could fall inside another test's allocation).
    out.push((
        "free unknown pointer",
        sig(b.free(DevicePtr(0x0dea_d000_0000))),
    ));
    let p = b.alloc(4096).unwrap();
    out.push(("free inside an allocation", sig(b.free(p.offset(512)))));
    b.free(p).unwrap();
    out.push(("double free", sig(b.free(p))));
    out.push((
        "non-granular physical size",
        sig(b.create_physical(g + 4096)),
    ));
    out.push(("non-granular reservation", sig(b.reserve(g + 4096))));
    let va = b.reserve(2 * g).unwrap();
    let h = b.create_physical(2 * g).unwrap();
    out.push(("misaligned map", sig(b.map(va.offset(4096), g, h))));
    b.map(va, 2 * g, h).unwrap();
    out.push(("partial unmap", sig(b.unmap(va, g))));
    out.push((
        "free mapped reservation",
        sig(b.free_reservation(va, 2 * g)),
    ));
    b.unmap(va, 2 * g).unwrap();
    out.push(("release handle", sig(b.release_physical(h))));
    out.push(("release handle twice", sig(b.release_physical(h))));
    let data = vec![1u8; 4096];
    // SAFETY: pageable source, so the copy is synchronous (and fails before reading).
    let r = unsafe { b.copy_htod_async(va, data.as_ptr(), 4096, Stream::DEFAULT) };
    out.push(("copy into unmapped range", sig(r)));
    b.free_reservation(va, 2 * g).unwrap();
    let mut buf = vec![0u8; 8192];
    // SAFETY: `buf` outlives its registration.
    unsafe {
        out.push((
            "unregister unregistered",
            sig(b.host_unregister(buf.as_mut_ptr())),
        ));
        b.host_register(buf.as_mut_ptr(), 8192, true).unwrap();
        out.push((
            "register twice",
            sig(b.host_register(buf.as_mut_ptr(), 8192, false)),
        ));
        let d = b.alloc(8192).unwrap();
        out.push((
            "device write to read-only host memory",
            sig(b.copy_dtoh_async(buf.as_mut_ptr(), d, 8192, Stream::DEFAULT)),
        ));
        b.free(d).unwrap();
        b.host_unregister(buf.as_mut_ptr()).unwrap();
    }
    let (e1, e2) = (
        b.event_create(false).unwrap(),
        b.event_create(false).unwrap(),
    );
    b.event_record(e1, Stream::DEFAULT).unwrap();
    b.event_record(e2, Stream::DEFAULT).unwrap();
    b.synchronize().unwrap();
    out.push((
        "elapsed time without timing",
        sig(b.event_elapsed_ms(e1, e2)),
    ));
    b.event_destroy(e1).unwrap();
    b.event_destroy(e2).unwrap();
    out.push(("destroy destroyed event", sig(b.event_destroy(e1))));
    out.push(("query unknown event", sig(b.event_query(Event(0x4242)))));
    // A made-up stream is not used: a backend cannot tell it from a stream another library
    // made (PyTorch's), so it goes to the driver, where it is undefined. Destroying one is
    // refused: only a backend's own streams are its to destroy.
    let s = b.stream_create().unwrap();
    b.stream_destroy(s).unwrap();
    out.push(("destroy destroyed stream", sig(b.stream_destroy(s))));
    out.push((
        "destroy unknown stream",
        sig(b.stream_destroy(Stream(0x4242))),
    ));
    out
}

/// Every handle misuse of [`misuses`] that the real driver would crash on (SIGSEGV on an H200,
/// driver 580, 2026-12-04: the Driver API leaves invalid handles undefined), as (case, misuse).
fn handle_misuses(b: &dyn Backend) -> Vec<(&'static str, vramswap::Result<()>)> {
    let g = b.properties().vmm_granularity;
    let mut out = Vec::new();
    let e = b.event_create(false).unwrap();
    b.event_destroy(e).unwrap();
    out.push(("destroy destroyed event", b.event_destroy(e)));
    out.push(("record destroyed event", b.event_record(e, Stream::DEFAULT)));
    out.push((
        "query unknown event",
        b.event_query(Event(0x4242)).map(|_| ()),
    ));
    out.push(("sync unknown event", b.event_synchronize(Event(0x4242))));
    out.push((
        "wait on unknown event",
        b.stream_wait_event(Stream::DEFAULT, Event(0x4242)),
    ));
    let h = b.create_physical(g).unwrap();
    b.release_physical(h).unwrap();
    out.push(("release handle twice", b.release_physical(h)));
    let va = b.reserve(g).unwrap();
    out.push(("map released handle", b.map(va, g, h)));
    b.free_reservation(va, g).unwrap();
    let s = b.stream_create().unwrap();
    b.stream_destroy(s).unwrap();
    out.push(("destroy destroyed stream", b.stream_destroy(s)));
    out
}

#[test]
fn handle_misuses_are_refused_before_the_driver_sees_them() {
    let tested = common::test_backend();
    let sim = SimBackend::with_capacity(tested.properties().total_memory);
    let want = handle_misuses(&sim);
    for ((case, r), (_, w)) in handle_misuses(tested.as_ref()).into_iter().zip(want) {
        let e = r.expect_err(case);
        let w = w.expect_err(case);
        assert_eq!(e.driver_name(), w.driver_name(), "{case}: {e}; sim: {w}");
        // On `cuda` the refusal is vramswap's own (the driver never saw the handle): the
        // emulated driver would answer too, but the real one crashes.
        if tested.kind() == vramswap::backend::BackendKind::Cuda {
            assert!(
                e.to_string().contains("before the driver sees it"),
                "{case}: the driver was called: {e}"
            );
        }
    }
    if let Some(dev) = tested.sim_device() {
        let leaks = dev.leaks();
        assert!(leaks.is_clean(), "{leaks:?}");
    }
}

#[test]
fn sim_and_the_backend_under_test_fail_misuses_alike() {
    let tested = common::test_backend();
    let sim = SimBackend::with_capacity(tested.properties().total_memory);
    let want = misuses(&sim);
    let got = misuses(tested.as_ref());
    let diff: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w.1 != g.1)
        .map(|(w, g)| format!("{}: sim {}, {} {}", w.0, w.1, tested.kind(), g.1))
        .collect();
    assert!(
        diff.is_empty(),
        "sim and {} differ:\n{}",
        tested.kind(),
        diff.join("\n")
    );
    // Every misuse is refused, apart from the first release of a valid handle.
    for (case, outcome) in &want {
        assert_eq!(
            outcome == "ok",
            *case == "release handle",
            "{case}: {outcome}"
        );
    }
}
