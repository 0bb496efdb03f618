//! Turns a header's tensor table into the byte breakdown of a [`Model`]:
//! per block, embeddings, output head, and per type.

use std::collections::{BTreeMap, BTreeSet};

use super::arch::{per_layer, swa_flags, Arch, At, SwaLayers};
use super::{
    invalid, push_run, Format, GgmlType, MatrixBytes, MatrixClass, Model, Part, Run, TypeStats,
    MAX_LAYERS,
};
use crate::error::Result;

/// Where a tensor belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Repeating block `n`.
    Layer(u64),
    /// The token embedding matrix.
    Embedding,
    /// Other input-side tensors (position embeddings, embedding norms).
    Input,
    /// The output head matrix.
    Head,
    /// The final norm before the head.
    OutputNorm,
    /// Other output-side tensors (head bias).
    Output,
    Other,
}

/// One tensor of the table, reduced to what the breakdown needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tensor {
    pub role: Role,
    pub type_name: &'static str,
    pub elements: u64,
    pub bytes: u64,
    /// A weight matrix: what an extra CPU buffer type may take.
    pub matrix: Option<Matrix>,
    /// A feed-forward down projection: how wide the block makes a token.
    pub ffn: Option<Ffn>,
}

/// A weight matrix (2-D, or 3-D for a MoE block's stacked experts) of a
/// ggml type: `rows` output rows of `cols` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Matrix {
    pub ggml: GgmlType,
    pub rows: u64,
    pub cols: u64,
    pub stacked: bool,
}

impl Matrix {
    fn class(&self) -> MatrixClass {
        MatrixClass::of(self.ggml.name, self.rows, self.cols, self.stacked)
    }
}

/// The width of a feed-forward block (`n_ff`), read from its down
/// projection's input: right for gated, plain and fused gate-up blocks
/// alike. Of one expert, for the experts of a MoE block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ffn {
    pub width: u64,
    pub expert: bool,
}

impl Ffn {
    /// The block a llama.cpp tensor name and its dimensions (fastest
    /// first) describe, if it is a down projection.
    pub(crate) fn of_gguf(name: &[u8], dims: &[u64]) -> Option<Ffn> {
        match dims {
            [width, _, _] if name.ends_with(b"ffn_down_exps.weight") => Some(Ffn {
                width: *width,
                expert: true,
            }),
            [width, _] if name.ends_with(b"ffn_down.weight") => Some(Ffn {
                width: *width,
                expert: false,
            }),
            _ => None,
        }
    }
}

impl Matrix {
    /// The matrix a GGUF tensor is, if it is one: a 2-D or 3-D `.weight`.
    /// The token embeddings are one too, though looked up, not multiplied:
    /// a tied head multiplies by them.
    pub(crate) fn of_gguf(name: &[u8], ggml: GgmlType, dims: &[u64]) -> Option<Matrix> {
        let matrix = name.ends_with(b".weight") && (dims.len() == 2 || dims.len() == 3);
        matrix.then(|| Matrix {
            ggml,
            rows: dims[1],
            cols: dims[0],
            stacked: dims.len() == 3,
        })
    }
}

/// What the tensors say about the architecture where the metadata does
/// not: the embedding matrix's shape.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Embedding {
    pub n_embd: u64,
    pub n_vocab: u64,
}

fn add(a: u64, b: u64) -> Result<u64> {
    a.checked_add(b)
        .ok_or_else(|| invalid(0, "the tensors' sizes add up past 2^64"))
}

/// The layer count: the metadata's, or else the longest run `0, 1, ...` of
/// block indices the tensors use (bounded by the tensor count, so a hostile
/// index cannot size an allocation).
fn layer_count(arch: &Arch, tensors: &[Tensor]) -> u64 {
    if let Some(n) = &arch.n_layers {
        return n.value;
    }
    let used: BTreeSet<u64> = tensors
        .iter()
        .filter_map(|t| match t.role {
            Role::Layer(il) => Some(il),
            _ => None,
        })
        .collect();
    (0..MAX_LAYERS).take_while(|il| used.contains(il)).count() as u64
}

