//! The store process's side: a Unix socket, one thread per connection, and the sets it holds.
//!
//! A set is in one of three phases: `Loading` (the store reads it from disk), `Filling` (a
//! client writes its own bytes) or `Ready` (sealed, served). Only `Ready` sets are handed out;
//! a request for a set in another phase waits for it. A load that fails, and a fill whose client
//! goes away before it commits, are discarded and never served.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::memfd;
use super::policy::{self, Shortfall};
use super::wire::{
    self, contents_checksum, Reply, Request, StoreCounters, StoreStatus, StoredSetStatus, MAGIC,
    PROTOCOL_VERSION,
};
use crate::error::{Error, ErrorKind, Result};
use crate::load::{LoadOptions, Planned};
use crate::weights::{DType, WeightSetDesc};

/// How a store runs.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The socket it listens on.
    pub socket: PathBuf,
    /// Bytes of shared memory it may hold; least recently used sets no client holds are dropped
    /// to stay under it. `None`: the machine's memory is the limit.
    pub host_budget: Option<u64>,
    /// Threads of each load from disk.
    pub load_threads: usize,
    /// How long a client may take between asking to put a set and committing it; past it the
    /// half-filled set is discarded, so a stuck client cannot hold a name forever.
    pub fill_timeout: Duration,
    /// A pause before each load's copy: for tests that kill a client while its set loads.
    pub load_delay: Duration,
}

impl StoreConfig {
    /// A store on `socket` with no budget and the loader's default threads.
    pub fn new(socket: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            socket: socket.into(),
            host_budget: None,
            load_threads: LoadOptions::default().threads,
            fill_timeout: Duration::from_secs(300),
            load_delay: Duration::ZERO,
        }
    }
}

/// One file of a checkpoint as the store saw it: the same path, length and modification time
/// is the same file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileId {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

/// Where a set's bytes came from: what makes two requests for a name the same set.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    Checkpoint {
        path: PathBuf,
        files: Vec<FileId>,
        cast: Option<DType>,
    },
    Client {
        checksum: u64,
        desc: WeightSetDesc,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Checkpoint { path, cast, .. } => {
                write!(f, "{}", path.display())?;
                if let Some(c) = cast {
                    write!(f, " cast to {c}")?;
                }
                Ok(())
            }
            Source::Client { checksum, .. } => write!(f, "a client's arrays ({checksum:#018x})"),
        }
    }
}

enum Phase {
    Loading,
    Filling {
        conn: u64,
        file: Arc<File>,
        since: Instant,
    },
    Ready {
        file: Arc<File>,
        desc: Arc<WeightSetDesc>,
    },
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Filling { .. } => "filling",
            Phase::Ready { .. } => "ready",
        }
    }
}

struct Stored {
    source: Source,
    bytes: u64,
    tick: u64,
    clients: usize,
    phase: Phase,
}

struct State {
    sets: BTreeMap<String, Stored>,
    counters: StoreCounters,
    tick: u64,
}

struct Shared {
    socket: PathBuf,
    budget: Option<u64>,
    threads: usize,
    fill_timeout: Duration,
    load_delay: Duration,
    next_conn: AtomicU64,
    state: Mutex<State>,
    changed: Condvar,
}

