//! The shared host store across processes, as a user runs it: `vramswap store serve` in one
//! process, engines in others (`VRAMSWAP_STORE`), killed at awkward moments. Each test reads as
//! one promise of the store's (issue 22).
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::store::{exe, Store};
use vramswap::backend::sim::SimBackend;
use vramswap::store::{StoreClient, PROTOCOL_VERSION};
use vramswap::swap::{SwapConfig, SwapEngine};
use vramswap::weights::DType;
use vramswap::ErrorKind;

/// A worker process: an engine on its own simulated device that acquires one set.
struct Worker {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Worker {
    fn spawn(path: &Path, store: Option<&Path>, hold: bool) -> Worker {
        let mut cmd = Command::new(exe());
        cmd.args(["store", "worker", "--path"])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(s) = store {
            cmd.arg("--store").arg(s);
        }
        if hold {
            cmd.arg("--hold");
        }
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Worker { child, out }
    }

    /// Starts a worker and waits for it to acquire its set; returns it and the checksum it read
    /// back from its device.
    fn acquired(path: &Path, store: Option<&Path>, hold: bool) -> (Worker, String) {
        let mut w = Worker::spawn(path, store, hold);
        let line = w.line();
        let sum = line
            .strip_prefix("acquired ")
            .unwrap_or_else(|| panic!("worker said `{line}`: {}", w.stderr()))
            .to_string();
        (w, sum)
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).unwrap();
        s.trim().to_string()
    }

    fn stderr(&mut self) -> String {
        let _ = self.child.kill();
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    fn check_host(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "check").unwrap();
        stdin.flush().unwrap();
        self.line()
    }

    fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "worker failed: {status:?}");
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// PSS of its mappings of the store's shared memory, bytes.
    fn shared_pss(&self) -> u64 {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.child.id())).unwrap();
        let mut inside = false;
        let mut kb = 0;
        for l in smaps.lines() {
            let first = l.split_whitespace().next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                inside = l.contains("memfd:vramswap:");
            } else if inside && first == "Pss:" {
                kb += l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
            }
        }
        kb << 10
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A checkpoint of `tensors` F16 tensors of `kib` KiB each, bytes seeded by `seed`.
fn checkpoint(dir: &Path, name: &str, tensors: usize, kib: u64, seed: u8) -> PathBuf {
    let path = dir.join(name);
    let n = kib << 10;
    let data: Vec<Vec<u8>> = (0..tensors)
        .map(|t| {
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(t as u8 ^ seed))
                .collect()
        })
        .collect();
    let names: Vec<String> = (0..tensors)
        .map(|t| format!("model.layers.{t}.mlp.weight"))
        .collect();
    let shape = [n / 2];
    let list: Vec<(&str, DType, &[u64], &[u8])> = names
        .iter()
        .zip(&data)
        .map(|(name, d)| (name.as_str(), DType::F16, &shape[..], &d[..]))
        .collect();
    vramswap::load::save(&path, &list).unwrap();
    path
}

/// A store whose budget (2600 KiB) holds two of three 1 MiB sets `m0`..`m2` (bytes seeded from
/// `seed`), and an engine over it with the three registered.
fn three_sets_over_a_budget_for_two(dir: &Path, seed: u8) -> (Store, SwapEngine) {
    let store = Store::start(dir, &["--host-budget", "2600KiB"]);
    let e = engine(&store.socket);
    for i in 0..3u8 {
        let path = checkpoint(dir, &format!("m{i}.safetensors"), 1, 1024, seed + i);
        e.register_path(&format!("m{i}"), &path, Default::default())
            .unwrap();
    }
    (store, e)
}

