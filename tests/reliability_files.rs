//! Reliability: a checkpoint changed while it loads, and files that are not checkpoints, give
//! an error naming the file (and the offset) and leave nothing behind; the process survives.
//! See the README, "Reliability".

mod common;

use std::ffi::CString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vramswap::arena::{ArenaConfig, PinnedArena};
use vramswap::backend::sim::SimBackend;
use vramswap::load::{load, save, LoadOptions, LoadProgress, MAX_INDEX_BYTES, MAX_LOAD_THREADS};
use vramswap::weights::DType;

fn arena() -> Arc<PinnedArena> {
    PinnedArena::new(
        Arc::new(SimBackend::with_capacity(1 << 30)),
        ArenaConfig {
            slab_size: 2 << 20,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A checkpoint of two `mib`-MiB F32 tensors.
fn big_file(dir: &Path, mib: usize) -> PathBuf {
    let f = dir.join("big.safetensors");
    let bytes: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8).collect();
    let n = (mib << 20) as u64 / 4;
    save(
        &f,
        &[
            ("model.layers.0.w", DType::F32, &[n], &bytes),
            ("model.layers.1.w", DType::F32, &[n], &bytes),
        ],
    )
    .unwrap();
    f
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// The file is truncated after its header was checked and before a byte of data was read
/// (the progress callback runs on the loading thread before copying starts): the load fails
/// with the file and offset named, the arena holds nothing afterwards, and once the file is
/// whole again the same arena loads it. Through a mapping this was SIGBUS.
#[test]
fn a_file_truncated_after_its_header_is_read_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let f = big_file(dir.path(), 4);
    let full = std::fs::read(&f).unwrap();
    let a = arena();
    for (cast, threads) in [(None, 1), (None, 4), (Some(DType::BF16), 3)] {
        let path = f.clone();
        let opts = LoadOptions {
            cast,
            threads,
            progress: Some(Arc::new(move |p: LoadProgress| {
                if p.bytes_done == 0 {
                    truncate(&path, 4096);
                }
            })),
            ..Default::default()
        };
        let err = load(&f, &a, &opts).unwrap_err().to_string();
        assert!(err.contains(&f.display().to_string()), "{err}");
        assert!(err.contains("it is now 4096 bytes long"), "{err}");
        assert!(err.contains("at offset"), "{err}");
        assert_eq!(a.stats().used_bytes, 0, "the set stays unloaded");
        std::fs::write(&f, &full).unwrap();
        let w = load(&f, &a, &LoadOptions::default()).unwrap();
        assert_eq!(w.desc().tensors.len(), 2);
    }
}

/// A FIFO and a character device are refused with a message that says what they are (a FIFO
/// is never opened, so the load cannot block on it).
#[test]
fn a_fifo_or_a_device_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.safetensors");
    let c = CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let a = arena();
    for (path, what) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/zero"), "a character device"),
    ] {
        let err = load(path, &a, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        let err = vramswap::load::inspect(path).unwrap_err().to_string();
        assert!(err.contains(what), "{err}");
    }
}

/// An index file over the limit is refused from its length, before it is read (a sparse
/// file: no disk or memory is spent).
#[test]
fn an_oversized_index_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join(vramswap::load::INDEX_FILE);
    std::fs::write(&idx, b"{\"weight_map\": {").unwrap();
    truncate(&idx, MAX_INDEX_BYTES + 1);
    let err = vramswap::load::inspect(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{} bytes", MAX_INDEX_BYTES + 1)),
        "{err}"
    );
    assert!(err.contains("over the limit"), "{err}");
}

/// `vramswap load` of a file another process truncates while it loads exits with an error or
/// succeeds (if it finished first), never by a signal. Through a mapping it died of SIGBUS.
#[test]
fn cli_load_survives_a_file_truncated_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let f = big_file(dir.path(), 32);
    let full = std::fs::read(&f).unwrap();
    for _ in 0..3 {
        std::fs::write(&f, &full).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vramswap"))
            .env_remove("VRAMSWAP_BACKEND")
            .env_remove("VRAMSWAP_CUDA_DRIVER")
            .args(["load", "--threads", "1"])
            .arg(&f)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Truncate from a separate process, as a user replacing the checkpoint would.
        let st = Command::new("truncate")
            .args(["-s", "8192"])
            .arg(&f)
            .status()
            .unwrap();
        assert!(st.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code().is_some(),
            "killed by a signal: {:?}\n{stderr}",
            out.status
        );
        if !out.status.success() {
            assert!(stderr.contains(&f.display().to_string()), "{stderr}");
        }
    }
}