/// A refusal sent to the client.
struct Refusal {
    kind: ErrorKind,
    message: String,
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Refusal {
        Refusal {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

fn refuse(kind: ErrorKind, message: impl Into<String>) -> Refusal {
    Refusal {
        kind,
        message: message.into(),
    }
}

/// A bound store, ready to [`StoreServer::run`].
pub struct StoreServer {
    listener: UnixListener,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StoreServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreServer")
            .field("socket", &self.shared.socket)
            .field("budget", &self.shared.budget)
            .finish()
    }
}

impl StoreServer {
    /// Binds the socket. A stale socket file (nobody listening) is replaced; a live one, or a
    /// path that is not a socket, is an error and left alone.
    pub fn bind(config: StoreConfig) -> Result<StoreServer> {
        let path = &config.socket;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(super::store_error(
                    path,
                    Some(ErrorKind::InvalidArgument),
                    "the path exists and is not a socket; not replacing it",
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(super::store_error(
                    path,
                    Some(ErrorKind::AlreadyExists),
                    "something already listens on this socket (another store?)",
                ));
            }
            std::fs::remove_file(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        }
        let listener = UnixListener::bind(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        // Only this user may connect: a client names files the store reads as its own user.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| Error::Io {
                    path: path.clone(),
                    source,
                },
            )?;
        }
        Ok(StoreServer {
            listener,
            shared: Arc::new(Shared {
                socket: config.socket,
                budget: config.host_budget,
                threads: config.load_threads.max(1),
                fill_timeout: config.fill_timeout,
                load_delay: config.load_delay,
                next_conn: AtomicU64::new(0),
                state: Mutex::new(State {
                    sets: BTreeMap::new(),
                    counters: StoreCounters::default(),
                    tick: 0,
                }),
                changed: Condvar::new(),
            }),
        })
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// What it holds now.
    pub fn status(&self) -> StoreStatus {
        self.shared.status()
    }

    /// Serves connections until the listener fails (it does not on its own: stop the process,
    /// or drop the thread running it). Each connection has a thread of its own.
    pub fn run(self) -> Result<()> {
        tracing::info!(
            socket = %self.shared.socket.display(),
            budget = ?self.shared.budget,
            protocol = PROTOCOL_VERSION,
            "store serving"
        );
        for conn in self.listener.incoming() {
            let stream = match conn {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    continue;
                }
            };
            let shared = self.shared.clone();
            let id = shared.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
            let spawned = std::thread::Builder::new()
                .name(format!("vramswap-store-{id}"))
                .spawn(move || Connection::new(shared, id).serve(stream));
            if let Err(e) = spawned {
                tracing::warn!("cannot start a thread for a connection: {e}");
            }
        }
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a change, or a second (a fill past its deadline changes nothing by itself).
    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(st, Duration::from_secs(1))
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    fn status(&self) -> StoreStatus {
        let st = self.lock();
        StoreStatus {
            host_used: st.sets.values().map(|s| s.bytes).sum(),
            host_budget: self.budget,
            sets: st
                .sets
                .iter()
                .map(|(name, s)| StoredSetStatus {
                    name: name.clone(),
                    bytes: s.bytes,
                    clients: s.clients,
                    phase: s.phase.name().into(),
                    source: match &s.source {
                        Source::Checkpoint { path, .. } => path.display().to_string(),
                        Source::Client { .. } => "client".into(),
                    },
                })
                .collect(),
            counters: st.counters,
            protocol: PROTOCOL_VERSION,
        }
    }

    /// Takes out what the policy says so that `need` bytes fit, or says why they cannot. The
    /// sets taken out are returned, to be dropped (their memory freed, which takes time for
    /// large sets) after the lock is let go.
    fn make_room(&self, st: &mut State, name: &str, need: u64) -> Result<Vec<Stored>, Refusal> {
        let facts: Vec<policy::SetFacts> = st
            .sets
            .iter()
            .map(|(n, s)| policy::SetFacts {
                name: n,
                bytes: s.bytes,
                tick: s.tick,
                evictable: s.clients == 0 && matches!(s.phase, Phase::Ready { .. }),
            })
            .collect();
        let victims: Vec<String> = match policy::make_room(&facts, need, self.budget) {
            Ok(v) => v.into_iter().map(str::to_string).collect(),
            Err(Shortfall::LargerThanBudget { need, budget }) => {
                return Err(refuse(
                    ErrorKind::OutOfMemory,
                    format!(
                        "set `{name}` is {need} bytes, more than the store's whole budget of \
                         {budget} bytes (`--host-budget`)"
                    ),
                ))
            }
            Err(Shortfall::Held { need, budget, held }) => {
                return Err(refuse(
                    ErrorKind::OutOfMemory,
                    format!(
                        "set `{name}` needs {need} bytes; {held} of the budget's {budget} bytes \
                         are sets clients hold or that are loading"
                    ),
                ))
            }
        };
        let mut out = Vec::new();
        for v in victims {
            if let Some(s) = st.sets.remove(&v) {
                st.counters.evictions += 1;
                tracing::info!(set = %v, bytes = s.bytes, "evicted (least recently used, no client)");
                out.push(s);
            }
        }
        Ok(out)
    }
}

/// One client connection: the set it holds (its client count drops when the connection goes,
/// however it goes) and a fill it has not committed (discarded then).
struct Connection {
    shared: Arc<Shared>,
    id: u64,
    held: Option<String>,
    filling: Option<String>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(name) = self.held.take() {
            if let Some(s) = st.sets.get_mut(&name) {
                s.clients = s.clients.saturating_sub(1);
            }
            tracing::debug!(set = %name, conn = self.id, "client gone");
        }
        let mut gone = None;
        if let Some(name) = self.filling.take() {
            let ours = st
                .sets
                .get(&name)
                .is_some_and(|s| matches!(s.phase, Phase::Filling { conn, .. } if conn == self.id));
            if ours {
                gone = st.sets.remove(&name);
                st.counters.discarded += 1;
                tracing::warn!(set = %name, "discarded: its client went away before committing");
            }
        }
        self.shared.changed.notify_all();
        drop(st);
        drop(gone);
    }
}

/// Removes a `Loading` entry if the load that made it does not finish (an error or a panic).
struct LoadingEntry<'a> {
    shared: &'a Shared,
    name: &'a str,
    armed: bool,
}