fn engine(store: &Path) -> SwapEngine {
    SwapEngine::new(
        Arc::new(SimBackend::with_capacity(256 << 20)),
        SwapConfig {
            store: Some(store.to_path_buf()),
            ..SwapConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn several_processes_read_the_disk_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path(), "m.safetensors", 4, 256, 1);
    let store = Store::start(dir.path(), &[]);
    let (_, alone) = Worker::acquired(&path, None, false);
    let mut sums = Vec::new();
    for _ in 0..3 {
        let (w, sum) = Worker::acquired(&path, Some(&store.socket), false);
        sums.push(sum);
        w.finish();
    }
    assert!(sums.iter().all(|s| *s == alone), "{sums:?} vs {alone}");
    let s = store.wait_for("workers gone", |s| s.sets[0].clients == 0);
    assert_eq!(s.counters.loads, 1, "{s:?}");
    assert_eq!(s.counters.attaches, 2, "{s:?}");
    assert_eq!(s.sets.len(), 1);
    assert_eq!(s.host_used, s.sets[0].bytes);
}

#[test]
fn two_processes_attached_at_once_share_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path(), "m.safetensors", 8, 1024, 2);
    let store = Store::start(dir.path(), &[]);
    let (mut a, sa) = Worker::acquired(&path, Some(&store.socket), true);
    let (mut b, sb) = Worker::acquired(&path, Some(&store.socket), true);
    assert_eq!(sa, sb);
    let s = store.status();
    assert_eq!(s.sets[0].clients, 2);
    let bytes = s.sets[0].bytes;
    assert_eq!(s.host_used, bytes, "one copy in the store");
    // Each process is charged half of the one copy (PSS splits shared pages).
    for w in [&a, &b] {
        let pss = w.shared_pss() as f64;
        assert!(
            (pss - bytes as f64 / 2.0).abs() < bytes as f64 * 0.1,
            "PSS {pss} of a {bytes}-byte set shared by two"
        );
    }
    // Both read the same host bytes.
    assert_eq!(a.check_host(), b.check_host());
    a.finish();
    b.finish();
}

#[test]
fn a_client_killed_holding_a_guard_stops_counting_and_the_set_stays_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path(), "m.safetensors", 4, 256, 3);
    let store = Store::start(dir.path(), &[]);
    let (w, sum) = Worker::acquired(&path, Some(&store.socket), true);
    assert_eq!(store.status().sets[0].clients, 1);
    w.kill();
    store.wait_for("the killed client stops counting", |s| {
        s.sets[0].clients == 0
    });
    let (w2, sum2) = Worker::acquired(&path, Some(&store.socket), false);
    assert_eq!(sum, sum2);
    w2.finish();
    let s = store.status();
    assert_eq!((s.counters.loads, s.counters.attaches), (1, 1), "{s:?}");
}

#[test]
fn a_client_killed_in_the_middle_of_a_load_leaves_the_store_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path(), "m.safetensors", 4, 1024, 4);
    let (_, alone) = Worker::acquired(&path, None, false);
    // The store pauses before each load's copy: the client dies while its set loads.
    let store = Store::start(dir.path(), &["--load-delay-ms", "1500"]);
    let w = Worker::spawn(&path, Some(&store.socket), false);
    let s = store.wait_for("the load starts", |s| !s.sets.is_empty());
    assert_eq!(s.sets[0].phase, "loading", "{s:?}");
    w.kill();
    // The store finishes (or discards) the load; it never serves a half-done one, and the dead
    // client does not count.
    let s = store.wait_for("no load in flight, no client", |s| {
        s.sets.iter().all(|x| x.phase == "ready" && x.clients == 0)
    });
    assert!(s.counters.loads + s.counters.discarded == 1, "{s:?}");
    let (w2, sum) = Worker::acquired(&path, Some(&store.socket), false);
    assert_eq!(sum, alone, "the bytes served are the checkpoint's");
    w2.finish();
}

