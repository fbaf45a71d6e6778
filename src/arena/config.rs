//! [`ArenaConfig`]: how the arena pins and limits memory, as a plain struct or from
//! `VRAMSWAP_ARENA`.

use serde::Serialize;

use super::MAX_REGISTER_BYTES;
use crate::config as kv;
use crate::error::{Error, Result};

/// The environment variable [`ArenaConfig::from_env`] reads.
pub const ARENA_ENV: &str = "VRAMSWAP_ARENA";

/// Where slabs come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlabSource {
    /// The backend's pinned allocation (`cuMemHostAlloc`).
    #[default]
    HostAlloc,
    /// An anonymous mapping pre-faulted by several threads, then registered
    /// (`cuMemHostRegister`) in chunks.
    MmapRegister,
}

/// How the arena pins and limits memory.
#[derive(Clone, Debug, Serialize)]
pub struct ArenaConfig {
    /// Most bytes pinned at once; `None` for no limit.
    pub budget: Option<u64>,
    /// Size of an ordinary slab (rounded up to [`SLAB_GRANULE`](super::SLAB_GRANULE)); larger requests get a slab of
    /// their own size.
    pub slab_size: u64,
    /// Where slabs come from.
    pub source: SlabSource,
    /// Threads that pre-fault a mapped slab ([`SlabSource::MmapRegister`]).
    pub pin_threads: usize,
    /// Largest single registration of a mapped slab, capped at [`MAX_REGISTER_BYTES`].
    pub register_chunk: u64,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        ArenaConfig {
            budget: None,
            slab_size: 256 << 20,
            source: SlabSource::HostAlloc,
            pin_threads: std::thread::available_parallelism()
                .map_or(4, |n| n.get())
                .min(8),
            register_chunk: MAX_REGISTER_BYTES,
        }
    }
}

impl ArenaConfig {
    /// The default configuration, changed by `VRAMSWAP_ARENA` when it is set (see
    /// [`parse_arena_config`]).
    pub fn from_env() -> Result<ArenaConfig> {
        match std::env::var(ARENA_ENV) {
            Ok(spec) => parse_arena_config(&spec),
            Err(_) => Ok(ArenaConfig::default()),
        }
    }
}

fn config_error(problem: impl Into<String>) -> Error {
    Error::Config {
        key: ARENA_ENV.into(),
        problem: problem.into(),
    }
}

/// Parses an arena configuration: `key:value` pairs separated by commas, e.g.
/// `budget_gb:48,slab_mb:1024,source:mmap,pin_threads:8`.
///
/// Keys: `budget_mb`, `budget_gb` (no budget when absent), `slab_mb`, `source` (`host_alloc` or
/// `mmap`), `pin_threads`, `register_chunk_gb` (at most 512). Unknown keys and bad values are
/// errors.
pub fn parse_arena_config(spec: &str) -> Result<ArenaConfig> {
    let mut c = ArenaConfig::default();
    for pair in kv::pairs(ARENA_ENV, spec) {
        let (k, v) = pair?;
        match k {
            "budget_mb" => c.budget = Some(kv::parse_scaled(k, v, 1 << 20)?),
            "budget_gb" => c.budget = Some(kv::parse_scaled(k, v, 1 << 30)?),
            "slab_mb" => c.slab_size = kv::parse_scaled(k, v, 1 << 20)?,
            "pin_threads" => c.pin_threads = kv::parse_int_in(k, v, 1..=1024)?,
            "register_chunk_gb" => {
                c.register_chunk = kv::parse_scaled(k, v, 1 << 30)?;
                if c.register_chunk > MAX_REGISTER_BYTES {
                    return Err(config_error("register_chunk_gb is at most 512"));
                }
            }
            "source" => {
                c.source = match v {
                    "host_alloc" => SlabSource::HostAlloc,
                    "mmap" | "mmap_register" => SlabSource::MmapRegister,
                    _ => {
                        return Err(config_error(format!(
                            "source: `{v}` is not host_alloc or mmap"
                        )))
                    }
                }
            }
            _ => return Err(config_error(format!("unknown key `{k}`"))),
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_sets_each_key_and_rejects_unknown_ones() {
        let c = parse_arena_config("budget_gb:2, slab_mb:64,source:mmap,pin_threads:3").unwrap();
        assert_eq!(c.budget, Some(2 << 30));
        assert_eq!(c.slab_size, 64 << 20);
        assert_eq!(c.source, SlabSource::MmapRegister);
        assert_eq!(c.pin_threads, 3);
        assert!(parse_arena_config("bugdet_gb:2").is_err());
        assert!(parse_arena_config("slab_mb:-1").is_err());
        assert!(parse_arena_config("register_chunk_gb:1024").is_err());
        assert!(parse_arena_config("").is_ok());
    }

    #[test]
    fn an_overflowing_size_names_its_setting() {
        for key in ["slab_mb", "budget_mb", "budget_gb", "register_chunk_gb"] {
            let e = parse_arena_config(&format!("{key}:1e300")).unwrap_err();
            let Error::Config { key: k, problem } = e else {
                panic!("{key}: {e}")
            };
            assert_eq!(k, key);
            assert!(problem.contains("overflows"), "{key}: {problem}");
        }
    }
}
