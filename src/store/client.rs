//! The engine's side: asking a store for a set, and holding it.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::memfd;
use super::wire::{self, contents_checksum, Reply, Request, StoreStatus, MAGIC, PROTOCOL_VERSION};
use crate::backend::SharedBackend;
use crate::error::{Error, ErrorKind, Result};
use crate::weights::{byte_len, DType, HostWeights, MappedFile, TensorSpec, WeightSetDesc};

/// How long a client waits for a store's hello before deciding nothing answers as a store.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of the store at one socket. Each set it hands out holds a connection of its own,
/// which the store counts as a client of that set until the set is dropped.
#[derive(Clone, Debug)]
pub struct StoreClient {
    socket: PathBuf,
}

/// An open connection after the hello.
struct Conn {
    stream: UnixStream,
    socket: PathBuf,
}

/// Keeps a set's connection open: the store counts this process as a client of the set for as
/// long as it lives. Dropped, it tells the store and waits for the answer (a little while at
/// most), so that the store's count is right before the caller goes on: an engine that drops
/// idle sets to make room in the store retries at once.
struct Lease {
    stream: UnixStream,
}

/// How long a dropped set waits for the store to acknowledge it.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

impl Drop for Lease {
    fn drop(&mut self) {
        if self.stream.set_read_timeout(Some(RELEASE_TIMEOUT)).is_err() {
            return;
        }
        // A store that died or hangs counts the client gone when the socket closes.
        if wire::send(&mut self.stream, &Request::Release, None).is_ok() {
            let _ = wire::recv::<Reply>(&mut self.stream);
        }
    }
}

impl Conn {
    fn err(&self, kind: Option<ErrorKind>, problem: impl Into<String>) -> Error {
        super::store_error(&self.socket, kind, problem)
    }

    fn unexpected(&self, reply: &Reply) -> Error {
        self.err(None, format!("unexpected answer {reply:?}"))
    }