/// A file from a JSON header (padded to 8 bytes) and a data section.
fn raw_file(json: &str, data: &[u8]) -> Vec<u8> {
    let mut j = json.as_bytes().to_vec();
    while !j.len().is_multiple_of(8) {
        j.push(b' ');
    }
    let mut f = (j.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(&j);
    f.extend_from_slice(data);
    f
}

/// The reference `safetensors` reader is the judge: what it refuses (a gap between tensors,
/// data after the last one, a key twice inside an entry) is refused here too, with a message
/// that says which; what it accepts is accepted.
#[test]
fn files_the_reference_reader_refuses_are_refused() {
    let cases = [
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}"#,
            12,
            "gap",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
            9,
            "trailing data",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#,
            8,
            "gap",
        ),
        (
            r#"{"a":{"dtype":"U8","dtype":"I64","shape":[4],"data_offsets":[0,4]}}"#,
            4,
            "duplicate key `dtype`",
        ),
    ];
    for (json, data_len, what) in cases {
        let bytes = raw_file(json, &vec![0u8; data_len]);
        assert!(
            safetensors::SafeTensors::deserialize(&bytes).is_err(),
            "the reference accepts {json}"
        );
        let err = vramswap::load::parse_header(&bytes)
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{json}: {err}");
    }
    let ok = raw_file(
        r#"{"__metadata__":{"k":"v"},"e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#,
        &[0u8; 6],
    );
    assert!(safetensors::SafeTensors::deserialize(&ok).is_ok());
    assert_eq!(vramswap::load::parse_header(&ok).unwrap().tensors.len(), 3);
}

/// Through the C ABI: a set registered and prefetched (loading on the engine's thread) whose
/// file is truncated at once. The acquire that follows is OK (the load won the race) or an
/// error status naming the file, the process lives, and a context stays usable. Through a
/// mapping the host process died of SIGBUS.
#[test]
fn capi_prefetch_survives_a_file_truncated_under_it() {
    use common::capi::*;
    use vramswap::capi::vramswap_status::*;
    use vramswap::capi::*;
    let dir = tempfile::tempdir().unwrap();
    let f = big_file(dir.path(), 16);
    let full = std::fs::read(&f).unwrap();
    let path = cstr(f.to_str().unwrap());
    // The truncation comes from another thread after 0, 1, 4, 16, 64, 256 ms (acquire and
    // prefetch + acquire alternate), so across rounds it
    // lands before the header is read, during the copy, or after the load.
    for round in 0..6u32 {
        std::fs::write(&f, &full).unwrap();
        let c = context();
        let name = cstr(&format!("big{round}"));
        let mut g = std::ptr::null_mut();
        // SAFETY: live context, NUL-terminated strings, valid out-pointer; the guard is
        // released once.
        unsafe {
            assert_eq!(
                vramswap_engine_register(c.0, name.as_ptr(), path.as_ptr()),
                VRAMSWAP_OK
            );
            let fc = f.clone();
            let cutter = std::thread::spawn(move || {
                if round > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1 << (2 * (round - 1))));
                }
                truncate(&fc, 8192);
            });
            let st = if round % 2 == 0 {
                vramswap_engine_acquire(c.0, name.as_ptr(), &mut g)
            } else {
                match vramswap_engine_prefetch(c.0, name.as_ptr()) {
                    VRAMSWAP_OK => vramswap_engine_acquire(c.0, name.as_ptr(), &mut g),
                    st => st,
                }
            };
            cutter.join().unwrap();
            eprintln!("round {round}: {st:?} {}", last_error());
            if st == VRAMSWAP_OK {
                vramswap_guard_release(g);
            } else {
                let e = last_error();
                assert!(e.contains(&f.display().to_string()), "{st:?}: {e}");
            }
        }
        malloc_and_free(&c, 4096);
    }
}

/// A thread count over the documented maximum is refused with both numbers before anything is
/// read or spawned (it spawned them all: 100000 threads for `--threads 100000`).
#[test]
fn load_threads_over_the_maximum_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = big_file(dir.path(), 1);
    let a = arena();
    let opts = LoadOptions {
        threads: MAX_LOAD_THREADS + 1,
        ..Default::default()
    };
    let err = load(&f, &a, &opts).unwrap_err().to_string();
    assert!(err.contains(&format!("{}", MAX_LOAD_THREADS + 1)), "{err}");
    assert!(err.contains(&format!("{MAX_LOAD_THREADS}")), "{err}");
    assert_eq!(a.stats().used_bytes, 0);
    let opts = LoadOptions {
        threads: MAX_LOAD_THREADS,
        ..Default::default()
    };
    assert!(load(&f, &a, &opts).is_ok());
}
