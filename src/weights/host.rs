//! [`HostWeights`]: a weight set whose bytes are on the host, pinned: one arena range, or (in
//! direct mode) file mappings registered read-only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::{byte_len, DType, TensorSpec, WeightSetDesc};
use crate::arena::{HostRange, PinnedArena, MAX_REGISTER_BYTES};
use crate::backend::SharedBackend;
use crate::error::{Error, Result};

/// A file mapped read-only and registered with the backend (read-only) for as long as it lives.
pub struct MappedFile {
    path: PathBuf,
    map: Mmap,
    backend: SharedBackend,
    /// Start of each registration.
    chunks: Vec<*const u8>,
}

// SAFETY: the mapping is read-only and owned by this value; the pointers are addresses inside
// it, used only to unregister on drop.
unsafe impl Send for MappedFile {}
// SAFETY: as above; shared access only reads the mapping.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Registers the whole of `map` (the mapping of `path`) read-only with `backend`, in chunks
    /// of at most [`MAX_REGISTER_BYTES`].
    pub fn register(path: &Path, map: Mmap, backend: SharedBackend) -> Result<MappedFile> {
        let mut f = MappedFile {
            path: path.to_path_buf(),
            map,
            backend,
            chunks: Vec::new(),
        };
        let len = f.map.len() as u64;
        let base = f.map.as_ptr();
        let mut off = 0u64;
        while off < len {
            let n = MAX_REGISTER_BYTES.min(len - off);
            // SAFETY: `off < len`: inside the mapping.
            let p = unsafe { base.add(off as usize) };
            // SAFETY: `[p, p + n)` lies in the mapping, which outlives the registration (it is
            // unregistered in `drop` before the mapping is unmapped); read-only, so the device
            // never writes the file's pages.
            unsafe { f.backend.host_register(p as *mut u8, n, true)? };
            f.chunks.push(p);
            off += n;
        }
        Ok(f)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        for &c in &self.chunks {
            // SAFETY: registered in `register`; the owner of the weight set guarantees no copy
            // still reads it (the same contract as for arena ranges).
            if let Err(e) = unsafe { self.backend.host_unregister(c as *mut u8) } {
                tracing::warn!("unregistering {}: {e}", self.path.display());
            }
        }
    }
}

/// A contiguous piece of a set's host bytes: `[offset, offset + len)` of the set at `ptr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSegment {
    /// Offset within the set.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Host address of the first byte (pinned or registered).
    pub ptr: *const u8,
}

enum Bytes {
    Arena(HostRange),
    /// File mappings; `bases[k]` is the set offset of file `k`'s data section, which starts at
    /// byte `starts[k]` of the mapping and holds `lens[k]` bytes.
    Mapped {
        files: Vec<MappedFile>,
        bases: Vec<u64>,
        starts: Vec<u64>,
        lens: Vec<u64>,
    },
    /// Another process's sealed shared memory (the host store), mapped read-only and
    /// registered; `keep` holds what keeps it shared (the store connection) for as long as the
    /// bytes are used.
    Shared {
        file: MappedFile,
        _keep: Box<dyn Send + Sync>,
    },
}

/// A weight set on the host: its description and its pinned bytes.
pub struct HostWeights {
    desc: WeightSetDesc,
    bytes: Bytes,
}

impl std::fmt::Debug for HostWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostWeights")
            .field("tensors", &self.desc.tensors.len())
            .field("total_bytes", &self.desc.total_bytes)
            .field("direct", &self.is_direct())
            .field("shared", &self.is_shared())
            .finish()
    }
}

impl HostWeights {
    /// A set whose bytes are `range` (at least `desc.total_bytes` long).
    pub fn from_range(desc: WeightSetDesc, range: HostRange) -> Result<HostWeights> {
        if range.len() < desc.total_bytes {
            return Err(Error::InvalidArgument(format!(
                "a range of {} bytes cannot hold a weight set of {} bytes",
                range.len(),
                desc.total_bytes
            )));
        }
        Ok(HostWeights {
            desc,
            bytes: Bytes::Arena(range),
        })
    }

    /// A set over registered file mappings: file `k`'s data section (`lens[k]` bytes from byte
    /// `starts[k]` of its mapping) is the set's bytes from `bases[k]`.
    pub(crate) fn from_mapped(
        desc: WeightSetDesc,
        files: Vec<MappedFile>,
        bases: Vec<u64>,
        starts: Vec<u64>,
        lens: Vec<u64>,
    ) -> HostWeights {
        HostWeights {
            desc,
            bytes: Bytes::Mapped {
                files,
                bases,
                starts,
                lens,
            },
        }
    }

