//! Model-aware placement, its breakdown, the footprint estimate and the
//! longest context that fits.

use model_budget_core::estimate::layout::{
    self, estimate::Estimate, kv, Breakdown, ModelShape, Share,
};
use model_budget_core::model::Model;
use model_budget_core::{Format, PerLayer};
use rustler::{Encoder, Env, NifMap, Term};

use crate::badarg::{bad, reply, Decoded};
use crate::decode::{bytes, optional};
use crate::distribute::gpu_count;
use crate::load_options::{decode_options, positive};
use crate::matrix::{decode_class, decode_matrices, decode_runs};
use crate::placement::Encoded;
use model_budget_core::OptionSet;

rustler::atoms! {
    layer_largest_matrix,
    file_order,
    embedding_bytes,
    tied_embeddings,
    layer_matrices,
    head_matrices,
    embedding_matrix,
    n_ff,
    n_ff_exp,
    n_experts_used,
    layer_bytes,
    input_bytes,
    output_bytes,
    other_bytes,
    n_head,
    n_head_kv,
    head_dim_k,
    head_dim_v,
    head_dim,
    n_embd,
    n_vocab,
    n_layers,
    context_length,
    sliding_window,
    sliding_window_layers,
    kv_cache_budget,
}

const MODEL: &str = "a %ModelBudget.Model{} with its layer layout and attention dimensions";

/// A field of a `%ModelBudget.Model{}` (or any map with the same keys).
fn field<'a>(model: Term<'a>, key: rustler::Atom) -> Decoded<'a, Term<'a>> {
    model.map_get(key).or_else(|_| bad("model", MODEL, model))
}

/// A field that may be absent or `nil`.
fn maybe<'a, T>(
    model: Term<'a>,
    key: rustler::Atom,
    decode: impl FnOnce(Term<'a>) -> Decoded<'a, T>,
) -> Decoded<'a, Option<T>> {
    match model.map_get(key) {
        Ok(t) => optional(t, decode),
        Err(_) => Ok(None),
    }
}

fn u64_list<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, Vec<u64>> {
    let Ok(list) = crate::decode::list(term) else {
        return bad(arg, "a list of non-negative integers", term);
    };
    list.map(|t| bytes(t, arg)).collect()
}

/// An integer, or a per-layer list of them (`n_head`, `n_head_kv`).
fn count<'a>(term: Term<'a>, name: &str) -> Decoded<'a, PerLayer> {
    if crate::decode::list(term).is_ok() {
        return Ok(PerLayer::Layers(u64_list(term, &format!("model {name}"))?));
    }
    Ok(PerLayer::Uniform(bytes(term, &format!("model {name}"))?))
}

