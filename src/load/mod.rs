//! Loading safetensors checkpoints into the pinned arena.
//!
//! [`inspect`] reads only headers; [`load`] opens every file, checks every header
//! ([`parse_header`]), lays the tensors out as one weight set (layer groups contiguous, see
//! [`WeightSetDesc::layout`]), takes one arena range for it and copies the bytes with several
//! threads using positioned reads (`pread`), casting floats when asked: a file truncated or
//! replaced while it loads is an error naming the file and the offset, and the set stays
//! unloaded. With [`LoadOptions::direct`] nothing is copied: the files are mapped (memmap2),
//! registered read-only, and the set's bytes are the page cache; a file truncated while mapped
//! faults (`SIGBUS`) on access, as with every mmap-based reader.
//!
//! A path is a `.safetensors` file, a `model.safetensors.index.json`, or a directory holding
//! either the index, `model.safetensors`, or shards; a sharded checkpoint is one weight set.
//! Every malformed input fails with [`Error::Malformed`] naming the file and the problem,
//! before any arena range is taken or any file registered.
//!
//! ```no_run
//! use std::sync::Arc;
//! use vramswap::arena::{ArenaConfig, PinnedArena};
//! use vramswap::backend::sim::SimBackend;
//! use vramswap::load::{load, LoadOptions};
//!
//! let arena = PinnedArena::new(Arc::new(SimBackend::with_capacity(1 << 30)), ArenaConfig::default())?;
//! let w = load("model_dir".as_ref(), &arena, &LoadOptions::default())?;
//! println!("{} tensors, {} bytes", w.desc().tensors.len(), w.total_bytes());
//! # Ok::<(), vramswap::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::Mmap;
use serde::Serialize;

use crate::arena::PinnedArena;
use crate::error::{Error, Result};
use crate::weights::{
    DType, HostWeights, MappedFile, TensorInfo, TensorSpec, WeightSetDesc, TENSOR_ALIGN,
};

mod copy;
mod header;
mod save;
mod source;

pub use header::{
    encode_header, parse_header, Bytes, Header, HeaderError, HeaderTensor, MAX_HEADER_BYTES,
    MAX_TENSORS,
};
pub use save::save;
pub use source::{INDEX_FILE, MAX_INDEX_BYTES};

/// Progress of a load: destination bytes done of the total, and time since the copy began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LoadProgress {
    /// Bytes written into the arena so far.
    pub bytes_done: u64,
    /// Bytes the set will hold.
    pub bytes_total: u64,
    /// Time since copying began.
    pub elapsed: Duration,
}

/// Most copy threads a load takes ([`LoadOptions::threads`]): far past what saturates memory
/// bandwidth, and a bound on the threads a mistyped count can spawn.
pub const MAX_LOAD_THREADS: usize = 256;

/// A progress callback; called on the thread that called [`load`], once with 0 bytes done before
/// copying begins, now and then while it runs, and once at the end.
pub type ProgressFn = Arc<dyn Fn(LoadProgress) + Send + Sync>;

/// How to load.
#[derive(Clone)]
pub struct LoadOptions {
    /// Cast every F32/F16/BF16 tensor to this type (one of those three); other dtypes are kept.
    pub cast: Option<DType>,
    /// Register the mapped files read-only instead of copying into the arena. No cast. The set
    /// then keeps each file's tensor order (file `k`'s data section starts at a 256-byte
    /// aligned offset after file `k - 1`'s), so layer groups need not be contiguous: copy it by
    /// [`HostWeights::segments`]. The files stay mapped and registered until the set is dropped.
    pub direct: bool,
    /// Copy threads, at most [`MAX_LOAD_THREADS`] (0 is taken as 1).
    pub threads: usize,
    /// Called with progress now and then, and once at the end.
    pub progress: Option<ProgressFn>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            cast: None,
            direct: false,
            threads: std::thread::available_parallelism()
                .map_or(4, |n| n.get())
                .min(8),
            progress: None,
        }
    }
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("cast", &self.cast)
            .field("direct", &self.direct)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// One file of a checkpoint, as its header describes it.
#[derive(Clone, Debug, Serialize)]
pub struct FileHeader {
    /// The file.
    pub path: PathBuf,
    /// Its length.
    pub file_len: u64,
    /// The JSON header's length.
    pub header_len: u64,
    /// Bytes of its data section.
    pub data_len: u64,
    /// Tensors it holds.
    pub tensors: usize,
    /// Its `__metadata__`.
    pub metadata: BTreeMap<String, String>,
}

/// Where a tensor's bytes are in the checkpoint's files.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TensorSource {
    /// Index into [`Inspection::files`].
    pub file: usize,
    /// Byte offset in that file (data section start plus the tensor's begin).
    pub file_offset: u64,
}

/// What a checkpoint holds, from its headers alone.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// The path asked about.
    pub path: PathBuf,
    /// Its files.
    pub files: Vec<FileHeader>,
    /// The weight set, laid out as [`load`] lays it out without a cast.
    pub desc: WeightSetDesc,
    /// For each tensor of `desc`, where its bytes are.
    pub sources: Vec<TensorSource>,
}

