//! Settings of the swap engine.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::config as kv;
use crate::error::{Error, Result};
use crate::transfer::TransferConfig;

/// Settings of a [`super::SwapEngine`]. `Default` gives no budgets (the device's memory and the
/// host's are the limits), no idle timeout, and the transfer defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SwapConfig {
    /// Bytes of device memory weight sets may occupy; least recently used idle sets are
    /// offloaded to stay under it.
    pub device_budget: Option<u64>,
    /// Bytes of pinned host memory (the arena's budget); least recently used idle host copies
    /// that can be reloaded from their source are released to stay under it.
    pub host_budget: Option<u64>,
    /// Idle sets are offloaded after this long without a guard (`VRAMSWAP_IDLE_TIMEOUT`,
    /// seconds).
    pub idle_timeout: Option<Duration>,
    /// Chunking and streams of the copies.
    pub transfer: TransferConfig,
    /// Use reserved virtual address ranges (stable addresses) when the device supports them;
    /// `false` forces the fallback to plain allocations.
    pub use_vmm: Option<bool>,
    /// The shared host store's socket (`VRAMSWAP_STORE`; see [`crate::store`]): sets registered
    /// from a path are attached from the store (which reads each from disk once for every
    /// process), sets registered from arrays are put into it. `None`: the engine's own arena.
    pub store: Option<PathBuf>,
}

/// `VRAMSWAP_STORE`, when set and not empty.
pub fn store_from_env() -> Option<PathBuf> {
    std::env::var_os("VRAMSWAP_STORE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn conf_err(key: &str, problem: impl Into<String>) -> Error {
    Error::Config {
        key: key.into(),
        problem: problem.into(),
    }
}

/// [`parse_bytes`] for the setting `key`: its errors name that setting instead of `size`.
pub fn parse_bytes_for(key: &str, s: &str) -> Result<u64> {
    Ok(kv::parse_bytes(key, s)?)
}

/// Parses a byte size: a plain number of bytes, or a number with a unit (`B`, `KB`, `MB`, `GB`,
/// `TB` in powers of 1000; `KiB`, `MiB`, `GiB`, `TiB` in powers of 1024), e.g. `24GiB`. The
/// one size vocabulary of [`crate::config`].
pub fn parse_bytes(s: &str) -> Result<u64> {
    parse_bytes_for("size", s)
}

impl SwapConfig {
    /// Reads `VRAMSWAP_SWAP_CONF` (`key:value` pairs separated by commas: `device_budget`,
    /// `host_budget` (sizes such as `24GiB`), `idle_timeout_s`, `chunk_mb`, `streams`,
    /// `verify` (`true`/`false`), `vmm` (`true`/`false`)), `VRAMSWAP_IDLE_TIMEOUT`
    /// (seconds) and `VRAMSWAP_STORE` (a store's socket) over the defaults. Unknown keys are
    /// errors.
    pub fn from_env() -> Result<SwapConfig> {
        let mut c = SwapConfig {
            store: store_from_env(),
            ..SwapConfig::default()
        };
        if let Ok(spec) = std::env::var("VRAMSWAP_SWAP_CONF") {
            c.apply(&spec)?;
        }
        if let Ok(t) = std::env::var("VRAMSWAP_IDLE_TIMEOUT") {
            c.idle_timeout = Some(parse_secs("VRAMSWAP_IDLE_TIMEOUT", &t)?);
        }
        Ok(c)
    }

    /// Applies a `key:value,...` string (the syntax of `VRAMSWAP_SWAP_CONF`).
    pub fn apply(&mut self, spec: &str) -> Result<()> {
        for pair in kv::pairs("VRAMSWAP_SWAP_CONF", spec) {
            let (k, v) = pair?;
            match k {
                "device_budget" => self.device_budget = Some(parse_bytes_for(k, v)?),
                "host_budget" => self.host_budget = Some(parse_bytes_for(k, v)?),
                "idle_timeout_s" => self.idle_timeout = Some(parse_secs(k, v)?),
                "chunk_mb" => {
                    let mb: u64 = kv::parse_int_in(k, v, 0..=u64::MAX >> 20)?;
                    self.transfer.chunk_bytes = mb << 20;
                }
                "streams" => {
                    self.transfer.streams_per_direction = v
                        .parse()
                        .map_err(|_| conf_err(k, format!("`{v}` is not a whole number")))?
                }
                "verify" => self.transfer.verify = kv::parse_bool(k, v)?,
                "vmm" => self.use_vmm = Some(kv::parse_bool(k, v)?),
                _ => {
                    return Err(conf_err(
                        "VRAMSWAP_SWAP_CONF",
                        format!(
                            "unknown key `{k}` (known: device_budget, host_budget, idle_timeout_s, \
                             chunk_mb, streams, verify, vmm)"
                        ),
                    ))
                }
            }
        }
        self.transfer.validate()
    }
}

fn parse_secs(key: &str, v: &str) -> Result<Duration> {
    let s: f64 = v
        .trim()
        .parse()
        .map_err(|_| conf_err(key, format!("`{v}` is not a number of seconds")))?;
    if !s.is_finite() || s <= 0.0 {
        return Err(conf_err(
            key,
            format!("`{v}` must be a positive number of seconds"),
        ));
    }
    Duration::try_from_secs_f64(s)
        .map_err(|_| conf_err(key, format!("`{v}` seconds is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_units_in_both_systems() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("24GiB").unwrap(), 24 << 30);
        assert_eq!(parse_bytes("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("512mib").unwrap(), 512 << 20);
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("GiB").is_err());
        assert!(parse_bytes("-1").is_err());
    }

    #[test]
    fn configuration_string_is_strict() {
        let mut c = SwapConfig::default();
        c.apply("device_budget:2GiB, chunk_mb:4, streams:3, verify:true, idle_timeout_s:1.5")
            .unwrap();
        assert_eq!(c.device_budget, Some(2 << 30));
        assert_eq!(c.transfer.chunk_bytes, 4 << 20);
        assert_eq!(c.transfer.streams_per_direction, 3);
        assert!(c.transfer.verify);
        assert_eq!(c.idle_timeout, Some(Duration::from_millis(1500)));
        assert!(c
            .apply("budget:1")
            .unwrap_err()
            .to_string()
            .contains("unknown key"));
        assert!(c.apply("verify:maybe").is_err());
        let e = c.apply("device_budget:24XB").unwrap_err().to_string();
        assert!(
            e.contains("`device_budget`") && e.contains("unknown unit"),
            "{e}"
        );
        // Out of range is an error, not a panic or a wrapped value.
        assert!(c.apply("idle_timeout_s:1e300").is_err());
        assert!(c.apply("chunk_mb:18446744073709551615").is_err());
        assert_eq!(c.transfer.chunk_bytes, 4 << 20);
        assert!(c.apply("streams:0").is_err());
    }
}