#[test]
fn the_store_killed_under_clients_leaves_their_memory_valid_and_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path(), "m.safetensors", 4, 256, 5);
    let mut store = Store::start(dir.path(), &[]);
    let (mut w, _) = Worker::acquired(&path, Some(&store.socket), true);
    let before = w.check_host();
    assert!(before.starts_with("host 0x"), "{before}");
    let here = engine(&store.socket);
    here.register_path("m", &path, Default::default()).unwrap();
    let bytes = here
        .acquire("m")
        .unwrap()
        .read_tensor("model.layers.0.mlp.weight")
        .unwrap();
    here.offload("m").unwrap();
    store.signal(rustix::process::Signal::KILL);
    store.child.wait().unwrap();
    // What the worker mapped is still there, byte for byte.
    assert_eq!(w.check_host(), before);
    w.finish();
    // An engine of this process swaps its set in again from the memory it mapped...
    let again = here
        .acquire("m")
        .unwrap()
        .read_tensor("model.layers.0.mlp.weight")
        .unwrap();
    assert_eq!(again, bytes);
    // ...and its next store call is a clear error.
    let err = here
        .register_arrays(
            "x",
            vec![("x".into(), DType::U8, vec![4], &[1, 2, 3, 4][..])],
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    // A new client gets a clear error at its first store call.
    let e = SwapEngine::new(
        Arc::new(SimBackend::with_capacity(64 << 20)),
        SwapConfig {
            store: Some(store.socket.clone()),
            ..SwapConfig::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Store);
    let msg = e.to_string();
    assert!(
        msg.contains("cannot connect") && msg.contains("vramswap store serve"),
        "{msg}"
    );
    // A restarted store (the stale socket file replaced) starts empty.
    let again = Store::start(dir.path(), &[]);
    assert!(again.status().sets.is_empty());
}

#[test]
fn serve_exits_with_status_0_on_sigterm_and_sigint_and_removes_its_socket() {
    for sig in [rustix::process::Signal::TERM, rustix::process::Signal::INT] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::start(dir.path(), &[]);
        store.signal(sig);
        let status = store.child.wait().unwrap();
        assert!(status.success(), "{sig:?}: {status:?}");
        assert!(!store.socket.exists(), "{sig:?}: the socket is removed");
    }
}

#[test]
fn status_reports_use_budget_sets_and_counters_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path(), "m.safetensors", 2, 64, 6);
    let store = Store::start(dir.path(), &["--host-budget", "8MiB"]);
    let (w, _) = Worker::acquired(&path, Some(&store.socket), true);
    let out = Command::new(exe())
        .args(["store", "status", "--json", "--socket"])
        .arg(&store.socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["host_budget"], 8 << 20);
    assert_eq!(v["host_used"], v["sets"][0]["bytes"]);
    assert_eq!(v["sets"][0]["name"], "model");
    assert_eq!(v["sets"][0]["clients"], 1);
    assert_eq!(v["counters"]["loads"], 1);
    assert_eq!(v["counters"]["attaches"], 0);
    assert_eq!(v["counters"]["evictions"], 0);
    w.finish();
}

#[test]
fn a_socket_that_is_not_a_store_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("http.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            let mut c = c;
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let e = StoreClient::new(&sock).ping().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Store);
    assert!(
        e.to_string()
            .contains("does not answer as a vramswap store"),
        "{e}"
    );
    // A path that is not a socket at all.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let e = StoreClient::new(&file).ping().unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
    // And `serve` will not replace it.
    let out = Command::new(exe())
        .args(["store", "serve", "--socket"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn a_client_of_another_protocol_version_is_refused_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(dir.path(), &[]);
    let mut c = UnixStream::connect(&store.socket).unwrap();
    let body = format!(
        r#"{{"op":"hello","magic":"vramswap-store","protocol":{}}}"#,
        PROTOCOL_VERSION + 1
    );
    c.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
    c.write_all(body.as_bytes()).unwrap();
    let mut len = [0u8; 4];
    c.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u32::from_le_bytes(len) as usize];
    c.read_exact(&mut reply).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(v["reply"], "error");
    assert_eq!(v["kind"], "unsupported");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("protocol {PROTOCOL_VERSION}")),
        "{msg}"
    );
    // Garbage on another connection does not stop the store either.
    let mut g = UnixStream::connect(&store.socket).unwrap();
    g.write_all(&[0xff; 64]).unwrap();
    drop(g);
    assert!(store.status().sets.is_empty());
}