impl Drop for LoadingEntry<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.shared.lock();
            if st
                .sets
                .get(self.name)
                .is_some_and(|s| matches!(s.phase, Phase::Loading))
            {
                st.sets.remove(self.name);
                st.counters.discarded += 1;
            }
            self.shared.changed.notify_all();
        }
    }
}

type Answer = (Reply, Option<Arc<File>>);

impl Connection {
    fn new(shared: Arc<Shared>, id: u64) -> Connection {
        Connection {
            shared,
            id,
            held: None,
            filling: None,
        }
    }

    fn serve(mut self, mut stream: UnixStream) {
        let first = match wire::recv::<serde_json::Value>(&mut stream) {
            Ok(Some((v, _))) => wire::hello_of(&v, "op"),
            Ok(None) => return,
            Err(_) => None,
        };
        match first {
            Some((magic, protocol))
                if magic == MAGIC && protocol == u64::from(PROTOCOL_VERSION) => {}
            Some((magic, protocol)) => {
                let _ = wire::send(
                    &mut stream,
                    &Reply::Error {
                        kind: ErrorKind::Unsupported,
                        message: format!(
                            "this store speaks protocol {PROTOCOL_VERSION} (`{MAGIC}`); the \
                             client speaks {protocol} (`{magic}`): use the same vramswap \
                             version on both sides"
                        ),
                    },
                    None,
                );
                return;
            }
            None => {
                let _ = wire::send(
                    &mut stream,
                    &Reply::Error {
                        kind: ErrorKind::InvalidArgument,
                        message: "a connection starts with a hello".into(),
                    },
                    None,
                );
                return;
            }
        }
        let hello = Reply::Hello {
            magic: MAGIC.into(),
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        if wire::send(&mut stream, &hello, None).is_err() {
            return;
        }
        loop {
            let req = match wire::recv::<Request>(&mut stream) {
                Ok(Some((r, _))) => r,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(conn = self.id, "bad request: {e}");
                    let _ = wire::send(
                        &mut stream,
                        &Reply::Error {
                            kind: ErrorKind::InvalidArgument,
                            message: e.to_string(),
                        },
                        None,
                    );
                    return;
                }
            };
            let (reply, fd) = self.answer(req).unwrap_or_else(|r| {
                (
                    Reply::Error {
                        kind: r.kind,
                        message: r.message,
                    },
                    None,
                )
            });
            if wire::send(&mut stream, &reply, fd.as_ref().map(|f| f.as_fd())).is_err() {
                return;
            }
        }
    }

