//! The safetensors header parser: every length and offset checked, every problem its own error.
//!
//! A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of JSON (an
//! object from tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}`, plus an
//! optional `__metadata__` object of strings), then the data section, to which the offsets are
//! relative. This parser is ours rather than the `safetensors` crate's because its errors name
//! the tensor and the numbers at fault, it finds duplicate names (a JSON map silently keeps the
//! last), and it accepts gaps in the data section.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::weights::{byte_len, DType};

/// Largest header accepted: 100 MB, as the `safetensors` crate does.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Most tensors one file's header may describe. The reference reader has no such limit, only
/// the 100 MB header cap, under which 1.4 million one-byte tensors fit and cost 2.4 GB of RAM
/// to parse (issue 19); at this limit `vramswap inspect` of such a file peaked at 154 MB of RSS
/// (100,000 one-byte tensors, a debug build, 2026-12-04). Real checkpoints stay
/// far below it (a shard of the largest mixture-of-experts models holds a few thousand).
pub const MAX_TENSORS: usize = 100_000;

/// One tensor as a header describes it; offsets relative to the data section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderTensor {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// First byte in the data section.
    pub begin: u64,
    /// One past the last byte in the data section.
    pub end: u64,
}

/// A parsed, checked header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The JSON's length (the file's first 8 bytes).
    pub header_len: u64,
    /// Where the data section starts in the file: `8 + header_len`.
    pub data_start: u64,
    /// Bytes of the data section: the rest of the file.
    pub data_len: u64,
    /// Tensors, in file order.
    pub tensors: Vec<HeaderTensor>,
    /// `__metadata__`, if any.
    pub metadata: BTreeMap<String, String>,
}

/// What is wrong with a header. The loader adds the file's path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The file holds no bytes.
    #[error("file is empty")]
    Empty,
    /// Fewer than 8 bytes: not even the header length.
    #[error("file is {len} bytes, too short for the 8-byte header length")]
    TooShort {
        /// File length.
        len: u64,
    },
    /// The header describes more than [`MAX_TENSORS`] tensors.
    #[error("the header describes more than {MAX_TENSORS} tensors, the most vramswap reads from one file")]
    TooManyTensors,
    /// The header length is over [`MAX_HEADER_BYTES`].
    #[error("header length {header_len} bytes exceeds the limit of {MAX_HEADER_BYTES} bytes")]
    HeaderTooLarge {
        /// Claimed header length.
        header_len: u64,
    },
    /// The header runs past the end of the file.
    #[error("header length {header_len} bytes runs past the end of the file ({file_len} bytes)")]
    HeaderPastEnd {
        /// Claimed header length.
        header_len: u64,
        /// File length.
        file_len: u64,
    },
    /// The header is not JSON.
    #[error("header is not valid JSON: {0}")]
    InvalidJson(String),
    /// The header is JSON but not an object.
    #[error("header is not a JSON object of tensors: {0}")]
    NotAnObject(String),
    /// A name appears twice.
    #[error("tensor `{0}` is listed twice")]
    DuplicateName(String),
    /// A dtype this crate does not know.
    #[error("tensor `{tensor}`: unknown dtype `{dtype}`")]
    UnknownDtype {
        /// Tensor name.
        tensor: String,
        /// The dtype as written.
        dtype: String,
    },
    /// A tensor entry lacks a field or has one of the wrong type.
    #[error("tensor `{tensor}`: {problem}")]
    BadEntry {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// `__metadata__` is not an object of strings.
    #[error("__metadata__: {0}")]
    BadMetadata(String),
    /// The shape's byte size disagrees with the data offsets.
    #[error(
        "tensor `{tensor}`: shape {shape:?} of {dtype} needs {expected} bytes but data_offsets span {actual}"
    )]
    ShapeMismatch {
        /// Tensor name.
        tensor: String,
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<u64>,
        /// Bytes the shape needs (`None` printed as overflow).
        expected: Bytes,
        /// Bytes the offsets span.
        actual: u64,
    },
    /// The offsets point past the data section.
    #[error(
        "tensor `{tensor}`: data_offsets end at byte {end}, past the end of the data section ({data_len} bytes)"
    )]
    OffsetsPastData {
        /// Tensor name.
        tensor: String,
        /// End offset.
        end: u64,
        /// Data section length.
        data_len: u64,
    },
    /// Two tensors share bytes.
    #[error("tensors `{first}` (bytes {first_begin}..{first_end}) and `{second}` (bytes {second_begin}..{second_end}) overlap")]
    Overlap {
        /// The one that starts first.
        first: String,
        /// Its range.
        first_begin: u64,
        /// Its range.
        first_end: u64,
        /// The other.
        second: String,
        /// Its range.
        second_begin: u64,
        /// Its range.
        second_end: u64,
    },
    /// Bytes of the data section that no tensor covers before a tensor; the reference
    /// `safetensors` reader refuses them (`InvalidOffset`).
    #[error("tensor `{tensor}` starts at byte {begin} of the data section, but the tensors before it end at byte {expected}: a gap (the reference safetensors reader refuses it)")]
    Gap {
        /// The tensor after the gap.
        tensor: String,
        /// Where it starts.
        begin: u64,
        /// Where the tensors before it end.
        expected: u64,
    },
    /// Bytes after the last tensor; the reference `safetensors` reader refuses them
    /// (`MetadataIncompleteBuffer`).
    #[error("the tensors end at byte {end} of the data section, which is {data_len} bytes long: trailing data (the reference safetensors reader refuses it)")]
    TrailingData {
        /// Where the last tensor ends.
        end: u64,
        /// Data section length.
        data_len: u64,
    },
}

