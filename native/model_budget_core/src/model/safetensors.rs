//! safetensors: one file, or a sharded model through its index.
//!
//! A file is an 8-byte little-endian header length, a JSON header mapping
//! tensor names to `{dtype, shape, data_offsets}`, then the data. As in the
//! reference implementation, the tensors must tile the data section exactly:
//! sorted by offset, each starts where the previous ends, and the last ends
//! at the end of the file.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::arch::Arch;
use super::json;
use super::source::Source;
use super::tally::{assemble, Embedding, Ffn, Role, Tensor};
use super::{config, in_file, invalid, io_error, Format, Model};
use crate::error::Result;

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";
/// The largest header (and index file) we read: the reference
/// implementation's limit.
pub const MAX_HEADER: u64 = 100_000_000;

/// Element types the format defines.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    BOOL,
    F4,
    F6_E2M3,
    F6_E3M2,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    F8_E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    C64,
    F64,
    I64,
    U64,
}

const DTYPES: &[(Dtype, &str, u64)] = &[
    (Dtype::BOOL, "BOOL", 8),
    (Dtype::F4, "F4", 4),
    (Dtype::F6_E2M3, "F6_E2M3", 6),
    (Dtype::F6_E3M2, "F6_E3M2", 6),
    (Dtype::U8, "U8", 8),
    (Dtype::I8, "I8", 8),
    (Dtype::F8_E5M2, "F8_E5M2", 8),
    (Dtype::F8_E4M3, "F8_E4M3", 8),
    (Dtype::F8_E8M0, "F8_E8M0", 8),
    (Dtype::I16, "I16", 16),
    (Dtype::U16, "U16", 16),
    (Dtype::F16, "F16", 16),
    (Dtype::BF16, "BF16", 16),
    (Dtype::I32, "I32", 32),
    (Dtype::U32, "U32", 32),
    (Dtype::F32, "F32", 32),
    (Dtype::C64, "C64", 64),
    (Dtype::F64, "F64", 64),
    (Dtype::I64, "I64", 64),
    (Dtype::U64, "U64", 64),
];

impl Dtype {
    pub fn from_name(name: &str) -> Option<Dtype> {
        DTYPES
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(d, _, _)| *d)
    }

    /// The name the header spells it with.
    pub fn name(self) -> &'static str {
        DTYPES
            .iter()
            .find(|(d, _, _)| *d == self)
            .map_or("", |(_, n, _)| n)
    }

    /// Bits per element (BOOL is stored as a byte).
    pub fn bits(self) -> u64 {
        DTYPES
            .iter()
            .find(|(d, _, _)| *d == self)
            .map_or(0, |(_, _, b)| *b)
    }
}

/// One tensor of a header, checked against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub elements: u64,
    /// Offsets into the data section (after the header).
    pub data_offsets: (u64, u64),
    /// Byte of the file where the tensor's entry starts.
    pub at: u64,
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// Reads and checks the header of a safetensors file of `len` bytes.
pub fn parse_header<R: Read + Seek>(reader: R, len: u64) -> Result<Vec<TensorInfo>> {
    let mut src = Source::new(reader, len)?;
    let n = src.u64("header length")?;
    if n > MAX_HEADER {
        return Err(invalid(
            0,
            format!("header length {n} is more than the {MAX_HEADER} bytes the format allows"),
        ));
    }
    if n > src.remaining() {
        return Err(invalid(
            0,
            format!("header length {n} runs past the end of the file ({len} bytes)"),
        ));
    }
    let bytes = src.take(n, "header")?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| invalid(8 + e.valid_up_to() as u64, "header is not valid UTF-8"))?;
    let mut tensors = Vec::new();
    json::for_each_entry(text, 8, "header", |name, raw| {
        if name != "__metadata__" {
            tensors.push(tensor(text, name, raw)?);
        }
        Ok(())
    })?;
    check_unique(&tensors)?;
    check_tiling(&mut tensors, 8 + n, len)?;
    Ok(tensors)
}