    fn answer(&mut self, req: Request) -> Result<Answer, Refusal> {
        match req {
            Request::Hello { .. } => Err(refuse(
                ErrorKind::InvalidState,
                "this connection has said hello already",
            )),
            Request::Status => Ok((Reply::Status(self.shared.status()), None)),
            Request::Attach { name, path, cast } => {
                self.one_set_only()?;
                self.attach(&name, &path, cast)
            }
            Request::Put {
                name,
                desc,
                checksum,
            } => {
                self.one_set_only()?;
                self.put(&name, desc, checksum)
            }
            Request::Commit => self.commit(),
            Request::Release => {
                let Some(name) = self.held.take() else {
                    return Err(refuse(
                        ErrorKind::InvalidState,
                        "this connection holds no set",
                    ));
                };
                let mut st = self.shared.lock();
                if let Some(s) = st.sets.get_mut(&name) {
                    s.clients = s.clients.saturating_sub(1);
                }
                self.shared.changed.notify_all();
                Ok((Reply::Released, None))
            }
            Request::Open { name } => {
                self.one_set_only()?;
                let shared = self.shared.clone();
                let (found, st) = self.attach_existing(&shared, &name, None)?;
                drop(st);
                match found {
                    Some(a) => Ok(a),
                    None => Err(refuse(
                        ErrorKind::NotFound,
                        format!(
                            "the store holds no set `{name}`: no process has put or loaded it \
                             since the store started (or it was evicted)"
                        ),
                    )),
                }
            }
        }
    }

    fn one_set_only(&self) -> Result<(), Refusal> {
        match self.held.as_ref().or(self.filling.as_ref()) {
            Some(n) => Err(refuse(
                ErrorKind::InvalidState,
                format!("this connection holds set `{n}` already: one set per connection"),
            )),
            None => Ok(()),
        }
    }

