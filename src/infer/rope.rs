//! Rotary embeddings: the rope types of transformers' `modeling_rope_utils`, their inverse
//! frequencies and attention scaling computed step by step as transformers computes them (in
//! f32 where torch computes in f32, in f64 where Python does), so the angles carry the same bits.

use serde::Serialize;
use serde_json::{Map, Value};

/// A rope type with its parameters (`rope_parameters` / `rope_scaling`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum RopeKind {
    /// `default`: `1 / theta^(2i/d)`.
    Default,
    /// `linear`: the default frequencies divided by `factor`.
    Linear {
        /// The scaling factor.
        factor: f64,
    },
    /// `dynamic` (NTK): theta grows once a sequence passes `max_position_embeddings`. Sequences
    /// here never do (longer ones are refused), where transformers' frequencies equal the
    /// default ones, and so do ours.
    Dynamic {
        /// The scaling factor.
        factor: f64,
    },
    /// `llama3`: low frequencies divided by `factor`, a smooth ramp between.
    Llama3 {
        /// The scaling factor.
        factor: f64,
        /// `low_freq_factor`.
        low_freq_factor: f64,
        /// `high_freq_factor`.
        high_freq_factor: f64,
        /// `original_max_position_embeddings`.
        original_max: f64,
    },
    /// `yarn`: interpolated and extrapolated frequencies blended by a ramp, and an attention
    /// factor on cos and sin.
    Yarn {
        /// The scaling factor.
        factor: f64,
        /// `attention_factor` when given.
        attention_factor: Option<f64>,
        /// `mscale`.
        mscale: Option<f64>,
        /// `mscale_all_dim`.
        mscale_all_dim: Option<f64>,
        /// `beta_fast` (default 32).
        beta_fast: f64,
        /// `beta_slow` (default 1).
        beta_slow: f64,
        /// `original_max_position_embeddings`.
        original_max: f64,
        /// `truncate` (default true).
        truncate: bool,
    },
}

/// The rotary embedding of a model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rope {
    /// `rope_theta`.
    pub theta: f64,
    /// The rope type.
    pub kind: RopeKind,
    /// The share of each head that rotates (`partial_rotary_factor`, 1 for the whole head).
    pub partial_rotary_factor: f64,
}

/// Inverse frequencies (`rotary_dim / 2` of them) and the factor cos and sin are multiplied by.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTables {
    /// The inverse frequencies.
    pub inv_freq: Vec<f32>,
    /// `attention_scaling`.
    pub attention_scaling: f32,
}

const TYPES: &str = "default, linear, dynamic, llama3, yarn";

