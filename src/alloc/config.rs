//! Configuration of the caching allocator, in code or from `VRAMSWAP_ALLOC_CONF`.

use crate::config as kv;
use crate::error::{Error, Result};

/// The environment variable [`AllocatorConfig::from_env`] reads.
pub const ALLOC_CONF_VAR: &str = "VRAMSWAP_ALLOC_CONF";

/// A memory limit for the allocator's reserved bytes.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum MemoryLimit {
    /// No limit beyond the device.
    #[default]
    None,
    /// At most this many bytes.
    Bytes(u64),
    /// At most this fraction (0 < f ≤ 1) of the device's total memory.
    Fraction(f64),
}

/// How the caching allocator behaves. `Default` matches PyTorch's defaults.
///
/// ```
/// use vramswap::alloc::{AllocatorConfig, MemoryLimit};
/// let c = AllocatorConfig::parse("max_split_size_mb:128,expandable_segments:true,limit_mb:4096")
///     .unwrap();
/// assert_eq!(c.max_split_size, 128 << 20);
/// assert_eq!(c.large_blocks, vramswap::alloc::LargeBlocks::Expandable);
/// assert_eq!(c.limit, MemoryLimit::Bytes(4096 << 20));
/// assert!(AllocatorConfig::parse("no_such_key:1").is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AllocatorConfig {
    /// Blocks of at least this size are never split, and serve only requests within 20 MiB of
    /// their size (`u64::MAX`: no limit).
    pub max_split_size: u64,
    /// Where large blocks (1 MiB and up) come from.
    pub large_blocks: LargeBlocks,
    /// Cap on reserved bytes.
    pub limit: MemoryLimit,
    /// Round requests up to this many equal steps between powers of two (0 or 1: off).
    pub roundup_power2_divisions: u32,
    /// Events kept in the history ring (0: no history).
    pub history: usize,
    /// Fill freed blocks with [`POISON_PATTERN`] on their stream (debugging use after free).
    pub poison: bool,
}

/// Where the large pool's memory comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LargeBlocks {
    /// Expandable segments where the device has the virtual-memory API, fixed segments
    /// elsewhere: the default (see `docs/design.md`, "Allocator").
    #[default]
    Auto,
    /// Fixed segments from `cuMemAlloc`, split and merged (PyTorch's default layout;
    /// `expandable_segments:false`).
    Fixed,
    /// One growable virtual range per stream, mapped in granularity-sized pages; free pages
    /// are taken back from any segment before a segment grows (`expandable_segments:true`).
    /// Needs the virtual-memory API.
    Expandable,
    /// Virtual ranges mapped to pages of one physical page pool shared by all sizes and
    /// streams (`page_pool:true`), where the device has the virtual-memory API; fixed segments
    /// elsewhere.
    PagePool,
}

impl LargeBlocks {
    /// What this is on a device with (`vmm`) or without the virtual-memory API: never `Auto`.
    pub fn resolve(self, vmm: bool) -> LargeBlocks {
        match self {
            LargeBlocks::Auto if vmm => LargeBlocks::Expandable,
            LargeBlocks::Auto | LargeBlocks::Fixed => LargeBlocks::Fixed,
            LargeBlocks::PagePool if !vmm => LargeBlocks::Fixed,
            other => other,
        }
    }
}

/// The pattern freed blocks are filled with when [`AllocatorConfig::poison`] is on.
pub const POISON_PATTERN: u32 = 0xDEAD_BEEF;

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            max_split_size: u64::MAX,
            large_blocks: LargeBlocks::Auto,
            limit: MemoryLimit::None,
            roundup_power2_divisions: 0,
            history: 0,
            poison: false,
        }
    }
}

fn bad(key: &str, problem: impl Into<String>) -> Error {
    Error::Config {
        key: key.to_string(),
        problem: problem.into(),
    }
}

fn parse_mb(key: &str, v: &str) -> Result<u64> {
    Ok(kv::parse_int_in(key, v, 1..=u64::MAX >> 20)? << 20)
}

