//! Model-aware placement, its breakdown, the footprint estimate and the
//! longest context that fits.

use model_budget_core::layout::{self, estimate::Estimate, kv, Breakdown, ModelShape, Share};
use model_budget_core::shape;
use rustler::{Encoder, Env, ListIterator, NifMap, Term};

use crate::badarg::{bad, reply, Decoded};
use crate::decode::{atom, bytes, index, optional};
use crate::distribute::{decode_options, gpu_count, positive};
use crate::placement::Encoded;
use model_budget_core::OptionSet;

rustler::atoms! {
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

/// A count that must be known for placement; `nil` names what is missing.
fn known<'a>(model: Term<'a>, key: rustler::Atom, name: &str) -> Decoded<'a, u32> {
    let value = field(model, key)?;
    if atom(value) == Some(crate::atoms::nil()) {
        return bad(
            "model",
            &format!("a model whose {name} is known (the header did not say)"),
            model,
        );
    }
    index(value, &format!("model {name}"))
}

fn u64_list<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, Vec<u64>> {
    let Ok(list) = term.decode::<ListIterator>() else {
        return bad(arg, "a list of non-negative integers", term);
    };
    list.map(|t| bytes(t, arg)).collect()
}

/// An integer, or a per-layer list of them (`n_head`, `n_head_kv`).
fn per_layer<'a>(
    model: Term<'a>,
    key: rustler::Atom,
    name: &str,
    n: usize,
) -> Decoded<'a, Vec<u32>> {
    let value = field(model, key)?;
    if let Ok(list) = value.decode::<ListIterator>() {
        return list.map(|t| index(t, &format!("model {name}"))).collect();
    }
    Ok(vec![known(model, key, name)?; n])
}

pub fn decode_model(model: Term) -> Decoded<ModelShape> {
    let layer_bytes = u64_list(field(model, layer_bytes())?, "model layer_bytes")?;
    let n = layer_bytes.len();
    let input = bytes(field(model, input_bytes())?, "model input_bytes")?;
    let other = match model.map_get(other_bytes()) {
        Ok(t) => bytes(t, "model other_bytes")?,
        Err(_) => 0,
    };
    let swa_layers = match model.map_get(sliding_window_layers()) {
        Ok(t) => {
            let Ok(list) = t.decode::<ListIterator>() else {
                return bad("model sliding_window_layers", "a list of booleans", t);
            };
            list.map(|b| {
                b.decode::<bool>()
                    .or_else(|_| bad("model sliding_window_layers", "a list of booleans", t))
            })
            .collect::<Decoded<Vec<bool>>>()?
        }
        Err(_) => Vec::new(),
    };
    let window = field(model, sliding_window())?;
    let context = field(model, context_length())?;
    Ok(ModelShape {
        input_bytes: shape::host_input_bytes(input, other),
        output_bytes: bytes(field(model, output_bytes())?, "model output_bytes")?,
        n_head: shape::attention_heads(&per_layer(model, n_head(), "n_head", n)?),
        n_head_kv: per_layer(model, n_head_kv(), "n_head_kv", n)?,
        head_dim_k: known(model, head_dim_k(), "head_dim_k")?,
        head_dim_v: known(model, head_dim_v(), "head_dim_v")?,
        n_embd: known(model, n_embd(), "n_embd")?,
        n_vocab: known(model, n_vocab(), "n_vocab")?,
        context_length: optional(context, |t| bytes(t, "model context_length"))?.unwrap_or(0),
        sliding_window: optional(window, |t| bytes(t, "model sliding_window"))?,
        swa_layers,
        layer_bytes,
    })
}

#[derive(NifMap)]
struct ShareTerm {
    weights: u64,
    kv_cache: u64,
    compute: u64,
    overhead: u64,
    total: u64,
}

fn share_term<'a>(share: &Share) -> Decoded<'a, ShareTerm> {
    Ok(ShareTerm {
        weights: share.weights,
        kv_cache: share.kv_cache,
        compute: share.compute,
        overhead: share.overhead,
        total: share.total()?,
    })
}

#[derive(NifMap)]
struct BreakdownTerm {
    n_ctx: u64,
    ram: ShareTerm,
    vram: std::collections::HashMap<u32, ShareTerm>,
}

fn breakdown_term<'a>(b: &Breakdown) -> Decoded<'a, BreakdownTerm> {
    Ok(BreakdownTerm {
        n_ctx: b.n_ctx,
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
        Ok(breakdown_term(&layout::breakdown(&shape, &opts, n_gpus)?)?.encode(env))
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
    if model_or_dims.decode::<ListIterator>().is_ok() {
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
    let shape = decode_model(model_or_dims)?;
    shape.validate()?;
    Ok(shape.kv_shape(&opts))
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