    /// Waits until `name` is absent or ready. A ready set of the same source (or of any, when
    /// `source` is `None`) is attached (`Some`); a set of another source is refused; `None`:
    /// absent, with the lock held.
    fn attach_existing<'a>(
        &mut self,
        shared: &'a Shared,
        name: &str,
        source: Option<&Source>,
    ) -> Result<(Option<Answer>, MutexGuard<'a, State>), Refusal> {
        let mut st = shared.lock();
        loop {
            let tick = st.tick + 1;
            let Some(s) = st.sets.get_mut(name) else {
                return Ok((None, st));
            };
            if let Some(source) = source.filter(|&src| s.source != *src) {
                return Err(refuse(
                    ErrorKind::AlreadyExists,
                    format!(
                        "the store holds set `{name}` from {}; this request is for {source}. A \
                         name is one set: nothing was replaced (use another name, or restart \
                         the store to start empty)",
                        s.source
                    ),
                ));
            }
            if let Phase::Filling { since, .. } = &s.phase {
                if since.elapsed() > self.shared.fill_timeout {
                    let stale = st.sets.remove(name);
                    st.counters.discarded += 1;
                    tracing::warn!(set = %name, "discarded: its client did not commit in time");
                    shared.changed.notify_all();
                    drop(st);
                    drop(stale);
                    st = shared.lock();
                    continue;
                }
            }
            let Some(s) = st.sets.get_mut(name) else {
                continue;
            };
            if let Phase::Ready { file, desc } = &s.phase {
                let answer = (
                    Reply::Set {
                        desc: (**desc).clone(),
                        fresh: false,
                    },
                    Some(file.clone()),
                );
                s.clients += 1;
                s.tick = tick;
                st.tick = tick;
                st.counters.attaches += 1;
                self.held = Some(name.to_string());
                tracing::info!(set = %name, conn = self.id, "attached");
                return Ok((Some(answer), st));
            }
            st = shared.wait(st);
        }
    }

    fn attach(&mut self, name: &str, path: &Path, cast: Option<DType>) -> Result<Answer, Refusal> {
        check_name(name)?;
        let opts = LoadOptions {
            cast,
            threads: self.shared.threads,
            ..LoadOptions::default()
        };
        let planned = Planned::open(path, &opts)?;
        let files = planned
            .files()
            .iter()
            .map(|f| FileId {
                path: std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone()),
                len: f.file_len,
                modified: std::fs::metadata(&f.path).and_then(|m| m.modified()).ok(),
            })
            .collect();
        let source = Source::Checkpoint {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            files,
            cast,
        };
        let shared = self.shared.clone();
        let (found, mut st) = self.attach_existing(&shared, name, Some(&source))?;
        if let Some(a) = found {
            return Ok(a);
        }
        let need = planned.desc().total_bytes;
        if need == 0 {
            return Err(refuse(
                ErrorKind::InvalidArgument,
                format!("{}: the checkpoint holds no bytes", path.display()),
            ));
        }
        let evicted = self.shared.make_room(&mut st, name, need)?;
        st.tick += 1;
        let tick = st.tick;
        st.sets.insert(
            name.to_string(),
            Stored {
                source,
                bytes: need,
                tick,
                clients: 0,
                phase: Phase::Loading,
            },
        );
        drop(st);
        drop(evicted);
        let mut entry = LoadingEntry {
            shared: &self.shared,
            name,
            armed: true,
        };
        let started = Instant::now();
        std::thread::sleep(self.shared.load_delay);
        let io = |e: std::io::Error| refuse(ErrorKind::Io, format!("shared memory: {e}"));
        let file = memfd::create(name, need).map_err(io)?;
        let desc = {
            let mut m = memfd::map_mut(&file).map_err(io)?;
            planned.copy_into(&mut m, &opts)?
        };
        memfd::seal(&file).map_err(io)?;
        let (file, desc) = (Arc::new(file), Arc::new(desc));
        let mut st = self.shared.lock();
        let Some(s) = st.sets.get_mut(name) else {
            return Err(refuse(
                ErrorKind::InvalidState,
                format!("set `{name}` went away while it loaded"),
            ));
        };
        entry.armed = false;
        s.phase = Phase::Ready {
            file: file.clone(),
            desc: desc.clone(),
        };
        s.clients = 1;
        st.counters.loads += 1;
        self.held = Some(name.to_string());
        self.shared.changed.notify_all();
        drop(st);
        tracing::info!(
            set = %name,
            bytes = need,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "loaded from {}",
            path.display()
        );
        Ok((
            Reply::Set {
                desc: (*desc).clone(),
                fresh: true,
            },
            Some(file),
        ))
    }

    fn put(&mut self, name: &str, desc: WeightSetDesc, checksum: u64) -> Result<Answer, Refusal> {
        check_name(name)?;
        let desc = WeightSetDesc::new(desc.tensors, desc.total_bytes)?;
        if desc.total_bytes == 0 {
            return Err(refuse(
                ErrorKind::InvalidArgument,
                format!("set `{name}` holds no bytes"),
            ));
        }
        let source = Source::Client { checksum, desc };
        let shared = self.shared.clone();
        let (found, mut st) = self.attach_existing(&shared, name, Some(&source))?;
        if let Some(a) = found {
            return Ok(a);
        }
        let Source::Client { desc, .. } = &source else {
            unreachable!("built as a client source above")
        };
        let need = desc.total_bytes;
        let evicted = self.shared.make_room(&mut st, name, need)?;
        let file = Arc::new(
            memfd::create(name, need)
                .map_err(|e| refuse(ErrorKind::Io, format!("shared memory: {e}")))?,
        );
        st.tick += 1;
        let tick = st.tick;
        st.sets.insert(
            name.to_string(),
            Stored {
                source,
                bytes: need,
                tick,
                clients: 0,
                phase: Phase::Filling {
                    conn: self.id,
                    file: file.clone(),
                    since: Instant::now(),
                },
            },
        );
        self.filling = Some(name.to_string());
        drop(st);
        drop(evicted);
        Ok((Reply::Fill { bytes: need }, Some(file)))
    }

    fn commit(&mut self) -> Result<Answer, Refusal> {
        let Some(name) = self.filling.clone() else {
            return Err(refuse(
                ErrorKind::InvalidState,
                "nothing to commit: this connection is not filling a set",
            ));
        };
        let (file, desc, checksum) = {
            let st = self.shared.lock();
            match st.sets.get(&name) {
                Some(Stored {
                    phase: Phase::Filling { file, conn, .. },
                    source: Source::Client { checksum, desc },
                    ..
                }) if *conn == self.id => (file.clone(), desc.clone(), *checksum),
                _ => {
                    // Expired (and perhaps taken by another client since): nothing of ours.
                    self.filling = None;
                    return Err(refuse(
                        ErrorKind::InvalidState,
                        format!(
                            "set `{name}` is not being filled by this connection (its fill \
                             expired?)"
                        ),
                    ));
                }
            }
        };
        let checked = (|| -> Result<(), Refusal> {
            memfd::seal(&file).map_err(|e| {
                refuse(
                    ErrorKind::InvalidState,
                    format!("cannot seal set `{name}` ({e}): unmap the memory before committing"),
                )
            })?;
            let m = memfd::map(&file)
                .map_err(|e| refuse(ErrorKind::Io, format!("shared memory: {e}")))?;
            let got = contents_checksum(desc.tensors.iter().map(|t| {
                (
                    t.name.as_str(),
                    t.dtype,
                    t.shape.as_slice(),
                    &m[t.offset as usize..t.end() as usize],
                )
            }));
            if got != checksum {
                return Err(refuse(
                    ErrorKind::ChecksumMismatch,
                    format!(
                        "set `{name}`: the bytes written have checksum {got:#018x}, the request \
                         said {checksum:#018x}; discarded"
                    ),
                ));
            }
            Ok(())
        })();
        let mut st = self.shared.lock();
        let ours = |st: &State| {
            st.sets
                .get(&name)
                .is_some_and(|s| matches!(s.phase, Phase::Filling { conn, .. } if conn == self.id))
        };
        if !ours(&st) {
            self.filling = None;
            return Err(refuse(
                ErrorKind::InvalidState,
                format!("set `{name}`: its fill expired while it was checked"),
            ));
        }
        if let Err(r) = checked {
            // Discarded now, not when the connection goes: others waiting for the name go on.
            let gone = st.sets.remove(&name);
            st.counters.discarded += 1;
            self.filling = None;
            self.shared.changed.notify_all();
            drop(st);
            drop(gone);
            return Err(r);
        }
        let Some(s) = st.sets.get_mut(&name) else {
            return Err(refuse(
                ErrorKind::InvalidState,
                format!("set `{name}` went away while it was checked"),
            ));
        };
        s.phase = Phase::Ready {
            file: file.clone(),
            desc: Arc::new(desc.clone()),
        };
        s.clients = 1;
        st.counters.puts += 1;
        self.filling = None;
        self.held = Some(name.clone());
        self.shared.changed.notify_all();
        tracing::info!(set = %name, bytes = desc.total_bytes, "filled by a client");
        Ok((Reply::Set { desc, fresh: true }, Some(file)))
    }
}