    /// Asks for a set and takes it ([`Conn::take_set`]), keeping this connection with it.
    fn ask_set(mut self, req: &Request, name: &str, backend: SharedBackend) -> Result<HostWeights> {
        match self.ask(req)? {
            (Reply::Set { desc, .. }, fd) => self.take_set(name, desc, fd, backend),
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    fn ask(&mut self, req: &Request) -> Result<(Reply, Option<OwnedFd>)> {
        wire::send(&mut self.stream, req, None)
            .map_err(|e| self.err(None, format!("the store went away: {e}")))?;
        match wire::recv::<Reply>(&mut self.stream) {
            Ok(Some((Reply::Error { kind, message }, _))) => Err(self.err(Some(kind), message)),
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(self.err(None, "the store closed the connection (did it stop?)")),
            Err(e) => Err(self.err(None, format!("the store went away: {e}"))),
        }
    }

    /// Maps a set the store handed over, registers it with `backend`, and keeps this
    /// connection with it.
    fn take_set(
        self,
        name: &str,
        desc: WeightSetDesc,
        fd: Option<OwnedFd>,
        backend: SharedBackend,
    ) -> Result<HostWeights> {
        let Some(fd) = fd else {
            return Err(self.err(None, format!("set `{name}` came without its memory")));
        };
        let file = File::from(fd);
        let len = file
            .metadata()
            .map_err(|e| self.err(None, format!("set `{name}`: {e}")))?
            .len();
        if !memfd::is_sealed(&file) || len < desc.total_bytes {
            return Err(self.err(
                None,
                format!(
                    "set `{name}` came as unsealed memory or shorter ({len} bytes) than its \
                     {} bytes: not a store of this protocol",
                    desc.total_bytes
                ),
            ));
        }
        let desc = WeightSetDesc::new(desc.tensors, desc.total_bytes)
            .map_err(|e| self.err(None, format!("set `{name}`: {e}")))?;
        let map = memfd::map(&file).map_err(|e| self.err(None, format!("set `{name}`: {e}")))?;
        let label = PathBuf::from(format!("store:{name}"));
        let mapped = MappedFile::register(&label, map, backend)?;
        Ok(HostWeights::from_shared(
            desc,
            mapped,
            Box::new(Lease {
                stream: self.stream,
            }),
        ))
    }
}

impl StoreClient {
    /// A client of the store listening on `socket`; nothing is connected yet.
    pub fn new(socket: impl Into<PathBuf>) -> StoreClient {
        StoreClient {
            socket: socket.into(),
        }
    }

    /// The store's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn err(&self, kind: Option<ErrorKind>, problem: impl Into<String>) -> Error {
        super::store_error(&self.socket, kind, problem)
    }

    fn connect(&self) -> Result<Conn> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| {
            self.err(
                None,
                format!(
                    "cannot connect ({e}); is `vramswap store serve --socket {}` running?",
                    self.socket.display()
                ),
            )
        })?;
        let not_a_store = |why: String| {
            self.err(
                None,
                format!("it does not answer as a vramswap store: {why}"),
            )
        };
        stream
            .set_read_timeout(Some(HELLO_TIMEOUT))
            .map_err(|e| not_a_store(e.to_string()))?;
        wire::send(
            &mut stream,
            &Request::Hello {
                magic: MAGIC.into(),
                protocol: PROTOCOL_VERSION,
            },
            None,
        )
        .map_err(|e| not_a_store(e.to_string()))?;
        match wire::recv::<serde_json::Value>(&mut stream) {
            Ok(Some((v, _))) => match wire::hello_of(&v, "reply") {
                Some((magic, protocol)) if magic == MAGIC => {
                    if protocol != u64::from(PROTOCOL_VERSION) {
                        return Err(self.err(
                            Some(ErrorKind::Unsupported),
                            format!(
                                "the store speaks protocol {protocol}, this client \
                                 {PROTOCOL_VERSION}: use the same vramswap version on both sides"
                            ),
                        ));
                    }
                }
                Some(_) => return Err(not_a_store(format!("its hello is {v}"))),
                None => match serde_json::from_value::<Reply>(v.clone()) {
                    Ok(Reply::Error { kind, message }) => return Err(self.err(Some(kind), message)),
                    _ => return Err(not_a_store(format!("it answered {v}"))),
                },
            },
            Ok(None) => return Err(not_a_store("it closed the connection".into())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(not_a_store(format!(
                    "no hello within {} s",
                    HELLO_TIMEOUT.as_secs()
                )))
            }
            Err(e) => return Err(not_a_store(e.to_string())),
        }
        stream
            .set_read_timeout(None)
            .map_err(|e| not_a_store(e.to_string()))?;
        Ok(Conn {
            stream,
            socket: self.socket.clone(),
        })
    }

    /// Checks that a store of this protocol answers.
    pub fn ping(&self) -> Result<()> {
        self.connect().map(drop)
    }

    /// Waits until a store of this protocol answers (one just started binds its socket a
    /// moment later), asking every 10 ms; the last [`StoreClient::ping`] error after `timeout`.
    pub fn wait_until_serving(&self, timeout: Duration) -> Result<()> {
        let t = std::time::Instant::now();
        loop {
            match self.ping() {
                Err(_) if t.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
                done => return done,
            }
        }
    }

    /// What the store holds.
    pub fn status(&self) -> Result<StoreStatus> {
        let mut c = self.connect()?;
        match c.ask(&Request::Status)? {
            (Reply::Status(s), _) => Ok(s),
            (other, _) => Err(c.unexpected(&other)),
        }
    }

    /// The set `name` from the checkpoint at `path` (floats cast to `cast` if given): the
    /// store's copy if it holds that set from the same files, else the store reads it from disk
    /// first. The bytes are the store's sealed shared memory, mapped read-only and registered
    /// with `backend`; the store counts this process as a client until the set is dropped.
    pub fn attach(
        &self,
        name: &str,
        path: &Path,
        cast: Option<DType>,
        backend: SharedBackend,
    ) -> Result<HostWeights> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let req = Request::Attach {
            name: name.into(),
            path,
            cast,
        };
        self.connect()?.ask_set(&req, name, backend)
    }

    /// The set `name` as the store holds it, put or loaded by an earlier process, without
    /// saying where it came from; [`ErrorKind::NotFound`] if the store does not hold it.
    pub fn open(&self, name: &str, backend: SharedBackend) -> Result<HostWeights> {
        self.connect()?
            .ask_set(&Request::Open { name: name.into() }, name, backend)
    }

    /// Puts arrays (name, dtype, shape, bytes) into the store as the set `name`, laid out as
    /// [`WeightSetDesc::layout`] lays them out, and returns it as [`StoreClient::attach`] does.
    /// If the store holds a set of that name with the same contents, that copy is used and
    /// nothing is written; other contents under the name are refused
    /// ([`ErrorKind::AlreadyExists`]). The flag says whether the store's copy was used.
    pub fn put(
        &self,
        name: &str,
        arrays: Vec<(String, DType, Vec<u64>, &[u8])>,
        backend: SharedBackend,
    ) -> Result<(HostWeights, bool)> {
        for (n, dtype, shape, data) in &arrays {
            if byte_len(*dtype, shape) != Some(data.len() as u64) {
                return Err(Error::InvalidArgument(format!(
                    "array `{n}`: {} bytes given for shape {shape:?} of {dtype}",
                    data.len()
                )));
            }
        }
        let desc = WeightSetDesc::layout(
            arrays
                .iter()
                .map(|(n, dtype, shape, _)| TensorSpec {
                    name: n.clone(),
                    dtype: *dtype,
                    shape: shape.clone(),
                })
                .collect(),
        )?;
        let checksum = contents_checksum(
            arrays
                .iter()
                .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), *b)),
        );
        let mut c = self.connect()?;
        let (reply, fd) = c.ask(&Request::Put {
            name: name.into(),
            desc: desc.clone(),
            checksum,
        })?;
        match reply {
            Reply::Set { desc, .. } => return Ok((c.take_set(name, desc, fd, backend)?, true)),
            Reply::Fill { bytes } if bytes == desc.total_bytes => {}
            other => return Err(c.unexpected(&other)),
        }
        let Some(fd) = fd else {
            return Err(c.err(None, format!("set `{name}`: no memory to fill came")));
        };
        let file = File::from(fd);
        {
            let mut m = memfd::map_mut(&file)
                .map_err(|e| c.err(None, format!("set `{name}`: mapping to fill: {e}")))?;
            for (n, _, _, data) in &arrays {
                if let Some(t) = desc.find(n) {
                    m[t.offset as usize..t.end() as usize].copy_from_slice(data);
                }
            }
            // Unmapped here: the store seals the memory at the commit, which a writable
            // mapping would block.
        }
        drop(file);
        Ok((c.ask_set(&Request::Commit, name, backend)?, false))
    }
}
