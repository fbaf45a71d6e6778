//! One host copy for many processes: a store process (`vramswap store serve`) holds weight
//! sets' host copies in sealed shared memory (memfd), loads each from disk once, and hands it
//! to engines over a Unix socket (the memory's file descriptor passed with `SCM_RIGHTS`).
//!
//! An engine opts in with [`crate::swap::SwapConfig::store`] (`VRAMSWAP_STORE=PATH`, Python's
//! `Engine(store=PATH)`): its host tier is then the store's memory mapped into the process and
//! registered (read-only, pinned) with the device. `register_path` sets attach to the store's
//! copy when the store holds that set from the same files (same path, length and modification
//! time); `register_arrays` sets are put into the store.
//!
//! What survives what:
//! - A client that dies, however it dies, stops counting as a client of its sets when the
//!   kernel closes its socket; a set it was filling and had not committed is discarded.
//! - A store that dies leaves what clients mapped valid (the memory lives while anyone maps
//!   it); their next store call fails with [`crate::Error::Store`]. A restarted store starts
//!   empty.
//! - The store seals each set before handing it out, so no process (the store included) can
//!   write, grow or shrink it: one client cannot change the bytes another computes with. A set
//!   held from a store is therefore read-only (`mark_dirty` refuses it).
//!
//! ```no_run
//! use std::sync::Arc;
//! use vramswap::backend::sim::SimBackend;
//! use vramswap::store::{StoreConfig, StoreServer, StoreClient};
//!
//! let server = StoreServer::bind(StoreConfig::new("/tmp/vramswap.sock"))?;
//! std::thread::spawn(move || server.run());
//! let client = StoreClient::new("/tmp/vramswap.sock");
//! let backend = Arc::new(SimBackend::with_capacity(1 << 30));
//! let set = client.attach("llama", "model_dir".as_ref(), None, backend)?;
//! println!("{} bytes, {} clients", set.total_bytes(), client.status()?.sets[0].clients);
//! # Ok::<(), vramswap::Error>(())
//! ```

mod client;
mod memfd;
mod policy;
mod server;
mod wire;

use std::path::Path;

use crate::error::{Error, ErrorKind};

pub use client::{StoreClient, HELLO_TIMEOUT};
pub use server::{StoreConfig, StoreServer};
pub use wire::{StoreCounters, StoreStatus, StoredSetStatus, MAGIC, PROTOCOL_VERSION};

/// An [`Error::Store`] about the store at `socket`; `kind` is the class of a refusal, `None`
/// when no store answered as one.
fn store_error(socket: &Path, kind: Option<ErrorKind>, problem: impl Into<String>) -> Error {
    Error::Store {
        socket: socket.to_path_buf(),
        kind,
        problem: problem.into(),
    }
}