fn malformed(path: &Path, problem: impl Into<String>) -> Error {
    Error::Malformed {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// One checkpoint file, open for positioned reads, with the length its header was checked
/// against.
struct SourceFile {
    file: File,
    len: u64,
}

/// Opens a regular file and reads and checks its header with positioned reads (nothing is
/// mapped). A FIFO, socket or device is refused before it is opened: opening a FIFO would block
/// and a device has no length.
fn open_file(path: &Path) -> Result<(SourceFile, Header)> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(malformed(path, source::not_regular(&meta)));
    }
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut prefix = vec![0u8; len.min(8) as usize];
    copy::read_exact_at(&file, path, &mut prefix, 0)?;
    let need = header::prefix_len(&prefix, len);
    if need > prefix.len() as u64 {
        prefix.resize(need as usize, 0);
        copy::read_exact_at(&file, path, &mut prefix[8..], 8)?;
    }
    let h =
        header::parse_header_prefix(&prefix, len).map_err(|e| malformed(path, e.to_string()))?;
    Ok((SourceFile { file, len }, h))
}

/// Maps a checked file read-only for direct mode, refusing it if its length changed since its
/// header was read.
fn map_file(path: &Path, src: &SourceFile) -> Result<Mmap> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    // SAFETY: the mapping is read-only and private to this process. Another process truncating
    // the file while it is mapped would fault on access (SIGBUS); that is the documented limit
    // of direct mode (README, "Reliability"). Copying loads never map.
    let map = unsafe { Mmap::map(&src.file) }.map_err(io)?;
    if map.len() as u64 != src.len {
        return Err(malformed(
            path,
            format!(
                "file is now {} bytes long, not the {} its header was read from \
                 (was it changed while loading?)",
                map.len(),
                src.len
            ),
        ));
    }
    Ok(map)
}

/// A checkpoint's headers with its open files.
struct Opened {
    inspection: Inspection,
    handles: Vec<SourceFile>,
    headers: Vec<Header>,
}

fn open(path: &Path) -> Result<Opened> {
    let ck = source::resolve(path)?;
    let mut files = Vec::new();
    let mut handles = Vec::new();
    let mut headers = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut specs = Vec::new();
    let mut where_: HashMap<String, TensorSource> = HashMap::new();
    for (k, f) in ck.files.iter().enumerate() {
        let (src, h) = open_file(f)?;
        for t in &h.tensors {
            if let Some(&other) = seen.get(&t.name) {
                return Err(malformed(
                    f,
                    format!(
                        "tensor `{}` is also in {}",
                        t.name,
                        ck.files[other].display()
                    ),
                ));
            }
            seen.insert(t.name.clone(), k);
            specs.push(TensorSpec {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
            });
            where_.insert(
                t.name.clone(),
                TensorSource {
                    file: k,
                    file_offset: h.data_start + t.begin,
                },
            );
        }
        files.push(FileHeader {
            path: f.clone(),
            file_len: src.len,
            header_len: h.header_len,
            data_len: h.data_len,
            tensors: h.tensors.len(),
            metadata: h.metadata.clone(),
        });
        handles.push(src);
        headers.push(h);
    }
    if let Some((index, weight_map)) = &ck.index {
        for (tensor, file) in weight_map {
            let k = ck.files.iter().position(|f| f == file);
            if k.is_none() || seen.get(tensor) != k.as_ref() {
                return Err(malformed(
                    index,
                    format!(
                        "maps tensor `{tensor}` to {}, which does not hold it",
                        file.display()
                    ),
                ));
            }
        }
    }
    let desc = WeightSetDesc::layout(specs).map_err(|e| malformed(path, e.to_string()))?;
    let sources = desc.tensors.iter().map(|t| where_[&t.name]).collect();
    Ok(Opened {
        inspection: Inspection {
            path: path.to_path_buf(),
            files,
            desc,
            sources,
        },
        handles,
        headers,
    })
}

/// Reads a checkpoint's headers (nothing is copied or pinned) and describes its weight set.
pub fn inspect(path: &Path) -> Result<Inspection> {
    open(path).map(|o| o.inspection)
}

/// Loads a checkpoint into `arena` as one weight set (see the module docs).
pub fn load(path: &Path, arena: &Arc<PinnedArena>, opts: &LoadOptions) -> Result<HostWeights> {
    check_options(opts)?;
    let opened = open(path)?;
    if opts.direct {
        return load_direct(opened, arena, opts);
    }
    let planned = Planned::new(path, opened, opts)?;
    let mut range = arena.alloc(planned.desc.total_bytes)?;
    // On a failed read the range is dropped (returned to the arena): the set stays unloaded.
    let desc = planned.copy_into(range.as_mut_slice(), opts)?;
    HostWeights::from_range(desc, range)
}

fn check_options(opts: &LoadOptions) -> Result<()> {
    if opts.threads > MAX_LOAD_THREADS {
        return Err(Error::InvalidArgument(format!(
            "{} copy threads: the most a load takes is {MAX_LOAD_THREADS}",
            opts.threads
        )));
    }
    if let Some(c) = opts.cast {
        if !c.is_castable_float() {
            return Err(Error::InvalidArgument(format!(
                "cast to {c}: only F32, F16 and BF16 are supported"
            )));
        }
        if opts.direct {
            return Err(Error::InvalidArgument(
                "a cast needs a copy; it cannot be combined with direct mode".into(),
            ));
        }
    }
    Ok(())
}