impl AllocatorConfig {
    /// Parses `key:value` pairs separated by commas. Keys: `max_split_size_mb`,
    /// `expandable_segments` (true/false: [`LargeBlocks::Expandable`] or
    /// [`LargeBlocks::Fixed`]), `page_pool` (true: [`LargeBlocks::PagePool`], unless
    /// `expandable_segments:true` is given too), `limit_mb`, `limit_fraction` (0 < f ≤ 1),
    /// `roundup_power2_divisions` (0 or a power of two up to 64), `history` (ring size),
    /// `poison` (true/false). Unknown keys and bad values are [`Error::Config`].
    pub fn parse(spec: &str) -> Result<AllocatorConfig> {
        let mut c = AllocatorConfig::default();
        let (mut expandable, mut page_pool) = (None, None);
        for pair in kv::pairs(ALLOC_CONF_VAR, spec) {
            let (k, v) = pair?;
            match k {
                "max_split_size_mb" => {
                    let b = parse_mb(k, v)?;
                    if b <= 20 << 20 {
                        return Err(bad(k, "must be more than 20 MiB"));
                    }
                    c.max_split_size = b;
                }
                "expandable_segments" => expandable = Some(kv::parse_bool(k, v)?),
                "page_pool" => page_pool = Some(kv::parse_bool(k, v)?),
                "limit_mb" => c.limit = MemoryLimit::Bytes(parse_mb(k, v)?),
                "limit_fraction" => {
                    let f = v
                        .parse::<f64>()
                        .ok()
                        .filter(|f| *f > 0.0 && *f <= 1.0)
                        .ok_or_else(|| bad(k, format!("`{v}` is not a number in (0, 1]")))?;
                    c.limit = MemoryLimit::Fraction(f);
                }
                "roundup_power2_divisions" => {
                    let d = v
                        .parse::<u32>()
                        .ok()
                        .filter(|d| *d == 0 || (d.is_power_of_two() && *d <= 64))
                        .ok_or_else(|| bad(k, format!("`{v}` is not 0 or a power of two ≤ 64")))?;
                    c.roundup_power2_divisions = d;
                }
                "history" => {
                    c.history = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n <= 1 << 24)
                        .ok_or_else(|| bad(k, format!("`{v}` is not a ring size ≤ 16777216")))?
                }
                "poison" => c.poison = kv::parse_bool(k, v)?,
                _ => {
                    return Err(bad(
                        k,
                        "unknown key (known: max_split_size_mb, expandable_segments, page_pool, limit_mb, \
                         limit_fraction, roundup_power2_divisions, history, poison)",
                    ))
                }
            }
        }
        c.large_blocks = match (expandable, page_pool) {
            (Some(true), _) => LargeBlocks::Expandable,
            (_, Some(true)) => LargeBlocks::PagePool,
            (Some(false), _) => LargeBlocks::Fixed,
            _ => LargeBlocks::Auto,
        };
        Ok(c)
    }

    /// The configuration in `VRAMSWAP_ALLOC_CONF`, or the default when it is unset.
    pub fn from_env() -> Result<AllocatorConfig> {
        match std::env::var(ALLOC_CONF_VAR) {
            Ok(v) => Self::parse(&v),
            Err(std::env::VarError::NotPresent) => Ok(Self::default()),
            Err(e) => Err(bad(ALLOC_CONF_VAR, e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spec_is_the_default() {
        assert_eq!(
            AllocatorConfig::parse("").unwrap(),
            AllocatorConfig::default()
        );
    }

    #[test]
    fn every_key_parses() {
        let c = AllocatorConfig::parse(
            "max_split_size_mb:64, expandable_segments:true, limit_fraction:0.5, \
             roundup_power2_divisions:4, history:100, poison:true",
        )
        .unwrap();
        assert_eq!(c.max_split_size, 64 << 20);
        assert_eq!(c.large_blocks, LargeBlocks::Expandable);
        assert!(c.poison);
        for (spec, want) in [
            ("", LargeBlocks::Auto),
            ("expandable_segments:false", LargeBlocks::Fixed),
            ("page_pool:true", LargeBlocks::PagePool),
            (
                "page_pool:true,expandable_segments:true",
                LargeBlocks::Expandable,
            ),
            ("page_pool:false", LargeBlocks::Auto),
        ] {
            assert_eq!(
                AllocatorConfig::parse(spec).unwrap().large_blocks,
                want,
                "{spec}"
            );
        }
        assert_eq!(LargeBlocks::Auto.resolve(true), LargeBlocks::Expandable);
        assert_eq!(LargeBlocks::Auto.resolve(false), LargeBlocks::Fixed);
        assert_eq!(LargeBlocks::PagePool.resolve(false), LargeBlocks::Fixed);
        assert_eq!(c.limit, MemoryLimit::Fraction(0.5));
        assert_eq!(c.roundup_power2_divisions, 4);
        assert_eq!(c.history, 100);
    }

    #[test]
    fn bad_values_and_unknown_keys_name_the_key() {
        for (spec, key) in [
            ("limit_mb:-3", "limit_mb"),
            ("limit_fraction:1.5", "limit_fraction"),
            ("expandable_segments:maybe", "expandable_segments"),
            ("roundup_power2_divisions:3", "roundup_power2_divisions"),
            ("max_split_size_mb:4", "max_split_size_mb"),
            ("limit_mb:99999999999999999", "limit_mb"),
            ("colour:blue", "colour"),
        ] {
            match AllocatorConfig::parse(spec) {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key, "{spec}"),
                other => panic!("{spec}: {other:?}"),
            }
        }
        assert!(AllocatorConfig::parse("limit_mb").is_err());
    }
}