/// A byte count that may have overflowed `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub Option<u64>);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("more than 2^64"),
        }
    }
}

/// A JSON value whose objects hold no key twice: `{"dtype": "F32", "dtype": "I64"}` inside an
/// entry is an error, as in the reference reader (serde's `duplicate field`), not the last one
/// silently winning.
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Unique;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Unique, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some((k, Unique(v))) = m.next_entry::<String, Unique>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format_args!(
                            "duplicate key `{k}` inside an entry"
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(Unique(Value::Object(out)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Unique, A::Error> {
                let mut out = Vec::new();
                while let Some(Unique(v)) = a.next_element::<Unique>()? {
                    out.push(v);
                }
                Ok(Unique(Value::Array(out)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Unique, E> {
                Ok(Unique(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Unique, E> {
                Ok(Unique(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Unique, E> {
                Ok(Unique(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Unique, E> {
                Ok(Unique(
                    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
                ))
            }
            fn visit_str<E>(self, v: &str) -> Result<Unique, E> {
                Ok(Unique(Value::String(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Unique, E> {
                Ok(Unique(Value::String(v)))
            }
            fn visit_unit<E>(self) -> Result<Unique, E> {
                Ok(Unique(Value::Null))
            }
        }
        d.deserialize_any(V)
    }
}

/// The header's top-level entries in file order, duplicates kept.
struct Entries(Vec<(String, Value)>);

/// Reads [`Entries`], stopping past [`MAX_TENSORS`] tensors with `too_many` set, so that
/// [`parse_header_prefix`] tells that stop from a JSON error without reading a message.
struct EntriesSeed<'a> {
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = Entries;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Entries, D::Error> {
        struct V<'a>(&'a Cell<bool>);
        impl<'de> Visitor<'de> for V<'_> {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut v = Vec::new();
                let mut tensors = 0usize;
                while let Some((k, Unique(e))) = m.next_entry::<String, Unique>()? {
                    if k != "__metadata__" {
                        tensors += 1;
                        if tensors > MAX_TENSORS {
                            self.0.set(true);
                            return Err(serde::de::Error::custom("too many tensors"));
                        }
                    }
                    v.push((k, e));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V(self.too_many))
    }
}

/// Parses and checks the header of a whole safetensors file (`file` is every byte of it, as
/// mapped): lengths, JSON, dtypes, shapes against offsets, offsets against the data section,
/// overlaps and duplicate names. Never panics, whatever the bytes.
pub fn parse_header(file: &[u8]) -> Result<Header, HeaderError> {
    parse_header_prefix(file, file.len() as u64)
}

/// Reads the header length from the first 8 bytes of a file of `file_len` bytes: how many
/// bytes from the start [`parse_header_prefix`] needs (the whole file when it is shorter than
/// that or its header length is over the limit, which the parse then reports).
pub(crate) fn prefix_len(first8: &[u8], file_len: u64) -> u64 {
    match first8.first_chunk::<8>() {
        Some(b) if u64::from_le_bytes(*b) <= MAX_HEADER_BYTES => {
            (8 + u64::from_le_bytes(*b)).min(file_len)
        }
        _ => file_len.min(8),
    }
}

/// As [`parse_header`], from the first [`prefix_len`] bytes of a file of `file_len` bytes, so a
/// file can be checked without reading (or mapping) its data section.
pub(crate) fn parse_header_prefix(file: &[u8], file_len: u64) -> Result<Header, HeaderError> {
    if file_len == 0 {
        return Err(HeaderError::Empty);
    }
    let Some(len_bytes) = file.first_chunk::<8>() else {
        return Err(HeaderError::TooShort { len: file_len });
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(HeaderError::HeaderTooLarge { header_len });
    }
    if header_len > file_len - 8 {
        return Err(HeaderError::HeaderPastEnd {
            header_len,
            file_len,
        });
    }
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    let Some(json) = file.get(8..data_start as usize) else {
        return Err(HeaderError::HeaderPastEnd {
            header_len,
            file_len: file.len() as u64,
        });
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let too_many = Cell::new(false);
    let read = EntriesSeed {
        too_many: &too_many,
    }
    .deserialize(&mut de);
    let entries = match read.and_then(|e| de.end().map(|_| e)) {
        Ok(e) => e.0,
        Err(_) if too_many.get() => return Err(HeaderError::TooManyTensors),
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Err(HeaderError::NotAnObject(e.to_string()))
        }
        Err(e) => return Err(HeaderError::InvalidJson(e.to_string())),
    };
    let mut header = Header {
        header_len,
        data_start,
        data_len,
        ..Default::default()
    };
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    for (name, value) in entries {
        if !seen.insert(name.clone()) {
            return Err(HeaderError::DuplicateName(name));
        }
        if name == "__metadata__" {
            header.metadata = metadata(value)?;
            continue;
        }
        header.tensors.push(tensor(name, value, data_len)?);
    }
    let mut by_begin: Vec<&HeaderTensor> =
        header.tensors.iter().filter(|t| t.end > t.begin).collect();
    by_begin.sort_by_key(|t| t.begin);
    for w in by_begin.windows(2) {
        if w[0].end > w[1].begin {
            return Err(HeaderError::Overlap {
                first: w[0].name.clone(),
                first_begin: w[0].begin,
                first_end: w[0].end,
                second: w[1].name.clone(),
                second_begin: w[1].begin,
                second_end: w[1].end,
            });
        }
    }
    // As the reference reader: the tensors, in offset order, tile the data section exactly.
    let mut all: Vec<&HeaderTensor> = header.tensors.iter().collect();
    all.sort_by_key(|t| (t.begin, t.end));
    let mut at = 0u64;
    for t in all {
        if t.begin != at {
            return Err(HeaderError::Gap {
                tensor: t.name.clone(),
                begin: t.begin,
                expected: at,
            });
        }
        at = t.end;
    }
    if at != data_len {
        return Err(HeaderError::TrailingData { end: at, data_len });
    }
    Ok(header)
}

fn metadata(value: Value) -> Result<BTreeMap<String, String>, HeaderError> {
    let Value::Object(m) = value else {
        return Err(HeaderError::BadMetadata("not an object".into()));
    };
    m.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(HeaderError::BadMetadata(format!(
                "value of `{k}` is not a string"
            ))),
        })
        .collect()
}

fn tensor(name: String, value: Value, data_len: u64) -> Result<HeaderTensor, HeaderError> {
    let bad = |name: &str, problem: &str| HeaderError::BadEntry {
        tensor: name.to_string(),
        problem: problem.to_string(),
    };
    let Value::Object(m) = value else {
        return Err(bad(&name, "entry is not an object"));
    };
    let dtype = match m.get("dtype") {
        Some(Value::String(s)) => DType::from_name(s).ok_or_else(|| HeaderError::UnknownDtype {
            tensor: name.clone(),
            dtype: s.clone(),
        })?,
        Some(_) => return Err(bad(&name, "dtype is not a string")),
        None => return Err(bad(&name, "no dtype")),
    };
    let shape = match m.get("shape") {
        Some(Value::Array(a)) => a
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| bad(&name, "shape is not a list of non-negative integers"))?,
        Some(_) => return Err(bad(&name, "shape is not a list")),
        None => return Err(bad(&name, "no shape")),
    };
    let (begin, end) = match m.get("data_offsets") {
        Some(Value::Array(a)) if a.len() == 2 => match (a[0].as_u64(), a[1].as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => return Err(bad(&name, "data_offsets are not non-negative integers")),
        },
        Some(_) => return Err(bad(&name, "data_offsets is not a list of two integers")),
        None => return Err(bad(&name, "no data_offsets")),
    };
    if begin > end {
        return Err(bad(
            &name,
            &format!("data_offsets [{begin}, {end}] run backwards"),
        ));
    }
    let expected = byte_len(dtype, &shape);
    if expected != Some(end - begin) {
        return Err(HeaderError::ShapeMismatch {
            tensor: name,
            dtype,
            shape,
            expected: Bytes(expected),
            actual: end - begin,
        });
    }
    if end > data_len {
        return Err(HeaderError::OffsetsPastData {
            tensor: name,
            end,
            data_len,
        });
    }
    Ok(HeaderTensor {
        name,
        dtype,
        shape,
        begin,
        end,
    })
}

/// Serialises a header for `tensors` (name, dtype, shape, begin, end), padded with spaces to a
/// multiple of 8 bytes, with its length prefix: the bytes a safetensors file starts with.
pub fn encode_header(tensors: &[HeaderTensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    if !metadata.is_empty() {
        obj.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    for t in tensors {
        obj.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [t.begin, t.end]}),
        );
    }
    let mut json = Value::Object(obj).to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}
