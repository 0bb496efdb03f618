//! From a read [`Model`] to the [`ModelShape`] placement works on, so that a
//! pure-Rust user can read a model and place it:
//!
//! ```no_run
//! use model_budget_core::{estimate::layout, model, DistributeOptions};
//! use model_budget_core::estimate::layout::ModelShape;
//!
//! let model = model::read("model.gguf".as_ref())?;
//! let shape = ModelShape::try_from(&model)?;
//! let placement = layout::distribute_model(&shape, &DistributeOptions::default(), 1)?;
//! # Ok::<(), model_budget_core::Error>(())
//! ```
//!
//! The domain rules of that step live here, used by the NIF's decoder of
//! `%ModelBudget.Model{}` as well.

use crate::error::{invalid, Error, Result};
use crate::estimate::layout::ModelShape;
use crate::model::{Model, PerLayer};

/// Bytes that stay on the host with the token embeddings: the embeddings
/// and the tensors outside blocks, embeddings and head (rope tables and the
/// like).
pub fn host_input_bytes(input_bytes: u64, other_bytes: u64) -> u64 {
    input_bytes.saturating_add(other_bytes)
}

/// The attention heads compute buffers are sized for: the most any layer
/// has.
pub fn attention_heads(per_layer: &[u32]) -> u32 {
    per_layer.iter().copied().max().unwrap_or(0)
}

fn known(value: Option<u64>, name: &str) -> Result<u32> {
    let value = value.ok_or_else(|| {
        invalid(
            "model",
            format!("expected a model whose {name} is known (the header did not say)"),
        )
    })?;
    u32::try_from(value)
        .map_err(|_| invalid("model", format!("{name} {value} does not fit in 32 bits")))
}

fn per_layer(value: &Option<PerLayer>, name: &str, n: usize) -> Result<Vec<u32>> {
    match value {
        Some(PerLayer::Layers(v)) if v.len() != n => Err(invalid(
            "model",
            format!("{name} lists {} layers but the model has {n}", v.len()),
        )),
        Some(PerLayer::Layers(v)) => v.iter().map(|x| known(Some(*x), name)).collect(),
        Some(PerLayer::Uniform(x)) => Ok(vec![known(Some(*x), name)?; n]),
        None => Err(known(None, name).unwrap_err()),
    }
}

impl TryFrom<&Model> for ModelShape {
    type Error = Error;

    /// Fails, naming the field, when the header leaves out something
    /// placement needs (attention heads, head dimensions, embedding width,
    /// vocabulary) or gives a count beyond 32 bits.
    fn try_from(m: &Model) -> Result<ModelShape> {
        let n = m.layer_bytes.len();
        let shape = ModelShape {
            layer_bytes: m.layer_bytes.clone(),
            input_bytes: host_input_bytes(m.input_bytes, m.other_bytes),
            output_bytes: m.output_bytes,
            embedding_bytes: m.embedding_bytes,
            tied_embeddings: m.tied_embeddings,
            layer_matrices: m.layer_matrices.clone(),
            head_matrices: m.head_matrices.clone(),
            embedding_matrix: m.embedding_matrix,
            n_ff: m.n_ff.unwrap_or(0),
            n_ff_exp: m.n_ff_exp.unwrap_or(0),
            n_expert_used: m.n_experts_used.unwrap_or(0),
            n_head: attention_heads(&per_layer(&m.n_head, "n_head", n)?),
            n_head_kv: per_layer(&m.n_head_kv, "n_head_kv", n)?,
            head_dim_k: known(m.head_dim_k, "head_dim_k")?,
            head_dim_v: known(m.head_dim_v, "head_dim_v")?,
            n_embd: known(m.n_embd, "n_embd")?,
            n_vocab: known(m.n_vocab, "n_vocab")?,
            context_length: m.context_length.unwrap_or(0),
            sliding_window: m.sliding_window,
            swa_layers: m.sliding_window_layers.clone(),
            largest_matrix: m.layer_largest_matrix.clone(),
            file_order: m.file_order.clone(),
        };
        shape.validate()?;
        Ok(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::{distribute::DistributeOptions, layout};
    use crate::model::Format;

    fn model() -> Model {
        Model {
            format: Format::Gguf,
            architecture: Some("llama".into()),
            name: None,
            file_type: None,
            file_bytes: 0,
            weight_bytes: 0,
            n_params: 0,
            n_tensors: 0,
            n_layers: 2,
            n_head: Some(PerLayer::Layers(vec![8, 16])),
            n_head_kv: Some(PerLayer::Uniform(2)),
            head_dim_k: Some(64),
            head_dim_v: Some(64),
            n_embd: Some(512),
            n_vocab: Some(1000),
            context_length: Some(4096),
            sliding_window: None,
            sliding_window_layers: vec![],
            n_experts: None,
            n_experts_used: None,
            layer_bytes: vec![1000, 1000],
            input_bytes: 300,
            output_bytes: 200,
            other_bytes: 7,
            embedding_bytes: 300,
            tied_embeddings: false,
            types: Default::default(),
            n_ff: Some(2048),
            n_ff_exp: None,
            layer_matrices: vec![],
            head_matrices: Default::default(),
            embedding_matrix: None,
            layer_largest_matrix: vec![],
            file_order: vec![],
        }
    }

    #[test]
    fn a_read_model_becomes_a_placeable_shape() {
        let shape = ModelShape::try_from(&model()).unwrap();
        assert_eq!(shape.input_bytes, 307);
        assert_eq!(shape.n_head, 16);
        assert_eq!(shape.n_head_kv, vec![2, 2]);
        assert_eq!(shape.context_length, 4096);
        let placement = layout::distribute_model(&shape, &DistributeOptions::default(), 1).unwrap();
        assert!(placement.total() > 2_507);
    }

    #[test]
    fn missing_fields_are_named() {
        let m = Model {
            n_embd: None,
            ..model()
        };
        let err = ModelShape::try_from(&m).unwrap_err();
        assert!(err.to_string().contains("n_embd is known"), "{err}");
        let m = Model {
            n_head_kv: None,
            ..model()
        };
        assert!(ModelShape::try_from(&m).is_err());
        let m = Model {
            n_head_kv: Some(PerLayer::Layers(vec![2, 2, 2])),
            ..model()
        };
        let err = ModelShape::try_from(&m).unwrap_err();
        assert!(
            err.to_string()
                .contains("n_head_kv lists 3 layers but the model has 2"),
            "{err}"
        );
    }
}