/// One header entry, checked: a known dtype, a shape whose size in bytes
/// is exactly what its data offsets span.
fn tensor(text: &str, name: String, raw: &RawValue) -> Result<TensorInfo> {
    let at = 8 + json::offset_in(text, raw);
    let t: RawTensor = json::value(text, 8, raw, &format!("tensor {name}"))?;
    let dtype = Dtype::from_name(&t.dtype)
        .ok_or_else(|| invalid(at, format!("tensor {name} has unknown dtype {:?}", t.dtype)))?;
    let elements = t
        .shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| invalid(at, format!("tensor {name} has more than 2^64 elements")))?;
    let bits = elements
        .checked_mul(dtype.bits())
        .ok_or_else(|| invalid(at, format!("tensor {name} has more than 2^64 bits")))?;
    if !bits.is_multiple_of(8) {
        return Err(invalid(
            at,
            format!(
                "tensor {name} of {elements} {} elements is not a whole number of bytes",
                dtype.name()
            ),
        ));
    }
    let (begin, end) = t.data_offsets;
    if end < begin || end - begin != bits / 8 {
        return Err(invalid(at, format!(
            "tensor {name} of dtype {} and shape {:?} needs {} bytes but its data_offsets [{begin}, {end}] hold {}",
            dtype.name(), t.shape, bits / 8, end.saturating_sub(begin)
        )));
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape: t.shape,
        elements,
        data_offsets: (begin, end),
        at,
    })
}

fn check_unique(tensors: &[TensorInfo]) -> Result<()> {
    let mut names: Vec<(&str, u64)> = tensors.iter().map(|t| (t.name.as_str(), t.at)).collect();
    names.sort_unstable();
    match names.windows(2).find(|w| w[0].0 == w[1].0) {
        Some(w) => Err(invalid(w[1].1, format!("duplicate tensor name {}", w[1].0))),
        None => Ok(()),
    }
}

/// Tensors cover the data section exactly, in offset order.
fn check_tiling(tensors: &mut [TensorInfo], data_start: u64, len: u64) -> Result<()> {
    tensors.sort_by_key(|t| t.data_offsets);
    let mut next = 0u64;
    for t in tensors.iter() {
        let (begin, end) = t.data_offsets;
        if begin != next {
            return Err(invalid(t.at, format!(
                "tensor {} starts at data byte {begin}, expected {next}: tensors must follow each other without gaps or overlap",
                t.name
            )));
        }
        let file_end = data_start.checked_add(end).filter(|&e| e <= len);
        if file_end.is_none() {
            return Err(invalid(
                t.at,
                format!(
                    "tensor {} ends at data byte {end}, past the end of the file ({len} bytes)",
                    t.name
                ),
            ));
        }
        next = end;
    }
    let data_end = data_start + next;
    if data_end != len {
        return Err(invalid(
            data_end,
            format!("the tensors end at byte {data_end} but the file has {len} bytes"),
        ));
    }
    Ok(())
}

/// Parses a single safetensors file of `len` bytes into a model, without a
/// config.json.
pub fn parse<R: Read + Seek>(reader: R, len: u64) -> Result<Model> {
    let tensors = parse_header(reader, len)?;
    model(len, Arch::default(), &tensors)
}

/// The feed-forward block a transformers down projection describes, if the
/// tensor is one: `[n_embd, width]` (rows first).
fn ffn(name: &str, shape: &[u64]) -> Option<Ffn> {
    let down = ["down_proj.weight", "w2.weight"]
        .iter()
        .any(|s| name.ends_with(s));
    match shape {
        [_, width] if down => Some(Ffn {
            width: *width,
            expert: name.contains(".experts."),
        }),
        _ => None,
    }
}

