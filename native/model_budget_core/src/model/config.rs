//! config.json, the transformers configuration beside safetensors weights:
//! the architecture numbers that tensor shapes do not state.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::arch::{Arch, At, Count, SwaLayers};
use super::json;
use super::source::Source;
use super::{in_file, invalid, io_error};
use crate::error::Result;

pub const CONFIG_FILE: &str = "config.json";
/// Configs are a few KB; this only bounds what a hostile one costs.
pub const MAX_CONFIG: u64 = 16 << 20;

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrList {
    One(u64),
    List(Vec<u64>),
}

/// `sliding_window` is a size, `null`, or (in some configs) `false`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Window {
    Size(u64),
    Flag(bool),
}

/// Every key the description reads; others are skipped unparsed.
const KEYS: &[&str] = &[
    "model_type",
    "_name_or_path",
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "head_dim",
    "hidden_size",
    "n_embd",
    "d_model",
    "vocab_size",
    "max_position_embeddings",
    "n_positions",
    "max_sequence_length",
    "seq_length",
    "sliding_window",
    "layer_types",
    "use_sliding_window",
    "sliding_window_pattern",
    "max_window_layers",
    "num_local_experts",
    "num_experts",
    "n_routed_experts",
    "num_experts_per_tok",
    "text_config",
];

/// The known keys of an object, first occurrence of each.
fn known<'a>(text: &'a str, base: u64, what: &str) -> Result<Vec<(&'static str, &'a RawValue)>> {
    let mut found: Vec<(&'static str, &'a RawValue)> = Vec::new();
    json::for_each_entry(text, base, what, |key, raw| {
        if let Some(k) = KEYS.iter().find(|k| **k == key) {
            if !found.iter().any(|(f, _)| f == k) {
                found.push((k, raw));
            }
        }
        Ok(())
    })?;
    Ok(found)
}

/// The config's known entries, and its `text_config` for multimodal models,
/// whose language model is described there.
struct Config<'a> {
    text: &'a str,
    top: Vec<(&'static str, &'a RawValue)>,
    nested: Vec<(&'static str, &'a RawValue)>,
}

impl<'a> Config<'a> {
    fn raw(&self, key: &str) -> Option<&'a RawValue> {
        self.top
            .iter()
            .chain(&self.nested)
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    /// A field's value, `None` when absent or `null`.
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<At<T>>> {
        let Some(raw) = self.raw(key) else {
            return Ok(None);
        };
        let value: Option<T> = json::value(self.text, 0, raw, key)?;
        Ok(value.map(|value| At {
            value,
            offset: json::offset_in(self.text, raw),
            key: key.to_owned(),
        }))
    }

