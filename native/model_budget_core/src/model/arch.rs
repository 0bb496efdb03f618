//! The architecture numbers a header or config.json states, before they are
//! checked against the layer count, and the rules that fill in what they
//! leave out the way llama.cpp and transformers do.

use super::{invalid, PerLayer, MAX_LAYERS};
use crate::error::Result;

/// A value and the byte where the file states it, for errors found later.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct At<T> {
    pub value: T,
    pub offset: u64,
    pub key: String,
}

/// A count given once for all layers or once per layer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Count {
    One(u64),
    List(Vec<u64>),
}

/// Which layers a sliding window applies to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SwaLayers {
    /// Layer `il` uses the window when `period == 0 || il % period < period - 1`
    /// (llama.cpp's `set_swa_pattern`; transformers' `sliding_window_pattern`).
    Period(u64),
    /// Explicit flags, one per layer.
    Flags(Vec<bool>),
    /// Layers from this index on (transformers' Qwen2 `max_window_layers`).
    From(u64),
    /// No rule is known: no layer is assumed to use the window, which never
    /// under-counts a KV cache. llama.cpp likewise ignores such windows.
    Unknown,
}

/// What the metadata says; `None` where it says nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Arch {
    pub architecture: Option<String>,
    pub name: Option<String>,
    pub n_layers: Option<At<u64>>,
    pub n_head: Option<At<Count>>,
    pub n_head_kv: Option<At<Count>>,
    pub head_dim_k: Option<u64>,
    pub head_dim_v: Option<u64>,
    pub n_embd: Option<u64>,
    pub n_vocab: Option<u64>,
    pub context_length: Option<u64>,
    pub sliding_window: Option<u64>,
    pub swa_layers: Option<At<SwaLayers>>,
    pub n_experts: Option<u64>,
    pub n_experts_used: Option<u64>,
}

/// The layer pattern llama.cpp hard-codes for architectures whose GGUF
/// files need not state one (`set_swa_pattern` in each model's loader).
pub(crate) fn gguf_default_period(architecture: &str) -> Option<u64> {
    Some(match architecture {
        "gemma2" | "gpt-oss" => 2,
        "gemma3" | "gemma-embedding" => 6,
        "gemma3n" => 5,
        "cohere2" | "exaone4" => 4,
        _ => return None,
    })
}

impl Arch {
    /// Checks a declared layer count against [`MAX_LAYERS`].
    pub(crate) fn layers(value: u64, offset: u64, key: &str) -> Result<At<u64>> {
        if value > MAX_LAYERS {
            return Err(invalid(
                offset,
                format!("{key} is {value}, more than the {MAX_LAYERS} layers a model may have"),
            ));
        }
        Ok(At {
            value,
            offset,
            key: key.to_owned(),
        })
    }
}

/// Checks that a per-layer list stated at `at` has one entry per layer.
fn one_per_layer<T>(at: &At<T>, len: usize, n_layers: u64) -> Result<()> {
    if len as u64 != n_layers {
        return Err(invalid(
            at.offset,
            format!("{} has {len} entries for {n_layers} layers", at.key),
        ));
    }
    Ok(())
}

/// A per-layer count checked against `n_layers`.
pub(crate) fn per_layer(count: &At<Count>, n_layers: u64) -> Result<PerLayer> {
    match &count.value {
        Count::One(n) => Ok(PerLayer::Uniform(*n)),
        Count::List(values) => {
            one_per_layer(count, values.len(), n_layers)?;
            Ok(PerLayer::from_list(values.clone()))
        }
    }
}

/// One flag per layer: whether it uses the sliding window.
pub(crate) fn swa_flags(rule: &At<SwaLayers>, n_layers: u64) -> Result<Vec<bool>> {
    // n_layers <= MAX_LAYERS, checked where it was read or inferred.
    let layers = 0..n_layers;
    Ok(match &rule.value {
        SwaLayers::Period(0) => layers.map(|_| true).collect(),
        SwaLayers::Period(p) => layers.map(|il| il % p < p - 1).collect(),
        SwaLayers::From(first) => layers.map(|il| il >= *first).collect(),
        SwaLayers::Unknown => layers.map(|_| false).collect(),
        SwaLayers::Flags(flags) => {
            one_per_layer(rule, flags.len(), n_layers)?;
            flags.clone()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<T>(value: T) -> At<T> {
        At {
            value,
            offset: 7,
            key: "k".into(),
        }
    }

    #[test]
    fn periods_follow_llama_cpp() {
        // Gemma-2: even layers slide. Gemma-3: five of every six.
        let gemma2 = swa_flags(&at(SwaLayers::Period(2)), 4).unwrap();
        assert_eq!(gemma2, [true, false, true, false]);
        let gemma3 = swa_flags(&at(SwaLayers::Period(6)), 7).unwrap();
        assert_eq!(gemma3, [true, true, true, true, true, false, true]);
        assert_eq!(
            swa_flags(&at(SwaLayers::Period(0)), 2).unwrap(),
            [true, true]
        );
        assert_eq!(
            swa_flags(&at(SwaLayers::From(1)), 3).unwrap(),
            [false, true, true]
        );
    }

    #[test]
    fn per_layer_lists_must_match_the_layer_count() {
        let err = per_layer(&at(Count::List(vec![8, 8])), 3).unwrap_err();
        assert_eq!(err, invalid(7, "k has 2 entries for 3 layers"));
        assert_eq!(
            per_layer(&at(Count::List(vec![8, 8, 8])), 3).unwrap(),
            PerLayer::Uniform(8)
        );
        assert_eq!(
            per_layer(&at(Count::List(vec![8, 0, 8])), 3).unwrap(),
            PerLayer::Layers(vec![8, 0, 8])
        );
    }

    #[test]
    fn layer_counts_are_capped() {
        assert!(Arch::layers(MAX_LAYERS, 0, "n").is_ok());
        assert!(Arch::layers(MAX_LAYERS + 1, 0, "n").is_err());
    }
}