#[test]
fn a_name_holds_one_set_a_second_registration_with_other_contents_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(dir.path(), &[]);
    let (e1, e2) = (engine(&store.socket), engine(&store.socket));
    let a = vec![1u8; 4096];
    let b = vec![2u8; 4096];
    let arrays = |d: &[u8]| vec![("w".to_string(), DType::U8, vec![4096], d.to_vec())];
    fn as_refs(v: &[(String, DType, Vec<u64>, Vec<u8>)]) -> Vec<(String, DType, Vec<u64>, &[u8])> {
        v.iter()
            .map(|(n, t, s, d)| (n.clone(), *t, s.clone(), d.as_slice()))
            .collect()
    }
    let (va, vb) = (arrays(&a), arrays(&b));
    e1.register_arrays("w", as_refs(&va)).unwrap();
    let err = e2.register_arrays("w", as_refs(&vb)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(err.to_string().contains("nothing was replaced"), "{err}");
    // The same contents attach to the one copy.
    e2.register_arrays("w", as_refs(&va)).unwrap();
    let s = store.status();
    assert_eq!((s.counters.puts, s.counters.attaches), (1, 1), "{s:?}");
    assert_eq!(s.sets[0].clients, 2);
    assert_eq!(e2.acquire("w").unwrap().read_tensor("w").unwrap(), a);
    // A path under a name the store holds from another source is refused at the load.
    let path = checkpoint(dir.path(), "m.safetensors", 1, 4, 7);
    let e3 = engine(&store.socket);
    e3.register_path("w", &path, Default::default()).unwrap();
    let err = e3.acquire("w").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    // Nothing was overwritten.
    assert_eq!(e1.acquire("w").unwrap().read_tensor("w").unwrap(), a);
}

#[test]
fn a_budget_too_small_for_one_set_and_a_path_that_is_not_a_checkpoint_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = checkpoint(dir.path(), "big.safetensors", 4, 1024, 8);
    let store = Store::start(dir.path(), &["--host-budget", "1MiB"]);
    let e = engine(&store.socket);
    e.register_path("big", &big, Default::default()).unwrap();
    let err = e.acquire("big").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
    assert!(err.to_string().contains("whole budget"), "{err}");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a checkpoint").unwrap();
    e.register_path("notes", &text, Default::default()).unwrap();
    let err = e.acquire("notes").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed, "{err}");
    // The store holds nothing half-made and keeps serving.
    let small = checkpoint(dir.path(), "small.safetensors", 1, 64, 9);
    e.register_path("small", &small, Default::default())
        .unwrap();
    drop(e.acquire("small").unwrap());
    let s = store.status();
    assert_eq!(s.sets.len(), 1, "{s:?}");
    assert_eq!(s.sets[0].name, "small");
}

#[test]
fn over_budget_the_least_recently_used_set_no_client_holds_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, e) = three_sets_over_a_budget_for_two(dir.path(), 0);
    // m0 is held (acquired, not released); m1 is loaded and released; m2 needs room.
    let g0 = e.acquire("m0").unwrap();
    drop(e.acquire("m1").unwrap());
    e.release("m1").unwrap();
    store.wait_for("m1 released", |s| {
        s.sets.iter().any(|x| x.name == "m1" && x.clients == 0)
    });
    drop(e.acquire("m2").unwrap());
    let s = store.status();
    let names: Vec<&str> = s.sets.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["m0", "m2"], "{s:?}");
    assert_eq!(s.counters.evictions, 1);
    assert!(s.host_used <= 2600 << 10);
    drop(g0);
}

