//! The `key:value` configuration syntax shared by `VRAMSWAP_SIM_CONF` (the `sim` backend) and
//! `VRAMSWAP_EMU_CONF` (the emulated CUDA driver): one parser for both faces of the model.

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
    let mut c = base;
    let mut bw: Option<Bandwidth> = c.bandwidth;
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}` is not key:value"))?;
        let (k, v) = (k.trim(), v.trim());
        let num = |v: &str| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("`{k}`: `{v}` is not a positive number"))
        };
        match k {
            "capacity_mb" => c.capacity = (num(v)? * (1u64 << 20) as f64) as u64,
            "capacity_gb" => c.capacity = (num(v)? * (1u64 << 30) as f64) as u64,
            "granularity_mb" => {
                let g = (num(v)? * (1u64 << 20) as f64) as u64;
                if !g.is_power_of_two() {
                    return Err(format!("granularity {g} is not a power of two"));
                }
                c.granularity = g;
            }
            "copy_engines" => c.copy_engines = num(v)? as u32,
            "h2d_gbps" => bw.get_or_insert_with(Bandwidth::default).h2d = num(v)? * 1e9,
            "d2h_gbps" => bw.get_or_insert_with(Bandwidth::default).d2h = num(v)? * 1e9,
            "d2d_gbps" => bw.get_or_insert_with(Bandwidth::default).d2d = num(v)? * 1e9,
            "pageable_factor" => {
                let f = num(v)?;
                if f > 1.0 {
                    return Err("pageable_factor must be in (0, 1]".into());
                }
                bw.get_or_insert_with(Bandwidth::default).pageable_factor = f;
            }
            "race" => {
                c.race_mode = match v {
                    "off" => RaceMode::Off,
                    "record" => RaceMode::Record,
                    "error" => RaceMode::Error,
                    _ => return Err(format!("race: `{v}` is not off, record or error")),
                }
            }
            "host_visible" => {
                c.host_visible = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("host_visible: `{v}` is not true or false")),
                }
            }
            "name" => c.name = v.to_string(),
            _ => return Err(format!("unknown key `{k}` (known: {CONFIG_KEYS})")),
        }
    }
    c.bandwidth = bw;
    Ok(c)
}