fn model(file_bytes: u64, arch: Arch, infos: &[TensorInfo]) -> Result<Model> {
    let mut embedding = None;
    let tensors: Vec<Tensor> = infos
        .iter()
        .map(|t| {
            let role = role(&t.name);
            if role == Role::Embedding && t.shape.len() == 2 {
                embedding = Some(Embedding {
                    n_vocab: t.shape[0],
                    n_embd: t.shape[1],
                });
            }
            Tensor {
                role,
                type_name: t.dtype.name(),
                elements: t.elements,
                bytes: t.data_offsets.1 - t.data_offsets.0,
                // llama.cpp does not load safetensors: no repacking.
                matrix: None,
                ffn: ffn(&t.name, &t.shape),
            }
        })
        .collect();
    assemble(Format::Safetensors, file_bytes, arch, &tensors, embedding)
}

/// Segments that hold the repeating blocks, followed by the block index.
const BLOCKS: &[&str] = &["layers", "h", "blocks", "block", "layer"];
const EMBEDDINGS: &[&str] = &[
    "embed_tokens",
    "wte",
    "word_embeddings",
    "tok_embeddings",
    "embed_in",
];
const INPUTS: &[&str] = &[
    "wpe",
    "embed_positions",
    "position_embeddings",
    "token_type_embeddings",
    "word_embeddings_layernorm",
];
const HEADS: &[&str] = &["lm_head", "embed_out", "output"];
const FINAL_NORMS: &[&str] = &[
    "norm",
    "ln_f",
    "final_layernorm",
    "final_layer_norm",
    "final_norm",
    "norm_f",
];

/// Other models in a multimodal checkpoint: neither blocks nor the head.
fn is_tower(segment: &str) -> bool {
    ["vision", "visual", "audio", "multi_modal", "mm_projector"]
        .iter()
        .any(|t| segment.contains(t))
}

/// Where a tensor named in the transformers scheme belongs.
fn role(name: &str) -> Role {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.iter().any(|p| is_tower(p)) {
        return Role::Other;
    }
    for (i, pair) in parts.windows(2).enumerate() {
        let digits = !pair[1].is_empty() && pair[1].bytes().all(|b| b.is_ascii_digit());
        if BLOCKS.contains(&pair[0]) && digits {
            return match pair[1].parse() {
                Ok(il) if i + 2 < parts.len() => Role::Layer(il),
                _ => Role::Other,
            };
        }
    }
    let last = parts.last().copied().unwrap_or("");
    let owner = parts.len().checked_sub(2).map_or("", |i| parts[i]);
    if EMBEDDINGS.contains(&owner) {
        return if last == "weight" {
            Role::Embedding
        } else {
            Role::Input
        };
    }
    if INPUTS.contains(&owner) {
        return Role::Input;
    }
    if HEADS.contains(&parts[0]) && parts.len() == 2 {
        return if last == "weight" {
            Role::Head
        } else {
            Role::Output
        };
    }
    if FINAL_NORMS.contains(&owner) {
        return Role::OutputNorm;
    }
    Role::Other
}

fn open(path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).map_err(|e| io_error(&e))?;
    let len = file.metadata().map_err(|e| io_error(&e))?.len();
    Ok((file, len))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Reads a `.safetensors` file or a sharded model's index, with the
/// config.json in `folder`.
pub(crate) fn read_path(path: &Path, folder: &Path) -> Result<Model> {
    let arch = config::read(folder)?;
    if file_name(path).ends_with(".json") {
        return read_index(path, folder, arch);
    }
    let (file, len) = open(path)?;
    let tensors = parse_header(file, len)?;
    model(len, arch, &tensors)
}

/// A shard's file name must name a file beside the index, nothing else.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

