//! The one `key:value` configuration grammar of vramswap and one vocabulary for its values.
//!
//! Every configuration string (`VRAMSWAP_ALLOC_CONF`, `VRAMSWAP_SWAP_CONF`, `VRAMSWAP_ARENA`,
//! `VRAMSWAP_SIM_CONF`, `VRAMSWAP_SIM_FAULTS`, `VRAMSWAP_EMU_CONF`) is `key:value` pairs
//! separated by commas, with spaces around either allowed and empty parts skipped, and every
//! command-line flag that takes a size reads it with [`parse_bytes`]. This module lives in the
//! bottom crate so that the simulated device, its emulated driver and the library above them
//! share it.
//!
//! The vocabulary:
//! - **booleans** ([`parse_bool`]): `true`/`false`, `1`/`0`, `on`/`off`, `yes`/`no`, in any
//!   case;
//! - **sizes** ([`parse_bytes`]): a plain number of bytes, or a number with a unit. `KB`, `MB`,
//!   `GB`, `TB` are decimal (powers of 1000, as disk and link vendors write them); `KiB`, `MiB`,
//!   `GiB`, `TiB` and the one-letter `K`, `M`, `G`, `T` are binary (powers of 1024, as device
//!   memory is sized). Units are case-insensitive; `1.5GB` is 1,500,000,000 bytes, `24GiB` is
//!   25,769,803,776;
//! - **keys ending in `_mb` or `_gb`** ([`parse_scaled`]) take a positive number of MiB or GiB
//!   (binary), fractions allowed; a value whose byte count overflows `u64` is an error naming
//!   the key.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// A configuration value that does not parse: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvError {
    /// The key at fault (or the variable, for a part that is not `key:value`).
    pub key: String,
    /// What is wrong with it, quoting the value.
    pub problem: String,
}

impl KvError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> KvError {
        KvError {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

impl std::error::Error for KvError {}

/// The `key:value` pairs of `spec` (the variable `what` names it in errors), trimmed, in order.
/// A part without a `:` is an error.
///
/// ```
/// use vramswap_sim::kv::pairs;
/// let p: Vec<_> = pairs("X", " a:1, b : two ,,").collect::<Result<_, _>>().unwrap();
/// assert_eq!(p, [("a", "1"), ("b", "two")]);
/// assert_eq!(pairs("X", "a").next().unwrap().unwrap_err().key, "X");
/// ```
pub fn pairs<'a>(
    what: &'a str,
    spec: &'a str,
) -> impl Iterator<Item = Result<(&'a str, &'a str), KvError>> + 'a {
    spec.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(move |part| {
            part.split_once(':')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| KvError::new(what, format!("`{part}` is not key:value")))
        })
}

/// A boolean: `true`/`false`, `1`/`0`, `on`/`off`, `yes`/`no`, in any case.
///
/// ```
/// use vramswap_sim::kv::parse_bool;
/// assert!(parse_bool("k", "On").unwrap());
/// assert!(!parse_bool("k", "0").unwrap());
/// assert!(parse_bool("k", "maybe").is_err());
/// ```
pub fn parse_bool(key: &str, v: &str) -> Result<bool, KvError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Ok(true),
        "false" | "0" | "off" | "no" => Ok(false),
        _ => Err(KvError::new(
            key,
            format!("`{v}` is not a boolean (true/false, 1/0, on/off, yes/no)"),
        )),
    }
}

/// A byte size: plain bytes, or a number with a decimal (`KB`, `MB`, `GB`, `TB`) or binary
/// (`KiB`, `MiB`, `GiB`, `TiB`, `K`, `M`, `G`, `T`) unit; see the [module](self) notes.
/// Fractions round to the nearest byte. Errors name `key`.
///
/// ```
/// use vramswap_sim::kv::parse_bytes;
/// assert_eq!(parse_bytes("size", "24GiB").unwrap(), 24 << 30);
/// assert_eq!(parse_bytes("size", "1.5GB").unwrap(), 1_500_000_000);
/// assert_eq!(parse_bytes("size", "512 mib").unwrap(), 512 << 20);
/// assert_eq!(parse_bytes("size", "4096").unwrap(), 4096);
/// assert!(parse_bytes("size", "99999999999TiB").is_err());
/// ```
pub fn parse_bytes(key: &str, s: &str) -> Result<u64, KvError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| KvError::new(key, format!("`{s}` does not start with a number")))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0f64.powi(3),
        "tib" | "t" => 1024.0f64.powi(4),
        u => {
            return Err(KvError::new(
                key,
                format!("`{s}`: unknown unit `{u}` (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
            ))
        }
    };
    let v = n * mult;
    // u64::MAX as f64 rounds up to 2^64, which does not fit: the bound is exclusive.
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(KvError::new(
            key,
            format!("`{s}` is more than {} bytes", u64::MAX),
        ));
    }
    Ok(v.round() as u64)
}

