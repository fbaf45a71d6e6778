//! The `key:value` configuration syntax shared by `VRAMSWAP_SIM_CONF` (the `sim` backend) and
//! `VRAMSWAP_EMU_CONF` (the emulated CUDA driver): one parser for both faces of the model.

use crate::kv::{self, KvError};
use crate::{Bandwidth, RaceMode, SimConfig};

/// The keys [`parse_config`] accepts.
pub const CONFIG_KEYS: &str = "capacity_mb, capacity_gb, granularity_mb, copy_engines, \
                               h2d_gbps, d2h_gbps, d2d_gbps, pageable_factor, race, host_visible, name";

/// Parses a device configuration: `key:value` pairs separated by commas, applied over `base`.
///
/// Keys: `capacity_mb`, `capacity_gb`, `granularity_mb`, `copy_engines`, `h2d_gbps`,
/// `d2h_gbps`, `d2d_gbps` (any of the three turns the bandwidth model on; the others take
/// [`Bandwidth::default`] values), `pageable_factor`, `race` (`off`, `record`, `error`),
/// `host_visible` (`true`, `false`: device addresses are host addresses, see
/// [`SimConfig::host_visible`]), `name`. Unknown keys and bad values are errors, returned as a message.
///
/// ```
/// let c = vramswap_sim::parse_config("capacity_mb:512,race:error", Default::default()).unwrap();
/// assert_eq!(c.capacity, 512 << 20);
/// assert!(vramswap_sim::parse_config("capacity:1", Default::default()).is_err());
/// ```
pub fn parse_config(spec: &str, base: SimConfig) -> Result<SimConfig, String> {
    parse_config_kv(spec, base).map_err(|e| e.to_string())
}

/// The slowest and fastest link the bandwidth model accepts, in GB/s: below 1 MB/s a modelled
/// copy of a few GiB would take longer than any caller waits, and above 1 PB/s it is
/// indistinguishable from no model at all.
pub const GBPS_RANGE: std::ops::RangeInclusive<f64> = 1e-3..=1e6;

fn parse_config_kv(spec: &str, base: SimConfig) -> Result<SimConfig, KvError> {
    let mut c = base;
    let mut bw: Option<Bandwidth> = c.bandwidth;
    for pair in kv::pairs("config", spec) {
        let (k, v) = pair?;
        let gbps = |v: &str| kv::parse_f64_in(k, v, GBPS_RANGE).map(|g| g * 1e9);
        match k {
            "capacity_mb" => c.capacity = kv::parse_scaled(k, v, 1 << 20)?,
            "capacity_gb" => c.capacity = kv::parse_scaled(k, v, 1 << 30)?,
            "granularity_mb" => {
                let g = kv::parse_scaled(k, v, 1 << 20)?;
                if !g.is_power_of_two() {
                    return Err(KvError::new(k, format!("{g} bytes is not a power of two")));
                }
                c.granularity = g;
            }
            "copy_engines" => c.copy_engines = kv::parse_int_in(k, v, 1..=64)?,
            "h2d_gbps" => bw.get_or_insert_with(Bandwidth::default).h2d = gbps(v)?,
            "d2h_gbps" => bw.get_or_insert_with(Bandwidth::default).d2h = gbps(v)?,
            "d2d_gbps" => bw.get_or_insert_with(Bandwidth::default).d2d = gbps(v)?,
            "pageable_factor" => {
                bw.get_or_insert_with(Bandwidth::default).pageable_factor =
                    kv::parse_f64_in(k, v, 1e-3..=1.0)?;
            }
            "race" => {
                c.race_mode = match v {
                    "off" => RaceMode::Off,
                    "record" => RaceMode::Record,
                    "error" => RaceMode::Error,
                    _ => {
                        return Err(KvError::new(
                            k,
                            format!("`{v}` is not off, record or error"),
                        ))
                    }
                }
            }
            "host_visible" => c.host_visible = kv::parse_bool(k, v)?,
            "name" => c.name = v.to_string(),
            _ => {
                return Err(KvError::new(
                    k,
                    format!("unknown key `{k}` (known: {CONFIG_KEYS})"),
                ))
            }
        }
    }
    c.bandwidth = bw;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidths_outside_the_model_are_parse_errors() {
        for bad in [
            "h2d_gbps:1e-30",
            "d2h_gbps:0",
            "d2d_gbps:1e300",
            "pageable_factor:1e-300",
        ] {
            let e = parse_config(bad, SimConfig::default()).unwrap_err();
            let key = bad.split(':').next().unwrap();
            assert!(e.starts_with(key), "{bad}: {e}");
        }
        let c = parse_config("h2d_gbps:0.001,d2h_gbps:1e6", SimConfig::default()).unwrap();
        let bw = c.bandwidth.unwrap();
        assert_eq!((bw.h2d, bw.d2h), (1e6, 1e15));
    }

    #[test]
    fn sizes_that_overflow_name_their_key() {
        let e = parse_config("capacity_gb:1e30", SimConfig::default()).unwrap_err();
        assert!(
            e.starts_with("capacity_gb:") && e.contains("overflows"),
            "{e}"
        );
        assert!(parse_config("copy_engines:0.5", SimConfig::default()).is_err());
    }
}