fn check_name(name: &str) -> Result<(), Refusal> {
    if name.is_empty() || name.len() > 4096 {
        return Err(refuse(
            ErrorKind::InvalidArgument,
            "a set needs a name of 1 to 4096 bytes",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{TensorSpec, WeightSetDesc};

    fn serve(dir: &Path, budget: Option<u64>) -> PathBuf {
        serve_with(dir, budget, Duration::from_secs(300))
    }

    fn serve_with(dir: &Path, budget: Option<u64>, fill_timeout: Duration) -> PathBuf {
        let socket = dir.join("s.sock");
        let mut c = StoreConfig::new(&socket);
        c.host_budget = budget;
        c.fill_timeout = fill_timeout;
        let server = StoreServer::bind(c).unwrap();
        std::thread::spawn(move || server.run());
        socket
    }

    fn hello(socket: &Path) -> UnixStream {
        let mut s = UnixStream::connect(socket).unwrap();
        wire::send(
            &mut s,
            &Request::Hello {
                magic: MAGIC.into(),
                protocol: PROTOCOL_VERSION,
            },
            None,
        )
        .unwrap();
        let (r, _): (Reply, _) = wire::recv(&mut s).unwrap().unwrap();
        assert!(matches!(r, Reply::Hello { .. }));
        s
    }

    fn ask(s: &mut UnixStream, req: Request) -> (Reply, Option<std::os::fd::OwnedFd>) {
        wire::send(s, &req, None).unwrap();
        wire::recv(s).unwrap().unwrap()
    }

    fn status(socket: &Path) -> StoreStatus {
        match ask(&mut hello(socket), Request::Status).0 {
            Reply::Status(s) => s,
            r => panic!("{r:?}"),
        }
    }

    /// Asks to put a one-tensor set `x` holding `bytes`; returns the reply and the memory.
    fn put_x(c: &mut UnixStream, bytes: &[u8]) -> (Reply, Option<std::os::fd::OwnedFd>) {
        let (desc, checksum) = one_tensor(bytes);
        ask(
            c,
            Request::Put {
                name: "x".into(),
                desc,
                checksum,
            },
        )
    }

    fn one_tensor(bytes: &[u8]) -> (WeightSetDesc, u64) {
        let desc = WeightSetDesc::layout(vec![TensorSpec {
            name: "w".into(),
            dtype: DType::U8,
            shape: vec![bytes.len() as u64],
        }])
        .unwrap();
        let sum = contents_checksum([("w", DType::U8, &[bytes.len() as u64][..], bytes)]);
        (desc, sum)
    }

    fn wait_until(socket: &Path, pred: impl Fn(&StoreStatus) -> bool) -> StoreStatus {
        let t = std::time::Instant::now();
        loop {
            let s = status(socket);
            if pred(&s) || t.elapsed() > std::time::Duration::from_secs(10) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_fill_whose_client_goes_before_committing_is_discarded_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let socket = serve(dir.path(), None);
        let (desc, sum) = one_tensor(&[7u8; 1000]);
        let mut c = hello(&socket);
        let (r, fd) = ask(
            &mut c,
            Request::Put {
                name: "x".into(),
                desc: desc.clone(),
                checksum: sum,
            },
        );
        assert!(matches!(r, Reply::Fill { bytes } if bytes == desc.total_bytes));
        assert!(fd.is_some());
        assert_eq!(status(&socket).sets[0].phase, "filling");
        drop(c); // as a SIGKILL would: the kernel closes the socket
        let s = wait_until(&socket, |s| s.sets.is_empty());
        assert!(s.sets.is_empty(), "{s:?}");
        assert_eq!(s.counters.discarded, 1);
        assert_eq!(s.host_used, 0);
    }

    #[test]
    fn a_fill_that_is_never_committed_expires_and_the_name_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let socket = serve_with(dir.path(), None, Duration::from_millis(200));
        let (desc, sum) = one_tensor(&[7u8; 1000]);
        let put = |c: &mut UnixStream| {
            ask(
                c,
                Request::Put {
                    name: "x".into(),
                    desc: desc.clone(),
                    checksum: sum,
                },
            )
            .0
        };
        let mut stuck = hello(&socket);
        assert!(matches!(put(&mut stuck), Reply::Fill { .. }));
        // Another client waits for the name, then gets it once the stuck fill expires.
        let mut next = hello(&socket);
        let t = Instant::now();
        assert!(matches!(put(&mut next), Reply::Fill { .. }));
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert_eq!(status(&socket).counters.discarded, 1);
        // The stuck client's commit now finds nothing of its own.
        assert!(matches!(
            ask(&mut stuck, Request::Commit).0,
            Reply::Error {
                kind: ErrorKind::InvalidState,
                ..
            }
        ));
    }

    #[test]
    fn a_fill_with_other_bytes_than_its_checksum_says_is_refused_and_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let socket = serve(dir.path(), None);
        let mut c = hello(&socket);
        let (_, fd) = put_x(&mut c, &[7u8; 1000]);
        {
            let f = File::from(fd.unwrap());
            let mut m = memfd::map_mut(&f).unwrap();
            m[..1000].fill(8);
        }
        match ask(&mut c, Request::Commit).0 {
            Reply::Error { kind, message } => {
                assert_eq!(kind, ErrorKind::ChecksumMismatch);
                assert!(message.contains("discarded"), "{message}");
            }
            r => panic!("{r:?}"),
        }
        let s = status(&socket);
        assert!(s.sets.is_empty(), "{s:?}");
        assert_eq!(s.counters.discarded, 1);
        // The connection is still usable, and one set per connection holds.
        assert!(matches!(
            ask(&mut c, Request::Commit).0,
            Reply::Error {
                kind: ErrorKind::InvalidState,
                ..
            }
        ));
    }

    #[test]
    fn a_client_that_keeps_a_writable_mapping_cannot_commit() {
        let dir = tempfile::tempdir().unwrap();
        let socket = serve(dir.path(), None);
        let mut c = hello(&socket);
        let (_, fd) = put_x(&mut c, &[7u8; 1000]);
        let f = File::from(fd.unwrap());
        let mut m = memfd::map_mut(&f).unwrap();
        m[..1000].fill(7);
        match ask(&mut c, Request::Commit).0 {
            Reply::Error { kind, message } => {
                assert_eq!(kind, ErrorKind::InvalidState);
                assert!(message.contains("unmap"), "{message}");
            }
            r => panic!("{r:?}"),
        }
        drop(m);
        assert!(status(&socket).sets.is_empty());
    }

    #[test]
    fn concurrent_requests_for_one_set_load_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let socket = serve(dir.path(), None);
        let path = dir.path().join("m.safetensors");
        let data = vec![3u8; 8 << 20];
        crate::load::save(&path, &[("w", DType::U8, &[8 << 20], &data)]).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (socket, path) = (socket.clone(), path.clone());
                std::thread::spawn(move || {
                    let mut c = hello(&socket);
                    let (r, fd) = ask(
                        &mut c,
                        Request::Attach {
                            name: "m".into(),
                            path,
                            cast: None,
                        },
                    );
                    let Reply::Set { desc, .. } = r else {
                        panic!("{r:?}")
                    };
                    let f = File::from(fd.unwrap());
                    assert!(memfd::is_sealed(&f));
                    let m = memfd::map(&f).unwrap();
                    let t = desc.find("w").unwrap();
                    assert!(m[t.offset as usize..t.end() as usize]
                        .iter()
                        .all(|&b| b == 3));
                    c
                })
            })
            .collect();
        let conns: Vec<UnixStream> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let s = status(&socket);
        assert_eq!((s.counters.loads, s.counters.attaches), (1, 3), "{s:?}");
        assert_eq!(s.sets[0].clients, 4);
        drop(conns);
        let s = wait_until(&socket, |s| s.sets[0].clients == 0);
        assert_eq!(s.sets[0].clients, 0);
    }

    #[test]
    fn a_second_store_on_a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let socket = serve(dir.path(), None);
        let e = StoreServer::bind(StoreConfig::new(&socket)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
        let stale = dir.path().join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        StoreServer::bind(StoreConfig::new(&stale)).unwrap();
    }
}
