//! A `vramswap store serve` process for the tests of the shared host store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vramswap::store::{StoreClient, StoreStatus};

/// The command-line tool under test: `VRAMSWAP_EXE` when set (the GPU bundle runs these test
/// binaries on a machine where cargo's build directory does not exist), else cargo's build.
pub fn exe() -> String {
    std::env::var("VRAMSWAP_EXE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vramswap").to_string())
}

/// A store process on a socket of its own; killed (SIGKILL) when dropped.
pub struct Store {
    pub child: Child,
    pub socket: PathBuf,
}

impl Store {
    pub fn start(dir: &Path, extra: &[&str]) -> Store {
        let socket = dir.join("store.sock");
        let child = Command::new(exe())
            .args(["store", "serve", "--socket"])
            .arg(&socket)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        StoreClient::new(&socket)
            .wait_until_serving(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("the store did not start: {e}"));
        Store { child, socket }
    }

    pub fn status(&self) -> StoreStatus {
        StoreClient::new(&self.socket).status().unwrap()
    }

    /// Polls the status until `pred` holds (the store learns of a dead client asynchronously).
    pub fn wait_for(&self, what: &str, pred: impl Fn(&StoreStatus) -> bool) -> StoreStatus {
        let t = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "{what}: {s:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&mut self, sig: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), sig).unwrap();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