impl Rope {
    /// The rotary embedding a config asks for. `params` is `rope_parameters` (transformers 5) or
    /// `rope_scaling` (transformers 4), `None` when the config has neither; `top` is the config
    /// itself (for the top-level `rope_theta`, `partial_rotary_factor` and
    /// `original_max_position_embeddings` that transformers also reads).
    pub fn parse(
        params: Option<&Map<String, Value>>,
        top: &Map<String, Value>,
        max_positions: usize,
        default_theta: f64,
    ) -> Result<Rope, String> {
        let empty = Map::new();
        let p = params.unwrap_or(&empty);
        let num = |m: &Map<String, Value>, k: &str| -> Result<Option<f64>, String> {
            match m.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| format!("rope field `{k}` must be a number, not {v}")),
            }
        };
        let kind_name = match p.get("rope_type").or_else(|| p.get("type")) {
            None | Some(Value::Null) => "default",
            Some(Value::String(s)) => s.as_str(),
            Some(v) => return Err(format!("`rope_type` must be a string, not {v}")),
        };
        let theta = num(p, "rope_theta")?
            .or(num(top, "rope_theta")?)
            .unwrap_or(default_theta);
        let partial = num(p, "partial_rotary_factor")?
            .or(num(top, "partial_rotary_factor")?)
            .unwrap_or(1.0);
        let original_max = || -> Result<f64, String> {
            Ok(num(top, "original_max_position_embeddings")?
                .or(num(p, "original_max_position_embeddings")?)
                .unwrap_or(max_positions as f64))
        };
        let factor = || -> Result<f64, String> {
            num(p, "factor")?.ok_or_else(|| format!("rope type `{kind_name}` needs a `factor`"))
        };
        let (kind, known): (RopeKind, &[&str]) = match kind_name {
            "default" => (RopeKind::Default, &[]),
            "linear" => (RopeKind::Linear { factor: factor()? }, &["factor"]),
            "dynamic" => (RopeKind::Dynamic { factor: factor()? }, &["factor"]),
            "llama3" => (
                RopeKind::Llama3 {
                    factor: factor()?,
                    low_freq_factor: num(p, "low_freq_factor")?
                        .ok_or("rope type `llama3` needs `low_freq_factor`")?,
                    high_freq_factor: num(p, "high_freq_factor")?
                        .ok_or("rope type `llama3` needs `high_freq_factor`")?,
                    original_max: original_max()?,
                },
                &[
                    "factor",
                    "low_freq_factor",
                    "high_freq_factor",
                    "original_max_position_embeddings",
                ],
            ),
            "yarn" => {
                let original_max = original_max()?;
                (
                    RopeKind::Yarn {
                        factor: num(p, "factor")?.unwrap_or(max_positions as f64 / original_max),
                        attention_factor: num(p, "attention_factor")?,
                        mscale: num(p, "mscale")?,
                        mscale_all_dim: num(p, "mscale_all_dim")?,
                        beta_fast: num(p, "beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0),
                        beta_slow: num(p, "beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0),
                        original_max,
                        truncate: p.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                    },
                    &[
                        "factor",
                        "attention_factor",
                        "mscale",
                        "mscale_all_dim",
                        "beta_fast",
                        "beta_slow",
                        "original_max_position_embeddings",
                        "truncate",
                    ],
                )
            }
            other => {
                return Err(format!(
                    "rope type {other:?} is not implemented; supported: {TYPES}"
                ))
            }
        };
        let common = ["rope_type", "type", "rope_theta", "partial_rotary_factor"];
        if let Some(k) = p
            .keys()
            .find(|k| !common.contains(&k.as_str()) && !known.contains(&k.as_str()))
        {
            return Err(format!(
                "rope field `{k}` is not read for rope type `{kind_name}` (it reads {})",
                known.join(", ")
            ));
        }
        if !(theta.is_finite() && theta > 0.0) {
            return Err(format!(
                "`rope_theta` must be a positive number, not {theta}"
            ));
        }
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(format!(
                "`partial_rotary_factor` must be in (0, 1], not {partial}"
            ));
        }
        Ok(Rope {
            theta,
            kind,
            partial_rotary_factor: partial,
        })
    }

    /// The rotating width of a head of `head_dim`, as transformers rounds it.
    pub fn rotary_dim(&self, head_dim: usize) -> usize {
        (head_dim as f64 * self.partial_rotary_factor) as usize
    }

    /// Inverse frequencies and attention scaling for heads of `head_dim`, with
    /// `max_positions` the config's `max_position_embeddings`.
    pub fn tables(&self, head_dim: usize, max_positions: usize) -> RopeTables {
        let dim = self.rotary_dim(head_dim);
        let base = self.theta;
        // torch: `base ** (arange(0, dim, 2).float() / dim)`, in f32.
        let pow = |base: f64| -> Vec<f32> {
            (0..dim / 2)
                .map(|i| (base as f32).powf((2 * i) as f32 / dim as f32))
                .collect()
        };
        let default = |base: f64| -> Vec<f32> { pow(base).iter().map(|p| 1.0 / p).collect() };
        match &self.kind {
            RopeKind::Default => RopeTables {
                inv_freq: default(base),
                attention_scaling: 1.0,
            },
            RopeKind::Linear { factor } => RopeTables {
                inv_freq: default(base).iter().map(|f| f / *factor as f32).collect(),
                attention_scaling: 1.0,
            },
            RopeKind::Dynamic { factor } => {
                let seq = max_positions as f64;
                let d = dim as f64;
                let base = base
                    * ((factor * seq / max_positions as f64) - (factor - 1.0)).powf(d / (d - 2.0));
                RopeTables {
                    inv_freq: default(base),
                    attention_scaling: 1.0,
                }
            }
            RopeKind::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max,
            } => {
                let low_wavelen = (original_max / low_freq_factor) as f32;
                let high_wavelen = (original_max / high_freq_factor) as f32;
                let (factor, low, span) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    (high_freq_factor - low_freq_factor) as f32,
                );
                let old = *original_max as f32;
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                let inv_freq = default(base)
                    .into_iter()
                    .map(|f| {
                        let wavelen = two_pi / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        // As torch's `~(w < high) * ~(w > low)` (NaN-free here: wavelengths are finite).
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (old / wavelen - low) / span;
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect();
                RopeTables {
                    inv_freq,
                    attention_scaling: 1.0,
                }
            }
            RopeKind::Yarn {
                factor,
                attention_factor,
                mscale,
                mscale_all_dim,
                beta_fast,
                beta_slow,
                original_max,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention =
                    attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
                        (Some(m), Some(a)) if *m != 0.0 && *a != 0.0 => {
                            get_mscale(*factor, *m) / get_mscale(*factor, *a)
                        }
                        _ => get_mscale(*factor, 1.0),
                    });
                let d = dim as f64;
                let correction = |rot: f64| {
                    (d * (original_max / (rot * 2.0 * std::f64::consts::PI)).ln())
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction(*beta_fast), correction(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                let pos = pow(base);
                let f = *factor as f32;
                let inv_freq = pos
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        let ramp = ((j as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
                        let extra = 1.0 - ramp;
                        let interpolation = 1.0 / (f * p);
                        let extrapolation = 1.0 / p;
                        interpolation * (1.0 - extra) + extrapolation * extra
                    })
                    .collect();
                RopeTables {
                    inv_freq,
                    attention_scaling: attention as f32,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Rope, String> {
        let top: Map<String, Value> = serde_json::from_str(json).unwrap();
        let p = top
            .get("rope_parameters")
            .or(top.get("rope_scaling"))
            .and_then(Value::as_object)
            .cloned();
        Rope::parse(p.as_ref(), &top, 128, 10_000.0)
    }

    #[test]
    fn theta_is_read_from_either_form() {
        let v5 = parse(r#"{"rope_parameters":{"rope_type":"default","rope_theta":500000.0}}"#);
        let v4 = parse(r#"{"rope_theta":500000.0}"#);
        assert_eq!(v5.unwrap().theta, 500_000.0);
        assert_eq!(v4.unwrap().theta, 500_000.0);
    }

    #[test]
    fn llama3_scales_only_low_frequencies() {
        let r = parse(
            r#"{"rope_parameters":{"rope_type":"llama3","rope_theta":10000.0,"factor":8.0,
               "low_freq_factor":1.0,"high_freq_factor":4.0,
               "original_max_position_embeddings":64}}"#,
        )
        .unwrap();
        let d = Rope {
            kind: RopeKind::Default,
            ..r.clone()
        };
        let (a, b) = (r.tables(16, 128).inv_freq, d.tables(16, 128).inv_freq);
        assert_eq!(a[0], b[0], "the highest frequency is kept");
        assert_eq!(a[7], b[7] / 8.0, "the lowest is divided by the factor");
    }

    #[test]
    fn unknown_types_and_fields_are_refused_by_name() {
        let e = parse(r#"{"rope_scaling":{"type":"longrope","factor":2.0}}"#).unwrap_err();
        assert!(e.contains("longrope") && e.contains("yarn"), "{e}");
        let e = parse(r#"{"rope_scaling":{"type":"linear","factor":2.0,"beta":1}}"#).unwrap_err();
        assert!(e.contains("`beta`"), "{e}");
        let e = parse(r#"{"rope_scaling":{"type":"linear"}}"#).unwrap_err();
        assert!(e.contains("factor"), "{e}");
    }

    #[test]
    fn yarn_sets_an_attention_factor() {
        let r = parse(r#"{"rope_scaling":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32}}"#)
            .unwrap();
        let t = r.tables(16, 128);
        assert!((t.attention_scaling - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
    }
}
