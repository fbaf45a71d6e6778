//! Finding a checkpoint's files: one `.safetensors` file, a sharded Hugging Face checkpoint
//! (`model.safetensors.index.json`), or a directory holding `model.safetensors` or shards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// Name of the index of a sharded Hugging Face checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Largest `model.safetensors.index.json` read, as a header is capped at
/// [`MAX_HEADER_BYTES`](super::MAX_HEADER_BYTES): real indexes are a few megabytes.
pub const MAX_INDEX_BYTES: u64 = 100_000_000;

/// Why a path that is neither a regular file nor a directory cannot be read as a checkpoint.
pub(crate) fn not_regular(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    format!("is {what}; a checkpoint is a regular .safetensors file, an index file or a directory")
}

/// The files of one weight set.
#[derive(Clone, Debug, Default)]
pub(crate) struct Checkpoint {
    /// The safetensors files, in a fixed order.
    pub(crate) files: Vec<PathBuf>,
    /// The index file and its weight map (tensor -> file), when there is one.
    pub(crate) index: Option<(PathBuf, BTreeMap<String, PathBuf>)>,
}

fn malformed(path: &Path, problem: impl Into<String>) -> Error {
    Error::Malformed {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Resolves `path` (a file, an index file or a directory) to the files of one weight set.
pub(crate) fn resolve(path: &Path) -> Result<Checkpoint> {
    let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
    if !meta.is_file() && !meta.is_dir() {
        return Err(malformed(path, not_regular(&meta)));
    }
    if meta.is_file() {
        if path.file_name().is_some_and(|n| n == INDEX_FILE) {
            return read_index(path);
        }
        return Ok(Checkpoint {
            files: vec![path.to_path_buf()],
            index: None,
        });
    }
    let index = path.join(INDEX_FILE);
    if index.is_file() {
        return read_index(&index);
    }
    let single = path.join("model.safetensors");
    if single.is_file() {
        return Ok(Checkpoint {
            files: vec![single],
            index: None,
        });
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(malformed(
            path,
            "directory holds no .safetensors file and no model.safetensors.index.json",
        ));
    }
    Ok(Checkpoint { files, index: None })
}

fn read_index(index: &Path) -> Result<Checkpoint> {
    use std::io::Read;
    let file = std::fs::File::open(index).map_err(|e| io(index, e))?;
    let len = file.metadata().map_err(|e| io(index, e))?.len();
    if len > MAX_INDEX_BYTES {
        return Err(malformed(
            index,
            format!("index is {len} bytes, over the limit of {MAX_INDEX_BYTES} bytes"),
        ));
    }
    // Read at most one byte past the limit, in case the file grows after the check.
    let mut text = Vec::with_capacity(len as usize);
    file.take(MAX_INDEX_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| io(index, e))?;
    if text.len() as u64 > MAX_INDEX_BYTES {
        return Err(malformed(
            index,
            format!("index grew past the limit of {MAX_INDEX_BYTES} bytes while read"),
        ));
    }
    let v: Value = serde_json::from_slice(&text)
        .map_err(|e| malformed(index, format!("index is not valid JSON: {e}")))?;
    let Some(Value::Object(map)) = v.get("weight_map") else {
        return Err(malformed(index, "index has no `weight_map` object"));
    };
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut weight_map = BTreeMap::new();
    let mut files = BTreeSet::new();
    for (tensor, file) in map {
        let Value::String(file) = file else {
            return Err(malformed(
                index,
                format!("weight_map entry of `{tensor}` is not a file name"),
            ));
        };
        let rel = Path::new(file);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(malformed(
                index,
                format!("shard `{file}` is not a plain path inside the checkpoint directory"),
            ));
        }
        let full = dir.join(rel);
        if files.insert(full.clone()) && !full.is_file() {
            return Err(malformed(
                index,
                format!(
                    "names shard `{file}`, which does not exist ({})",
                    full.display()
                ),
            ));
        }
        weight_map.insert(tensor.clone(), full);
    }
    if files.is_empty() {
        return Err(malformed(index, "weight_map names no shard"));
    }
    Ok(Checkpoint {
        files: files.into_iter().collect(),
        index: Some((index.to_path_buf(), weight_map)),
    })
}