/// A `%ModelBudget.Model{}`, or a map with its layout keys, as the core's
/// model; the fields placement does not use may be absent.
pub fn decode_model(term: Term) -> Decoded<ModelShape> {
    if term.map_size().is_err() {
        return bad("model", MODEL, term);
    }
    let layer_bytes = u64_list(field(term, layer_bytes())?, "model layer_bytes")?;
    let sliding_window_layers = match term.map_get(sliding_window_layers()) {
        Ok(t) => crate::decode::proper(t)
            .and_then(|t| t.decode::<Vec<bool>>())
            .or_else(|_| bad("model sliding_window_layers", "a list of booleans", t))?,
        Err(_) => Vec::new(),
    };
    let layer_matrices = match term.map_get(layer_matrices()) {
        Ok(t) => {
            let Ok(list) = crate::decode::list(t) else {
                return bad("model layer_matrices", "a list of maps", t);
            };
            list.map(|m| decode_matrices(m, "model layer_matrices"))
                .collect::<Decoded<_>>()?
        }
        Err(_) => Vec::new(),
    };
    let model = Model {
        format: Format::Gguf,
        architecture: None,
        name: None,
        file_type: None,
        file_bytes: 0,
        weight_bytes: 0,
        n_params: 0,
        n_tensors: 0,
        n_layers: layer_bytes.len() as u64,
        n_head: maybe(term, n_head(), |t| count(t, "n_head"))?,
        n_head_kv: maybe(term, n_head_kv(), |t| count(t, "n_head_kv"))?,
        head_dim_k: maybe(term, head_dim_k(), |t| bytes(t, "model head_dim_k"))?,
        head_dim_v: maybe(term, head_dim_v(), |t| bytes(t, "model head_dim_v"))?,
        n_embd: maybe(term, n_embd(), |t| bytes(t, "model n_embd"))?,
        n_vocab: maybe(term, n_vocab(), |t| bytes(t, "model n_vocab"))?,
        context_length: maybe(term, context_length(), |t| bytes(t, "model context_length"))?,
        sliding_window: maybe(term, sliding_window(), |t| bytes(t, "model sliding_window"))?,
        sliding_window_layers,
        n_experts: None,
        n_experts_used: maybe(term, n_experts_used(), |t| bytes(t, "model n_experts_used"))?,
        layer_bytes,
        input_bytes: bytes(field(term, input_bytes())?, "model input_bytes")?,
        output_bytes: bytes(field(term, output_bytes())?, "model output_bytes")?,
        other_bytes: maybe(term, other_bytes(), |t| bytes(t, "model other_bytes"))?.unwrap_or(0),
        embedding_bytes: maybe(term, embedding_bytes(), |t| {
            bytes(t, "model embedding_bytes")
        })?
        .unwrap_or(0),
        tied_embeddings: maybe(term, tied_embeddings(), |t| {
            t.decode::<bool>()
                .or_else(|_| bad("model tied_embeddings", "a boolean", t))
        })?
        .unwrap_or(false),
        types: Default::default(),
        n_ff: maybe(term, n_ff(), |t| bytes(t, "model n_ff"))?,
        n_ff_exp: maybe(term, n_ff_exp(), |t| bytes(t, "model n_ff_exp"))?,
        layer_matrices,
        head_matrices: maybe(term, head_matrices(), |t| {
            decode_matrices(t, "model head_matrices")
        })?
        .unwrap_or_default(),
        embedding_matrix: maybe(term, embedding_matrix(), |t| {
            decode_class(t, "model embedding_matrix")
        })?,
        // Absent (a hand-made map): placement takes llama.cpp's convert
        // order and estimates the largest matrix from the block's bytes.
        layer_largest_matrix: maybe(term, layer_largest_matrix(), |t| {
            u64_list(t, "model layer_largest_matrix")
        })?
        .unwrap_or_default(),
        file_order: maybe(term, file_order(), |t| decode_runs(t, "model file_order"))?
            .unwrap_or_default(),
    };
    Ok(ModelShape::try_from(&model)?)
}

#[derive(NifMap)]
struct ShareTerm {
    weights: u64,
    amx: u64,
    kleidiai: u64,
    repack: u64,
    kv_cache: u64,
    compute: u64,
    output: u64,
    prompt_cache: u64,
    overhead: u64,
    total: u64,
}

fn share_term<'a>(share: &Share) -> Decoded<'a, ShareTerm> {
    Ok(ShareTerm {
        weights: share.weights,
        amx: share.amx,
        kleidiai: share.kleidiai,
        repack: share.repack,
        kv_cache: share.kv_cache,
        compute: share.compute,
        output: share.output,
        prompt_cache: share.prompt_cache,
        overhead: share.overhead,
        total: share.total()?,
    })
}

#[derive(NifMap)]
struct BreakdownTerm {
    n_ctx: u64,
    cpu_buffers: rustler::Atom,
    ram: ShareTerm,
    vram: std::collections::HashMap<u32, ShareTerm>,
}

fn breakdown_term<'a>(env: Env<'a>, b: &Breakdown) -> Decoded<'a, BreakdownTerm> {
    Ok(BreakdownTerm {
        n_ctx: b.n_ctx,
        // The profiles' names are the core's fixed table: always atoms.
        cpu_buffers: rustler::Atom::from_str(env, b.cpu_buffers.name()).map_err(|_| {
            model_budget_core::Error::InvalidArgument {
                arg: "opts",
                message: "no atom for the runtime profile".into(),
            }
        })?,
        ram: share_term(&b.ram)?,
        vram: b
            .gpus
            .iter()
            .map(|(gpu, share)| Ok((*gpu, share_term(share)?)))
            .collect::<Decoded<_>>()?,
    })
}

/// The `(model, opts, n_gpus)` arguments of `distribute/3` and `breakdown/3`.
pub fn placement_args<'a>(
    model: Term<'a>,
    opts: Term<'a>,
    n_gpus: Term<'a>,
) -> Decoded<'a, (ModelShape, model_budget_core::DistributeOptions, u32)> {
    Ok((
        decode_model(model)?,
        decode_options(opts, OptionSet::Model)?,
        gpu_count(n_gpus)?,
    ))
}

#[rustler::nif]
fn distribute_model<'a>(
    env: Env<'a>,
    model: Term<'a>,
    opts: Term<'a>,
    n_gpus: Term<'a>,
) -> Term<'a> {
    let result = (|| {
        let (shape, opts, n_gpus) = placement_args(model, opts, n_gpus)?;
        Ok(Encoded(layout::distribute_model(&shape, &opts, n_gpus)?).encode(env))
    })();
    reply(env, result)
}