/// Builds the model from its metadata and tensor table.
pub(crate) fn assemble(
    format: Format,
    file_bytes: u64,
    arch: Arch,
    tensors: &[Tensor],
    embedding: Option<Embedding>,
) -> Result<Model> {
    let n_layers = layer_count(&arch, tensors);
    // n_layers <= MAX_LAYERS, so this allocation is bounded.
    let mut layer_bytes = vec![0u64; n_layers as usize];
    let (mut input, mut output, mut other) = (0u64, 0u64, 0u64);
    let (mut weight_bytes, mut n_params) = (0u64, 0u64);
    let mut types: BTreeMap<String, TypeStats> = BTreeMap::new();
    let (mut has_head, mut has_norm, mut embedding_bytes) = (false, false, None);
    let mut layer_matrices = vec![MatrixBytes::new(); n_layers as usize];
    let mut head_matrices = MatrixBytes::new();
    let mut embedding_matrix = None;
    let (mut n_ff, mut n_ff_exp) = (None::<u64>, None::<u64>);
    let mut layer_largest_matrix = vec![0u64; n_layers as usize];
    let mut file_order: Vec<Run> = Vec::new();
    for t in tensors {
        // The header lists tensors in the order their data follows (gguf-py
        // and llama.cpp write both in one order).
        let part = match t.role {
            // il < n_layers <= MAX_LAYERS fits in 32 bits.
            Role::Layer(il) if il < n_layers => Part::Layer(il as u32),
            Role::Head | Role::OutputNorm | Role::Output => Part::Output,
            _ => Part::Input,
        };
        // The embeddings themselves are looked up, never taken (a tied
        // head's copy is `embedding_matrix`).
        let class = t
            .matrix
            .filter(|_| t.role != Role::Embedding)
            .map(|m| m.class());
        push_run(&mut file_order, part, class, t.bytes)?;
        if t.role == Role::Embedding {
            embedding_matrix = t.matrix.map(|m| m.class());
        }
        if let (Some(_), Role::Layer(il)) = (t.matrix, t.role) {
            if il < n_layers {
                let largest = &mut layer_largest_matrix[il as usize];
                *largest = (*largest).max(t.bytes);
            }
        }
        if let Some(f) = t.ffn {
            let widest = if f.expert { &mut n_ff_exp } else { &mut n_ff };
            *widest = Some(widest.map_or(f.width, |w| w.max(f.width)));
        }
        if let Some(class) = class {
            let bucket = match t.role {
                Role::Layer(il) if il < n_layers => Some(&mut layer_matrices[il as usize]),
                Role::Head => Some(&mut head_matrices),
                _ => None,
            };
            if let Some(bucket) = bucket {
                let slot = bucket.entry(class).or_default();
                *slot = add(*slot, t.bytes)?;
            }
        }
        weight_bytes = add(weight_bytes, t.bytes)?;
        n_params = add(n_params, t.elements)?;
        let stats = types.entry(t.type_name.to_owned()).or_default();
        stats.n_tensors += 1;
        stats.n_params = add(stats.n_params, t.elements)?;
        stats.bytes = add(stats.bytes, t.bytes)?;
        let slot = match t.role {
            Role::Layer(il) if il < n_layers => &mut layer_bytes[il as usize],
            Role::Layer(_) | Role::Other => &mut other,
            Role::Embedding => {
                embedding_bytes = Some(t.bytes);
                &mut input
            }
            Role::Input => &mut input,
            Role::Head => {
                has_head = true;
                &mut output
            }
            Role::OutputNorm => {
                has_norm = true;
                &mut output
            }
            Role::Output => &mut output,
        };
        *slot = add(*slot, t.bytes)?;
    }
    // No head but an embedding and a final norm: a decoder whose head is
    // the embedding matrix.
    let tied_embeddings = !has_head && has_norm && embedding_bytes.is_some();

    let n_head = arch
        .n_head
        .as_ref()
        .map(|c| per_layer(c, n_layers))
        .transpose()?;
    let n_head_kv = match &arch.n_head_kv {
        Some(c) => Some(per_layer(c, n_layers)?),
        None => n_head.clone(),
    };
    let n_embd = arch.n_embd.or(embedding.map(|e| e.n_embd));
    // Heads of the first layer, as llama.cpp's `n_embd / n_head()`.
    let default_head_dim = match (n_embd, n_head.as_ref().and_then(|h| h.layer(0))) {
        (Some(embd), Some(heads)) if heads > 0 => Some(embd / heads),
        _ => None,
    };
    let sliding_window = arch.sliding_window.filter(|&w| w > 0);
    let sliding_window_layers = match (sliding_window, &arch.swa_layers) {
        (None, _) => Vec::new(),
        (Some(_), Some(rule)) => swa_flags(rule, n_layers)?,
        (Some(_), None) => swa_flags(
            &At {
                value: SwaLayers::Unknown,
                offset: 0,
                key: String::new(),
            },
            n_layers,
        )?,
    };

    Ok(Model {
        format,
        architecture: arch.architecture,
        name: arch.name,
        file_type: None,
        file_bytes,
        weight_bytes,
        n_params,
        n_tensors: tensors.len() as u64,
        n_layers,
        n_head,
        n_head_kv,
        head_dim_k: arch.head_dim_k.or(default_head_dim),
        head_dim_v: arch.head_dim_v.or(default_head_dim),
        n_embd,
        n_vocab: arch.n_vocab.or(embedding.map(|e| e.n_vocab)),
        context_length: arch.context_length,
        sliding_window,
        sliding_window_layers,
        n_experts: arch.n_experts.filter(|&n| n > 0),
        n_experts_used: arch.n_experts_used.filter(|&n| n > 0),
        layer_bytes,
        input_bytes: input,
        output_bytes: output,
        other_bytes: other,
        embedding_bytes: embedding_bytes.unwrap_or(0),
        tied_embeddings,
        types,
        n_ff,
        n_ff_exp,
        layer_matrices,
        head_matrices,
        embedding_matrix: embedding_matrix.filter(|_| tied_embeddings),
        layer_largest_matrix,
        file_order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PerLayer;

    fn tensor(role: Role, bytes: u64) -> Tensor {
        Tensor {
            role,
            type_name: "F16",
            elements: bytes / 2,
            bytes,
            matrix: None,
            ffn: None,
        }
    }

    #[test]
    fn splits_bytes_by_role_and_counts_a_tied_head_once() {
        let tensors = [
            tensor(Role::Embedding, 100),
            tensor(Role::Layer(0), 10),
            tensor(Role::Layer(1), 12),
            tensor(Role::Layer(1), 2),
            tensor(Role::Layer(7), 4),
            tensor(Role::OutputNorm, 2),
            tensor(Role::Other, 6),
        ];
        let m = assemble(Format::Gguf, 1000, Arch::default(), &tensors, None).unwrap();
        assert_eq!(m.n_layers, 2);
        assert_eq!(m.layer_bytes, [10, 14]);
        assert_eq!(m.input_bytes, 100);
        assert!(m.tied_embeddings);
        assert_eq!((m.output_bytes, m.embedding_bytes), (2, 100));
        assert_eq!(m.other_bytes, 10);
        assert_eq!(m.weight_bytes, 136);
        assert_eq!(m.n_params, 68);
        assert_eq!(
            m.types["F16"],
            TypeStats {
                n_tensors: 7,
                n_params: 68,
                bytes: 136
            }
        );
    }

    #[test]
    fn a_separate_head_is_not_tied() {
        let tensors = [
            tensor(Role::Embedding, 100),
            tensor(Role::Head, 100),
            tensor(Role::OutputNorm, 2),
        ];
        let m = assemble(Format::Gguf, 1000, Arch::default(), &tensors, None).unwrap();
        assert!(!m.tied_embeddings);
        assert_eq!((m.input_bytes, m.output_bytes), (100, 102));
    }

    #[test]
    fn head_dims_default_to_embedding_over_heads() {
        let arch = Arch {
            n_head: Some(At {
                value: super::super::arch::Count::One(32),
                offset: 0,
                key: "h".into(),
            }),
            ..Arch::default()
        };
        let embedding = Embedding {
            n_embd: 4096,
            n_vocab: 128256,
        };
        let m = assemble(Format::Gguf, 0, arch, &[], Some(embedding)).unwrap();
        assert_eq!((m.head_dim_k, m.head_dim_v), (Some(128), Some(128)));
        assert_eq!(m.n_head_kv, Some(PerLayer::Uniform(32)));
        assert_eq!((m.n_embd, m.n_vocab), (Some(4096), Some(128256)));
    }
}
