//! Writing safetensors files: for tests, benchmarks and tools that make small checkpoints.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::header::{encode_header, HeaderTensor};
use crate::error::{Error, Result};
use crate::weights::{byte_len, DType};

/// Writes `tensors` (name, dtype, shape, bytes) to a safetensors file at `path`, data in the
/// order given. Each tensor's bytes must match its dtype and shape.
pub fn save(path: &Path, tensors: &[(&str, DType, &[u64], &[u8])]) -> Result<()> {
    let mut header = Vec::with_capacity(tensors.len());
    let mut at = 0u64;
    for &(name, dtype, shape, data) in tensors {
        if byte_len(dtype, shape) != Some(data.len() as u64) {
            return Err(Error::InvalidArgument(format!(
                "tensor `{name}`: {} bytes given for shape {shape:?} of {dtype}",
                data.len()
            )));
        }
        header.push(HeaderTensor {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            begin: at,
            end: at + data.len() as u64,
        });
        at += data.len() as u64;
    }
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    f.write_all(&encode_header(&header, &BTreeMap::new()))
        .map_err(io)?;
    for &(_, _, _, data) in tensors {
        f.write_all(data).map_err(io)?;
    }
    f.flush().map_err(io)
}