#[rustler::nif]
fn breakdown<'a>(env: Env<'a>, model: Term<'a>, opts: Term<'a>, n_gpus: Term<'a>) -> Term<'a> {
    let result = (|| {
        let (shape, opts, n_gpus) = placement_args(model, opts, n_gpus)?;
        Ok(breakdown_term(env, &layout::breakdown(&shape, &opts, n_gpus)?)?.encode(env))
    })();
    reply(env, result)
}

#[derive(NifMap)]
struct EstimateTerm {
    total_system_bytes: u64,
    model_weight_bytes: u64,
    runtime_overhead: u64,
    available_bytes: u64,
    kv_cache_budget: u64,
}

impl From<Estimate> for EstimateTerm {
    fn from(e: Estimate) -> Self {
        EstimateTerm {
            total_system_bytes: e.total_system_bytes,
            model_weight_bytes: e.model_weight_bytes,
            runtime_overhead: e.runtime_overhead,
            available_bytes: e.available_bytes,
            kv_cache_budget: e.kv_cache_budget,
        }
    }
}

#[rustler::nif]
fn estimate<'a>(env: Env<'a>, total_mib: Term<'a>, params: Term<'a>, bits: Term<'a>) -> Term<'a> {
    let result = (|| {
        let total = bytes(total_mib, "total_available_mib")?;
        let params = bytes(params, "model_params")?;
        let bits = match bits.decode::<f64>() {
            Ok(b) => b,
            Err(_) => match bits.decode::<u64>() {
                Ok(b) => b as f64,
                Err(_) => return bad("bits_per_weight", "a number in (0, 64]", bits),
            },
        };
        Ok(EstimateTerm::from(layout::estimate::estimate(total, params, bits)?).encode(env))
    })();
    reply(env, result)
}

/// `model_or_dims`: a model, or `[n_layers:, n_head_kv:, head_dim:]`.
fn kv_shape<'a>(model_or_dims: Term<'a>, opts_term: Term<'a>) -> Decoded<'a, kv::KvShape> {
    let opts = decode_options(opts_term, OptionSet::Model)?;
    if crate::decode::list(model_or_dims).is_ok() {
        let dims: Vec<(rustler::Atom, Term)> = model_or_dims.decode().or_else(|_| {
            bad(
                "model_or_dims",
                "a keyword list n_layers:, n_head_kv:, head_dim:",
                model_or_dims,
            )
        })?;
        let get = |key: rustler::Atom, name: &str| -> Decoded<'a, u32> {
            match dims.iter().find(|(k, _)| *k == key) {
                Some((_, v)) => Ok(
                    u32::try_from(positive(*v, &format!("model_or_dims :{name}"))?).or_else(
                        |_| {
                            bad(
                                &format!("model_or_dims :{name}"),
                                "an integer below 2^32",
                                *v,
                            )
                        },
                    )?,
                ),
                None => bad(
                    "model_or_dims",
                    &format!("a keyword list with :{name}"),
                    model_or_dims,
                ),
            }
        };
        return Ok(kv::uniform(
            get(n_layers(), "n_layers")?,
            get(n_head_kv(), "n_head_kv")?,
            get(head_dim(), "head_dim")?,
            opts.cache_type_k,
            opts.cache_type_v,
        )?);
    }
    if model_or_dims.map_size().is_err() {
        return bad(
            "model_or_dims",
            "a %ModelBudget.Model{} or a keyword list n_layers:, n_head_kv:, head_dim:",
            model_or_dims,
        );
    }
    Ok(decode_model(model_or_dims)?.kv_shape(&opts))
}

/// The largest context whose KV cache fits `budget` (bytes, or an estimate
/// map's `:kv_cache_budget`); `:infinity` when every layer is windowed.
#[rustler::nif]
fn max_context_length<'a>(
    env: Env<'a>,
    budget: Term<'a>,
    model_or_dims: Term<'a>,
    opts: Term<'a>,
) -> Term<'a> {
    let result = (|| {
        let limit = match budget.map_get(kv_cache_budget()) {
            Ok(b) => bytes(b, "bytes_or_estimate :kv_cache_budget")?,
            Err(_) => bytes(budget, "bytes_or_estimate")?,
        };
        let shape = kv_shape(model_or_dims, opts)?;
        Ok(match shape.max_context(limit) {
            u64::MAX => crate::atoms::infinity().encode(env),
            n => n.encode(env),
        })
    })();
    reply(env, result)
}