    /// A set whose bytes are `file`'s first `desc.total_bytes` bytes, shared with other
    /// processes (the host store's memory); `keep` is dropped with the set, after the bytes.
    pub(crate) fn from_shared(
        desc: WeightSetDesc,
        file: MappedFile,
        keep: Box<dyn Send + Sync>,
    ) -> HostWeights {
        HostWeights {
            desc,
            bytes: Bytes::Shared { file, _keep: keep },
        }
    }

    /// Copies arrays into one arena range laid out by [`WeightSetDesc::layout`]; for tests and
    /// bindings. Each array's bytes must match its dtype and shape.
    pub fn from_arrays(
        arena: &Arc<PinnedArena>,
        arrays: Vec<(String, DType, Vec<u64>, &[u8])>,
    ) -> Result<HostWeights> {
        for (name, dtype, shape, data) in &arrays {
            if byte_len(*dtype, shape) != Some(data.len() as u64) {
                return Err(Error::InvalidArgument(format!(
                    "array `{name}`: {} bytes given for shape {shape:?} of {dtype}",
                    data.len()
                )));
            }
        }
        let specs = arrays
            .iter()
            .map(|(name, dtype, shape, _)| TensorSpec {
                name: name.clone(),
                dtype: *dtype,
                shape: shape.clone(),
            })
            .collect();
        let desc = WeightSetDesc::layout(specs)?;
        let mut range = arena.alloc(desc.total_bytes)?;
        let out = range.as_mut_slice();
        out.fill(0);
        for (name, _, _, data) in &arrays {
            if let Some(t) = desc.find(name) {
                out[t.offset as usize..t.end() as usize].copy_from_slice(data);
            }
        }
        HostWeights::from_range(desc, range)
    }

    /// The description.
    pub fn desc(&self) -> &WeightSetDesc {
        &self.desc
    }

    /// Bytes of the set.
    pub fn total_bytes(&self) -> u64 {
        self.desc.total_bytes
    }

    /// True when the bytes are registered file mappings (direct mode), not an arena range.
    pub fn is_direct(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped { .. })
    }

    /// True when the bytes are shared with other processes (the host store's sealed memory).
    pub fn is_shared(&self) -> bool {
        matches!(self.bytes, Bytes::Shared { .. })
    }

    /// The arena range holding the set, unless it was loaded in direct mode or is shared.
    pub fn host_range(&self) -> Option<&HostRange> {
        match &self.bytes {
            Bytes::Arena(r) => Some(r),
            Bytes::Mapped { .. } | Bytes::Shared { .. } => None,
        }
    }

    /// The set's bytes as one slice, when they are contiguous (an arena range, shared memory).
    pub fn contiguous(&self) -> Option<&[u8]> {
        match &self.bytes {
            Bytes::Arena(r) => r.as_slice().get(..self.desc.total_bytes as usize),
            Bytes::Shared { file, .. } => file.bytes().get(..self.desc.total_bytes as usize),
            Bytes::Mapped { .. } => None,
        }
    }

    /// The set's bytes as contiguous host pieces, by offset: one for an arena set, one per file
    /// in direct mode.
    pub fn segments(&self) -> Vec<HostSegment> {
        match &self.bytes {
            Bytes::Arena(r) => vec![HostSegment {
                offset: 0,
                len: self.desc.total_bytes,
                ptr: r.as_ptr(),
            }],
            Bytes::Shared { file, .. } => vec![HostSegment {
                offset: 0,
                len: self.desc.total_bytes,
                ptr: file.bytes().as_ptr(),
            }],
            Bytes::Mapped {
                files,
                bases,
                starts,
                lens,
            } => (0..files.len())
                .map(|k| HostSegment {
                    offset: bases[k],
                    len: lens[k],
                    ptr: files[k].bytes()[starts[k] as usize..].as_ptr(),
                })
                .collect(),
        }
    }

    /// The bytes of tensor `index`.
    pub fn tensor_bytes(&self, index: usize) -> Option<&[u8]> {
        let t = self.desc.tensors.get(index)?;
        match &self.bytes {
            Bytes::Arena(r) => r.as_slice().get(t.offset as usize..t.end() as usize),
            Bytes::Shared { file, .. } => file.bytes().get(t.offset as usize..t.end() as usize),
            Bytes::Mapped {
                files,
                bases,
                starts,
                lens,
            } => {
                let k = bases.iter().rposition(|&b| b <= t.offset)?;
                let rel = t.offset - bases[k];
                if rel + t.len > lens[k] {
                    return None;
                }
                let from = (starts[k] + rel) as usize;
                files[k].bytes().get(from..from + t.len as usize)
            }
        }
    }

    /// The bytes of the tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&[u8]> {
        self.tensor_bytes(self.desc.position(name)?)
    }
}
