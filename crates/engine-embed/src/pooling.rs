//! Turning per-token hidden states into one vector per text, as a
//! sentence-transformers `Pooling` module declares it (`1_Pooling/config.json`).

use std::path::Path;

use engine_mlx::{where_, Array, Dtype};
use serde_json::Value;

use crate::error::{EmbedError, Result};

/// How token vectors are combined into a sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's vector (`[CLS]`), as BGE uses.
    Cls,
    /// The average over real (non-padding) tokens, as MiniLM, E5 and most models use.
    Mean,
    /// The element-wise maximum over real tokens.
    Max,
    /// The sum over real tokens divided by √(token count).
    MeanSqrtLen,
    /// The last real token's vector, as decoder-style embedders use.
    LastToken,
}

impl Pooling {
    /// The name sentence-transformers uses for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len_tokens",
            Pooling::LastToken => "lasttoken",
        }
    }

    /// Reads a sentence-transformers pooling config (`1_Pooling/config.json`).
    /// Exactly one mode must be on: sentence-transformers concatenates several,
    /// which no supported model does.
    pub fn from_config(path: &Path, cfg: &Value) -> Result<Pooling> {
        let on = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
        let modes = [
            ("pooling_mode_cls_token", Pooling::Cls),
            ("pooling_mode_mean_tokens", Pooling::Mean),
            ("pooling_mode_max_tokens", Pooling::Max),
            ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
            ("pooling_mode_lasttoken", Pooling::LastToken),
        ];
        let unsupported = |what: String| EmbedError::UnsupportedPipeline {
            path: path.to_path_buf(),
            what,
        };
        if on("pooling_mode_weightedmean_tokens") {
            return Err(unsupported("weighted-mean pooling".into()));
        }
        if cfg.get("include_prompt").and_then(Value::as_bool) == Some(false) {
            return Err(unsupported(
                "pooling that excludes the prompt (include_prompt: false)".into(),
            ));
        }
        let chosen: Vec<Pooling> = modes.iter().filter(|(k, _)| on(k)).map(|&(_, p)| p).collect();
        match chosen.as_slice() {
            [one] => Ok(*one),
            [] => Err(EmbedError::BadConfig {
                path: path.to_path_buf(),
                reason: "no pooling mode is enabled".into(),
            }),
            many => Err(unsupported(format!(
                "combining several pooling modes ({})",
                many.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Pools hidden states (B, L, H) with a 0/1 mask (B, L) of real tokens,
    /// whose per-row counts are `lengths` (real tokens are a prefix of each row).
    pub(crate) fn apply(self, hidden: &Array, mask: &Array, lengths: &[usize]) -> Result<Array> {
        let m = mask.astype(hidden.dtype())?.expand_dims(-1)?;
        let counts = || -> Result<Array> {
            let c: Vec<f32> = lengths.iter().map(|&n| n as f32).collect();
            Ok(Array::from_slice(&c, &[lengths.len(), 1])?.astype(hidden.dtype())?)
        };
        Ok(match self {
            Pooling::Cls => hidden.slice_axis(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => hidden.multiply(&m)?.sum(&[1], false)?.divide(&counts()?)?,
            Pooling::MeanSqrtLen => hidden.multiply(&m)?.sum(&[1], false)?.divide(&counts()?.sqrt()?)?,
            Pooling::Max => {
                // sentence-transformers sets padding to -1e9 before the max.
                let floor = Array::scalar(-1e9, hidden.dtype())?;
                where_(&m.astype(Dtype::Bool)?, hidden, &floor)?.max(&[1], false)?
            }
            Pooling::LastToken => {
                let idx: Vec<i32> = lengths.iter().map(|&n| n.saturating_sub(1) as i32).collect();
                let idx = Array::from_slice(&idx, &[lengths.len(), 1, 1])?;
                hidden.take_along_axis(&idx, 1)?.squeeze(1)?
            }
        })
    }
}

/// `x / max(‖x‖₂, 1e-12)` per row of (B, H), as `torch.nn.functional.normalize`.
pub(crate) fn l2_normalize(x: &Array) -> Result<Array> {
    let norm = x.square()?.sum(&[-1], true)?.sqrt()?;
    Ok(x.divide(&norm.maximum(&Array::scalar(1e-12, x.dtype())?)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(p: Pooling) -> Vec<f32> {
        // Two rows of 3 tokens, H = 2; row 1 has one padding token whose values must not matter.
        let h = Array::from_slice(
            &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, 0.5, 7.0, -8.0, 100.0, 100.0],
            &[2, 3, 2],
        )
        .unwrap();
        let m = Array::from_slice(&[1.0f32, 1.0, 1.0, 1.0, 1.0, 0.0], &[2, 3]).unwrap();
        p.apply(&h, &m, &[3, 2]).unwrap().to_vec::<f32>().unwrap()
    }

    #[test]
    fn pooling_modes_ignore_padding() {
        assert_eq!(pool(Pooling::Cls), vec![1.0, 2.0, -1.0, 0.5]);
        assert_eq!(pool(Pooling::Mean), vec![3.0, 4.0, 3.0, -3.75]);
        assert_eq!(pool(Pooling::Max), vec![5.0, 6.0, 7.0, 0.5]);
        assert_eq!(pool(Pooling::LastToken), vec![5.0, 6.0, 7.0, -8.0]);
        let s = pool(Pooling::MeanSqrtLen);
        let want = [
            9.0 / 3f32.sqrt(),
            12.0 / 3f32.sqrt(),
            6.0 / 2f32.sqrt(),
            -7.5 / 2f32.sqrt(),
        ];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{s:?}");
        }
    }

    #[test]
    fn normalize_gives_unit_rows_and_keeps_zero_rows_finite() {
        let x = Array::from_slice(&[3.0f32, 4.0, 0.0, 0.0], &[2, 2]).unwrap();
        assert_eq!(
            l2_normalize(&x).unwrap().to_vec::<f32>().unwrap(),
            vec![0.6, 0.8, 0.0, 0.0]
        );
    }

    #[test]
    fn config_parsing() {
        let p = Path::new("1_Pooling/config.json");
        let cfg = |v: Value| Pooling::from_config(p, &v);
        assert_eq!(cfg(json!({"pooling_mode_cls_token": true})).unwrap(), Pooling::Cls);
        assert_eq!(
            cfg(json!({"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false})).unwrap(),
            Pooling::Mean
        );
        assert_eq!(
            cfg(json!({"pooling_mode_lasttoken": true})).unwrap(),
            Pooling::LastToken
        );
        assert!(matches!(cfg(json!({})), Err(EmbedError::BadConfig { .. })));
        let both = cfg(json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}));
        assert!(both.unwrap_err().to_string().contains("cls, mean"));
        assert!(matches!(
            cfg(json!({"pooling_mode_weightedmean_tokens": true})),
            Err(EmbedError::UnsupportedPipeline { .. })
        ));
    }
}