#[test]
fn two_engines_on_two_simulated_devices_share_one_copy_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path(), "m.safetensors", 4, 256, 10);
    let store = Store::start(dir.path(), &[]);
    let engines: Vec<SwapEngine> = (0..2)
        .map(|d| {
            SwapEngine::new(
                Arc::new(SimBackend::with_capacity(256 << 20).with_ordinal(d)),
                SwapConfig {
                    store: Some(store.socket.clone()),
                    ..SwapConfig::default()
                },
            )
            .unwrap()
        })
        .collect();
    assert_eq!(engines[1].backend().properties().ordinal, 1);
    let mut reads = Vec::new();
    for e in &engines {
        e.register_path("m", &path, Default::default()).unwrap();
        let g = e.acquire("m").unwrap();
        reads.push(g.read_tensor("model.layers.0.mlp.weight").unwrap());
        drop(g);
        let c = e.status().counters;
        assert_eq!(
            (c.loads, c.store_attaches),
            (0, 1),
            "no engine reads the disk itself"
        );
    }
    assert_eq!(reads[0], reads[1]);
    let s = store.status();
    assert_eq!(s.sets[0].clients, 2);
    assert_eq!(s.counters.loads, 1);
    assert_eq!(s.host_used, s.sets[0].bytes);
    // A set held from the store is read-only: device changes cannot be copied back into it.
    let e = &engines[0];
    let _g = e.acquire("m").unwrap();
    let err = e.mark_dirty("m").unwrap_err();
    assert!(err.to_string().contains("shared host store"), "{err}");
}

#[test]
fn a_restarted_worker_registers_what_an_earlier_one_put_without_its_bytes() {
    use vramswap::weights::TensorSpec;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(dir.path(), &[]);
    let bytes: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    {
        let first = engine(&store.socket);
        first
            .register_arrays("m", vec![("w".into(), DType::F16, vec![4096], &bytes[..])])
            .unwrap();
    } // the first worker is gone; the store keeps the set
    let spec = |dtype, shape: Vec<u64>| {
        vec![TensorSpec {
            name: "w".into(),
            dtype,
            shape,
        }]
    };
    let e = engine(&store.socket);
    let err = e
        .register_stored("m", &spec(DType::BF16, vec![4096]))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("tensor `w` is F16"), "{err}");
    assert!(e.names().is_empty(), "nothing registered on a mismatch");
    let err = e
        .register_stored("other", &spec(DType::F16, vec![4096]))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    e.register_stored("m", &spec(DType::F16, vec![4096]))
        .unwrap();
    assert_eq!(e.acquire("m").unwrap().read_tensor("w").unwrap(), bytes);
    let c = e.status().counters;
    assert_eq!((c.loads, c.store_attaches), (0, 1));
    let plain = SwapEngine::new(
        Arc::new(SimBackend::with_capacity(64 << 20)),
        SwapConfig::default(),
    )
    .unwrap();
    let err = plain.register_stored("m", &[]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
}

#[test]
fn an_engine_lets_its_idle_sets_go_when_the_store_is_full_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let (store, e) = three_sets_over_a_budget_for_two(dir.path(), 20);
    drop(e.acquire("m0").unwrap());
    drop(e.acquire("m1").unwrap());
    // Both held by this engine (idle, host copies kept): m2 fits only if one goes.
    let s = store.status();
    assert!(s.sets.iter().all(|x| x.clients == 1), "{s:?}");
    let g = e.acquire("m2").unwrap();
    assert_eq!(
        g.read_tensor("model.layers.0.mlp.weight").unwrap().len(),
        1 << 20
    );
    let s = store.status();
    let names: Vec<&str> = s.sets.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["m1", "m2"], "the least recently used went: {s:?}");
    assert_eq!(e.status().counters.releases, 1);
}