/// A positive number of `unit` bytes (fractions allowed, e.g. `slab_mb:0.5` with `unit` 1 MiB),
/// at least one byte and at most `u64::MAX` bytes; the error names `key` and says which bound
/// was crossed.
///
/// ```
/// use vramswap_sim::kv::parse_scaled;
/// assert_eq!(parse_scaled("slab_mb", "64", 1 << 20).unwrap(), 64 << 20);
/// let e = parse_scaled("slab_mb", "1e300", 1 << 20).unwrap_err();
/// assert_eq!(e.key, "slab_mb");
/// assert!(e.problem.contains("overflows"), "{e}");
/// ```
pub fn parse_scaled(key: &str, v: &str, unit: u64) -> Result<u64, KvError> {
    let x = parse_positive(key, v)?;
    let bytes = x * unit as f64;
    if bytes >= u64::MAX as f64 {
        return Err(KvError::new(
            key,
            format!(
                "`{v}` × {unit} bytes overflows a 64-bit byte count (at most {})",
                u64::MAX / unit
            ),
        ));
    }
    let b = bytes as u64;
    if b == 0 {
        return Err(KvError::new(key, format!("`{v}` is less than one byte")));
    }
    Ok(b)
}

/// A finite number greater than zero.
pub fn parse_positive(key: &str, v: &str) -> Result<f64, KvError> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| KvError::new(key, format!("`{v}` is not a positive number")))
}

/// A finite number within `range`, which the error quotes.
///
/// ```
/// use vramswap_sim::kv::parse_f64_in;
/// assert_eq!(parse_f64_in("h2d_gbps", "25", 1e-3..=1e6).unwrap(), 25.0);
/// assert!(parse_f64_in("h2d_gbps", "1e-30", 1e-3..=1e6).is_err());
/// ```
pub fn parse_f64_in(key: &str, v: &str, range: RangeInclusive<f64>) -> Result<f64, KvError> {
    parse_in(key, v, range, "a number")
}

/// A whole number within `range`, which the error quotes.
///
/// ```
/// use vramswap_sim::kv::parse_int_in;
/// assert_eq!(parse_int_in::<u32>("copy_engines", "2", 1..=64).unwrap(), 2);
/// assert!(parse_int_in::<u32>("copy_engines", "0.5", 1..=64).is_err());
/// ```
pub fn parse_int_in<T>(key: &str, v: &str, range: RangeInclusive<T>) -> Result<T, KvError>
where
    T: FromStr + PartialOrd + fmt::Display,
{
    parse_in(key, v, range, "a whole number")
}

/// A `T` within `range`; the error calls it `what` and quotes the range.
fn parse_in<T>(key: &str, v: &str, range: RangeInclusive<T>, what: &str) -> Result<T, KvError>
where
    T: FromStr + PartialOrd + fmt::Display,
{
    v.trim()
        .parse::<T>()
        .ok()
        .filter(|x| range.contains(x))
        .ok_or_else(|| {
            KvError::new(
                key,
                format!(
                    "`{v}` is not {what} from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_both_unit_systems_and_reject_the_rest() {
        assert_eq!(parse_bytes("s", "1024").unwrap(), 1024);
        assert_eq!(parse_bytes("s", "1KB").unwrap(), 1000);
        assert_eq!(parse_bytes("s", "1KiB").unwrap(), 1024);
        assert_eq!(parse_bytes("s", "2g").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("s", "1.5 GB").unwrap(), 1_500_000_000);
        for bad in ["12 parsecs", "GiB", "-1", "", "1e3", "18446744073709551616"] {
            let e = parse_bytes("device_budget", bad).unwrap_err();
            assert_eq!(e.key, "device_budget", "{bad}");
        }
        assert_eq!(
            parse_bytes("s", "18446744073709549568").unwrap(),
            18446744073709549568
        );
    }

    #[test]
    fn booleans_share_one_vocabulary() {
        for t in ["true", "True", "1", "on", "YES"] {
            assert!(parse_bool("k", t).unwrap(), "{t}");
        }
        for f in ["false", "FALSE", "0", "off", "no"] {
            assert!(!parse_bool("k", f).unwrap(), "{f}");
        }
        assert_eq!(parse_bool("poison", "2").unwrap_err().key, "poison");
    }

    #[test]
    fn scaled_values_name_their_key_at_each_bound() {
        assert_eq!(parse_scaled("budget_gb", "1.5", 1 << 30).unwrap(), 3 << 29);
        let huge = parse_scaled("slab_mb", "99999999999999999999", 1 << 20).unwrap_err();
        assert_eq!(huge.key, "slab_mb");
        assert!(huge.problem.contains("overflows"));
        let tiny = parse_scaled("slab_mb", "1e-30", 1 << 20).unwrap_err();
        assert!(tiny.problem.contains("less than one byte"));
        for bad in ["0", "-3", "nan", "inf", "x"] {
            assert!(parse_scaled("k", bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn pairs_trim_skip_empty_parts_and_reject_bare_words() {
        let p: Vec<_> = pairs("V", "a:1,, b:x:y ")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(p, [("a", "1"), ("b", "x:y")]);
        let e = pairs("VRAMSWAP_X", "a:1,oops").nth(1).unwrap().unwrap_err();
        assert_eq!(e.key, "VRAMSWAP_X");
        assert!(e.problem.contains("oops"));
    }
}