    fn first<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Option<At<T>>> {
        for key in keys {
            if let Some(v) = self.get(key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn number(&self, keys: &[&str]) -> Result<Option<u64>> {
        Ok(self.first::<u64>(keys)?.map(|v| v.value))
    }

    fn count(&self, keys: &[&str]) -> Result<Option<At<Count>>> {
        Ok(self.first::<OneOrList>(keys)?.map(|v| At {
            value: match v.value {
                OneOrList::One(n) => Count::One(n),
                OneOrList::List(l) => Count::List(l),
            },
            offset: v.offset,
            key: v.key,
        }))
    }
}

/// Reads `folder/config.json`; a folder without one describes nothing.
pub(crate) fn read(folder: &Path) -> Result<Arch> {
    let path = folder.join(CONFIG_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arch::default()),
        Err(e) => return Err(io_error(&e)),
    };
    let len = file.metadata().map_err(|e| io_error(&e))?.len();
    if len > MAX_CONFIG {
        return Err(invalid(
            0,
            format!("{CONFIG_FILE} is {len} bytes, more than {MAX_CONFIG}"),
        ));
    }
    let bytes = Source::new(file, len)?.take(len, CONFIG_FILE)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| invalid(e.valid_up_to() as u64, "not valid UTF-8"))
        .map_err(|e| in_file(e, CONFIG_FILE))?;
    parse(text).map_err(|e| in_file(e, CONFIG_FILE))
}

/// The architecture numbers of a config.json's text.
pub(crate) fn parse(text: &str) -> Result<Arch> {
    let top = known(text, 0, "the config")?;
    let nested = match top.iter().find(|(k, _)| *k == "text_config") {
        // Its values are slices of `text` too, so offsets stay file offsets.
        Some((_, raw)) if raw.get() != "null" => {
            known(raw.get(), json::offset_in(text, raw), "text_config")?
        }
        _ => Vec::new(),
    };
    let c = Config { text, top, nested };

    let n_layers = match c.first::<u64>(&["num_hidden_layers", "n_layer", "num_layers"])? {
        Some(v) => Some(Arch::layers(v.value, v.offset, &v.key)?),
        None => None,
    };
    let n_head = c.count(&["num_attention_heads", "n_head"])?;
    let n_head_kv = c.count(&["num_key_value_heads"])?;
    // Multi-head latent attention (DeepSeek) caches keys of the no-rope
    // and rope parts together, and values of their own width.
    let mla_k = match (
        c.number(&["qk_nope_head_dim"])?,
        c.number(&["qk_rope_head_dim"])?,
    ) {
        (Some(a), Some(b)) => a.checked_add(b),
        _ => None,
    };
    let head_dim = c.number(&["head_dim"])?;
    let (sliding_window, swa_layers) = sliding(&c)?;

    Ok(Arch {
        architecture: c.first::<String>(&["model_type"])?.map(|v| v.value),
        name: c
            .first::<String>(&["_name_or_path"])?
            .map(|v| v.value)
            .filter(|n| !n.is_empty()),
        n_layers,
        n_head,
        n_head_kv,
        head_dim_k: mla_k.or(head_dim),
        head_dim_v: c.number(&["v_head_dim"])?.or(head_dim),
        n_embd: c.number(&["hidden_size", "n_embd", "d_model"])?,
        n_vocab: c.number(&["vocab_size"])?,
        context_length: c.number(&[
            "max_position_embeddings",
            "n_positions",
            "max_sequence_length",
            "seq_length",
        ])?,
        sliding_window,
        swa_layers,
        n_experts: c.number(&["num_local_experts", "num_experts", "n_routed_experts"])?,
        n_experts_used: c.number(&["num_experts_per_tok"])?,
    })
}

/// The window and which layers use it, in transformers' order of
/// precedence: explicit `layer_types`, a disabled `use_sliding_window`, a
/// `sliding_window_pattern`, Gemma-2's fixed alternation, Qwen2's
/// `max_window_layers`, and otherwise every layer (Mistral).
fn sliding(c: &Config) -> Result<(Option<u64>, Option<At<SwaLayers>>)> {
    let window = match c.get::<Window>("sliding_window")? {
        Some(At {
            value: Window::Size(n),
            ..
        }) if n > 0 => n,
        Some(At {
            value: Window::Flag(true),
            offset,
            ..
        }) => {
            return Err(invalid(
                offset,
                "sliding_window is true, expected a number of tokens",
            ));
        }
        _ => return Ok((None, None)),
    };
    if let Some(types) = c.get::<Vec<String>>("layer_types")? {
        let flags = types
            .value
            .iter()
            .map(|t| t == "sliding_attention")
            .collect();
        return Ok((
            Some(window),
            Some(At {
                value: SwaLayers::Flags(flags),
                offset: types.offset,
                key: types.key,
            }),
        ));
    }
    if c.get::<bool>("use_sliding_window")?
        .is_some_and(|v| !v.value)
    {
        return Ok((None, None));
    }
    let model_type = c.get::<String>("model_type")?.map(|v| v.value);
    let rule = if let Some(p) = c.number(&["sliding_window_pattern"])? {
        SwaLayers::Period(p)
    } else if model_type.as_deref() == Some("gemma2") {
        SwaLayers::Period(2)
    } else if let Some(first) = c.number(&["max_window_layers"])? {
        SwaLayers::From(first)
    } else {
        SwaLayers::Period(0)
    };
    let at = At {
        value: rule,
        offset: 0,
        key: "sliding_window_pattern".to_owned(),
    };
    Ok((Some(window), Some(at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_llama_config() {
        let arch = parse(
            r#"{"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "max_position_embeddings": 131072, "rope_scaling": {"factor": 8.0}}"#,
        )
        .unwrap();
        assert_eq!(arch.architecture.as_deref(), Some("llama"));
        assert_eq!(arch.n_layers.map(|n| n.value), Some(32));
        assert_eq!(arch.n_head_kv.map(|n| n.value), Some(Count::One(8)));
        assert_eq!(arch.context_length, Some(131072));
        assert_eq!(arch.sliding_window, None);
    }

    #[test]
    fn sliding_windows_follow_transformers() {
        let qwen_off = parse(
            r#"{"sliding_window": 131072, "use_sliding_window": false, "max_window_layers": 28}"#,
        )
        .unwrap();
        assert_eq!(qwen_off.sliding_window, None);
        let gemma2 = parse(r#"{"model_type": "gemma2", "sliding_window": 4096}"#).unwrap();
        assert_eq!(
            gemma2.swa_layers.map(|r| r.value),
            Some(SwaLayers::Period(2))
        );
        let mistral = parse(r#"{"sliding_window": 4096}"#).unwrap();
        assert_eq!(
            mistral.swa_layers.map(|r| r.value),
            Some(SwaLayers::Period(0))
        );
        let typed = parse(
            r#"{"sliding_window": 512, "layer_types": ["sliding_attention", "full_attention"]}"#,
        )
        .unwrap();
        assert_eq!(
            typed.swa_layers.map(|r| r.value),
            Some(SwaLayers::Flags(vec![true, false]))
        );
        let null = parse(r#"{"sliding_window": null}"#).unwrap();
        assert_eq!(null.sliding_window, None);
    }

    #[test]
    fn text_config_describes_multimodal_models() {
        let arch = parse(r#"{"model_type": "gemma3", "text_config": {"num_hidden_layers": 34, "head_dim": 256}}"#).unwrap();
        assert_eq!(arch.n_layers.map(|n| n.value), Some(34));
        assert_eq!((arch.head_dim_k, arch.head_dim_v), (Some(256), Some(256)));
    }

    #[test]
    fn wrong_types_name_the_field_and_byte() {
        let err = parse("{\"num_hidden_layers\": -3}").unwrap_err();
        let crate::error::Error::InvalidModel { offset, reason } = err else {
            panic!()
        };
        assert!(
            reason.starts_with("num_hidden_layers: invalid value: integer `-3`"),
            "{reason}"
        );
        assert!((21..=24).contains(&offset), "{offset}");
    }
}