fn read_index(path: &Path, folder: &Path, arch: Arch) -> Result<Model> {
    let index_name = file_name(path);
    let (file, len) = open(path)?;
    if len > MAX_HEADER {
        return Err(invalid(
            0,
            format!("{index_name} is {len} bytes, more than {MAX_HEADER}"),
        ));
    }
    let mut src = Source::new(file, len)?;
    let bytes = src.take(len, &index_name)?;
    let located = |e| in_file(e, &index_name);
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| located(invalid(e.valid_up_to() as u64, "not valid UTF-8")))?;
    let mut weight_map = None;
    json::for_each_entry(text, 0, "the index", |key, raw| {
        if key == "weight_map" {
            weight_map.get_or_insert(raw);
        }
        Ok(())
    })
    .map_err(located)?;
    let map_raw = weight_map.ok_or_else(|| located(invalid(0, "no weight_map")))?;
    // shard -> tensors the index places in it, with where it says so.
    let mut shards: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let map_at = json::offset_in(text, map_raw);
    let map_text = map_raw.get();
    json::for_each_entry(map_text, map_at, "weight_map", |tensor, raw| {
        let shard: String = json::value(map_text, map_at, raw, &format!("weight_map[{tensor:?}]"))?;
        let at = map_at + json::offset_in(map_text, raw);
        if !plain_file_name(&shard) {
            return Err(invalid(
                at,
                format!("shard {shard:?} is not a file beside the index"),
            ));
        }
        shards.entry(shard).or_default().push((tensor, at));
        Ok(())
    })
    .map_err(located)?;

    let mut file_bytes = 0u64;
    let mut all = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (shard, listed) in &shards {
        let (file, len) = open(&folder.join(shard))?;
        let tensors = parse_header(file, len).map_err(|e| in_file(e, shard))?;
        let held: HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        if let Some((tensor, at)) = listed.iter().find(|(t, _)| !held.contains(t.as_str())) {
            return Err(located(invalid(
                *at,
                format!("names {shard} for tensor {tensor}, which that shard does not hold"),
            )));
        }
        for t in &tensors {
            if !seen.insert(t.name.clone()) {
                return Err(in_file(
                    invalid(t.at, format!("tensor {} is also in another shard", t.name)),
                    shard,
                ));
            }
        }
        file_bytes = file_bytes
            .checked_add(len)
            .ok_or_else(|| invalid(0, "the shards add up past 2^64 bytes"))?;
        all.extend(tensors);
    }
    model(file_bytes, arch, &all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_widths_match_the_reference() {
        assert_eq!(DTYPES.len(), 20);
        assert_eq!(Dtype::from_name("F4").map(Dtype::bits), Some(4));
        assert_eq!(Dtype::from_name("F6_E3M2").map(Dtype::bits), Some(6));
        assert_eq!(Dtype::from_name("BOOL").map(Dtype::bits), Some(8));
        assert_eq!(Dtype::from_name("C64").map(Dtype::bits), Some(64));
        assert_eq!(Dtype::from_name("bf16"), None);
        for (d, name, _) in DTYPES {
            assert_eq!(Dtype::from_name(name), Some(*d));
            assert_eq!(d.name(), *name);
        }
    }

    #[test]
    fn roles_follow_transformers_names() {
        assert_eq!(role("model.embed_tokens.weight"), Role::Embedding);
        assert_eq!(
            role("model.layers.31.mlp.down_proj.weight"),
            Role::Layer(31)
        );
        assert_eq!(
            role("model.layers.3.block_sparse_moe.experts.7.w1.weight"),
            Role::Layer(3)
        );
        assert_eq!(role("transformer.h.0.attn.c_attn.weight"), Role::Layer(0));
        assert_eq!(role("model.norm.weight"), Role::OutputNorm);
        assert_eq!(role("transformer.ln_f.bias"), Role::OutputNorm);
        assert_eq!(role("lm_head.weight"), Role::Head);
        assert_eq!(role("transformer.wpe.weight"), Role::Input);
        assert_eq!(
            role("vision_tower.encoder.layers.0.mlp.fc1.weight"),
            Role::Other
        );
        assert_eq!(role("model.layers.x.weight"), Role::Other);
        assert_eq!(role("model.rotary_emb.inv_freq"), Role::Other);
    }

    #[test]
    fn shard_names_stay_in_the_folder() {
        assert!(plain_file_name("model-00001-of-00002.safetensors"));
        for bad in ["", ".", "..", "../x.safetensors", "/etc/passwd", "a\\b"] {
            assert!(!plain_file_name(bad), "{bad}");
        }
    }
}