/// A checkpoint opened and checked, with the layout a copying load gives it: the first half of
/// [`load`], for callers that copy into memory of their own (the host store's shared memory).
pub(crate) struct Planned {
    path: PathBuf,
    opened: Opened,
    desc: WeightSetDesc,
}

impl Planned {
    fn new(path: &Path, opened: Opened, opts: &LoadOptions) -> Result<Planned> {
        let cast = |d: DType| match opts.cast {
            Some(c) if d.is_castable_float() => c,
            _ => d,
        };
        let specs = opened
            .inspection
            .desc
            .tensors
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                dtype: cast(t.dtype),
                shape: t.shape.clone(),
            })
            .collect();
        let desc = WeightSetDesc::layout(specs).map_err(|e| malformed(path, e.to_string()))?;
        Ok(Planned {
            path: path.to_path_buf(),
            opened,
            desc,
        })
    }

    /// Opens and checks `path` for a copying load with `opts` (`opts.direct` is not looked at).
    pub(crate) fn open(path: &Path, opts: &LoadOptions) -> Result<Planned> {
        check_options(&LoadOptions {
            direct: false,
            ..opts.clone()
        })?;
        Planned::new(path, open(path)?, opts)
    }

    /// The set as it will be laid out.
    pub(crate) fn desc(&self) -> &WeightSetDesc {
        &self.desc
    }

    /// The checkpoint's files.
    pub(crate) fn files(&self) -> &[FileHeader] {
        &self.opened.inspection.files
    }

    /// Copies (and casts) every tensor into `dst` (at least `desc().total_bytes` long) with
    /// `opts.threads` threads, reporting to `opts.progress`; returns the description. On error
    /// `dst` is partly written and must be discarded.
    pub(crate) fn copy_into(self, dst: &mut [u8], opts: &LoadOptions) -> Result<WeightSetDesc> {
        let Planned { path, opened, desc } = self;
        let Opened {
            inspection,
            handles,
            ..
        } = opened;
        if (dst.len() as u64) < desc.total_bytes {
            return Err(Error::InvalidArgument(format!(
                "{} bytes cannot hold a set of {} bytes",
                dst.len(),
                desc.total_bytes
            )));
        }
        let jobs = inspection
            .desc
            .tensors
            .iter()
            .zip(&inspection.sources)
            .zip(&desc.tensors)
            .map(|((src, at), dst)| copy::CopyJob {
                src: copy::Src {
                    file: &handles[at.file].file,
                    path: &inspection.files[at.file].path,
                    offset: at.file_offset,
                    len: src.len,
                },
                from: src.dtype,
                to: dst.dtype,
                dst_offset: dst.offset,
            })
            .collect();
        let total = desc.total_bytes;
        let started = Instant::now();
        let mut report = |bytes_done| {
            if let Some(p) = &opts.progress {
                p(LoadProgress {
                    bytes_done,
                    bytes_total: total,
                    elapsed: started.elapsed(),
                })
            }
        };
        report(0);
        copy::copy_all(jobs, dst, opts.threads, &mut report)?;
        tracing::debug!(bytes = total, took = ?started.elapsed(), "loaded {}", path.display());
        Ok(desc)
    }
}

fn load_direct(
    opened: Opened,
    arena: &Arc<PinnedArena>,
    opts: &LoadOptions,
) -> Result<HostWeights> {
    let Opened {
        inspection,
        handles,
        headers,
    } = opened;
    let (mut bases, mut starts, mut lens) = (Vec::new(), Vec::new(), Vec::new());
    let mut base = 0u64;
    let mut tensors = Vec::new();
    for h in &headers {
        base = base.next_multiple_of(TENSOR_ALIGN);
        for t in &h.tensors {
            tensors.push(TensorInfo {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                offset: base + t.begin,
                len: t.end - t.begin,
            });
        }
        bases.push(base);
        starts.push(h.data_start);
        lens.push(h.data_len);
        base += h.data_len;
    }
    tensors.sort_by_key(|t| t.offset);
    let desc = WeightSetDesc::new(tensors, base)
        .map_err(|e| malformed(&inspection.path, e.to_string()))?;
    let mut files = Vec::with_capacity(handles.len());
    for (src, fh) in handles.iter().zip(&inspection.files) {
        let map = map_file(&fh.path, src)?;
        // On failure the files registered so far are dropped, and so unregistered.
        files.push(MappedFile::register(
            &fh.path,
            map,
            arena.backend().clone(),
        )?);
    }
    if let Some(p) = &opts.progress {
        p(LoadProgress {
            bytes_done: desc.total_bytes,
            bytes_total: desc.total_bytes,
            elapsed: Duration::ZERO,
        });
    }
    Ok(HostWeights::from_mapped(desc, files, bases, starts, lens))
}

#[cfg(test)]
mod tests;
