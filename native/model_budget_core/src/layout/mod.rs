//! Model-aware placement: given a model's layer layout, place its weights,
//! KV cache, compute buffers and per-GPU overhead the way llama.cpp does.
//!
//! The byte-count path (`crate::distribute`) only knows a file size; this
//! one knows every layer, so a partial offload is charged layer by layer and
//! the KV cache is sized from the real head counts.

pub mod assign;
pub mod compute;
pub mod estimate;
pub mod kv;

use std::collections::BTreeMap;

use crate::distribute::{DistributeOptions, MAX_GPUS};
use crate::error::{invalid, Result};
use crate::placement::Placement;
use assign::Home;
use kv::{KvLayer, KvShape};

/// The context a model-aware placement assumes when the caller gives none:
/// the model's trained length, capped here.
pub const DEFAULT_CONTEXT_CAP: u64 = 8192;

/// llama.cpp pads a sliding-window cache to this many cells.
const SWA_PAD: u64 = 256;

/// What placement needs to know about a model (from its file header).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelShape {
    /// Bytes of each repeating block, in order.
    pub layer_bytes: Vec<u64>,
    /// Token embeddings (and anything not in a block or the output).
    pub input_bytes: u64,
    /// Output head and final norm.
    pub output_bytes: u64,
    pub n_head: u32,
    /// KV heads per layer (one entry per layer).
    pub n_head_kv: Vec<u32>,
    pub head_dim_k: u32,
    pub head_dim_v: u32,
    pub n_embd: u32,
    pub n_vocab: u32,
    /// Trained context length (0 when unknown).
    pub context_length: u64,
    pub sliding_window: Option<u64>,
    /// Which layers use the sliding window (empty: none).
    pub swa_layers: Vec<bool>,
}

impl ModelShape {
    pub fn n_layers(&self) -> usize {
        self.layer_bytes.len()
    }

    /// Checks that the per-layer lists agree and nothing is absurd.
    pub fn validate(&self) -> Result<()> {
        let n = self.n_layers();
        if n == 0 || n > 100_000 {
            return Err(invalid(
                "model",
                format!("expected 1 to 100000 layers, got: {n}"),
            ));
        }
        if self.n_head_kv.len() != n {
            return Err(invalid(
                "model",
                format!(
                    "n_head_kv lists {} layers but the model has {n}",
                    self.n_head_kv.len()
                ),
            ));
        }
        if !self.swa_layers.is_empty() && self.swa_layers.len() != n {
            return Err(invalid(
                "model",
                format!(
                    "the sliding-window pattern lists {} layers but the model has {n}",
                    self.swa_layers.len()
                ),
            ));
        }
        Ok(())
    }

    /// The context used when the options give none.
    pub fn default_context(&self) -> u64 {
        match self.context_length {
            0 => DEFAULT_CONTEXT_CAP,
            n => n.min(DEFAULT_CONTEXT_CAP),
        }
    }

    /// The KV cache shape under `opts`. Sliding-window layers keep the window
    /// plus one micro-batch, padded to 256 cells, as llama.cpp's SWA cache
    /// does (`n_swa + n_ubatch`, for a non-unified cache).
    pub fn kv_shape(&self, opts: &DistributeOptions) -> KvShape {
        let window = self.sliding_window.map(|w| {
            w.saturating_add(opts.n_ubatch)
                .div_ceil(SWA_PAD)
                .saturating_mul(SWA_PAD)
        });
        KvShape {
            layers: self
                .n_head_kv
                .iter()
                .enumerate()
                .map(|(i, &n_head_kv)| KvLayer {
                    n_head_kv,
                    window: window.filter(|_| self.swa_layers.get(i).copied().unwrap_or(false)),
                })
                .collect(),
            head_dim_k: self.head_dim_k,
            head_dim_v: self.head_dim_v,
            type_k: opts.cache_type_k,
            type_v: opts.cache_type_v,
        }
    }
}

/// One device's share, split the way llama.cpp's memory breakdown reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Share {
    pub weights: u64,
    pub kv_cache: u64,
    pub compute: u64,
    pub overhead: u64,
}

impl Share {
    pub fn total(&self) -> Result<u64> {
        [self.kv_cache, self.compute, self.overhead]
            .iter()
            .try_fold(self.weights, |acc, b| acc.checked_add(*b))
            .ok_or_else(|| invalid("model", "its placement exceeds 2^64 bytes on one device"))
    }
}

/// Where everything goes: RAM and each GPU that receives anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Breakdown {
    pub ram: Share,
    pub gpus: BTreeMap<u32, Share>,
    /// The context the KV cache was sized for.
    pub n_ctx: u64,
}

impl Breakdown {
    fn share(&mut self, home: Home) -> &mut Share {
        match home {
            Home::Ram => &mut self.ram,
            Home::Gpu(i) => self.gpus.entry(i).or_default(),
        }
    }

    fn add(&mut self, home: Home, part: fn(&mut Share) -> &mut u64, bytes: u64) -> Result<()> {
        let slot = part(self.share(home));
        *slot = slot
            .checked_add(bytes)
            .ok_or_else(|| invalid("model", "its placement exceeds 2^64 bytes on one device"))?;
        Ok(())
    }

    /// The placement: each device's total.
    pub fn placement(&self) -> Result<Placement> {
        let mut placement = Placement::in_ram(self.ram.total()?);
        for (gpu, share) in &self.gpus {
            placement.vram.insert(*gpu, share.total()?);
        }
        Ok(placement.canonical())
    }
}

/// Places `model` under `opts` on `n_gpus` GPUs.
pub fn breakdown(model: &ModelShape, opts: &DistributeOptions, n_gpus: u32) -> Result<Breakdown> {
    model.validate()?;
    let weights = opts.gpu_weights(n_gpus)?;
    let n_ctx = opts.n_ctx.unwrap_or_else(|| model.default_context());
    let plan = assign::assign(model.n_layers(), opts, &weights)?;
    let kv = model.kv_shape(opts);
    let mut out = Breakdown {
        n_ctx,
        ..Breakdown::default()
    };

    out.add(Home::Ram, |s| &mut s.weights, model.input_bytes)?;
    for (il, &bytes) in model.layer_bytes.iter().enumerate() {
        let home = plan.layers[il];
        place_weights(&mut out, home, bytes, opts, &weights)?;
        if opts.mode == crate::distribute::Mode::Server {
            let kv_home = if opts.offload_kqv { home } else { Home::Ram };
            let bytes = kv.layer_bytes(&kv.layers[il], n_ctx).ok_or_else(|| {
                invalid(
                    "opts",
                    format!("the KV cache at n_ctx {n_ctx} exceeds 2^64 bytes"),
                )
            })?;
            out.add(kv_home, |s| &mut s.kv_cache, bytes)?;
        }
    }
    place_weights(&mut out, plan.output, model.output_bytes, opts, &weights)?;

    compute::add_buffers(&mut out, model, opts, &plan, n_ctx)?;
    let used: Vec<u32> = out.gpus.keys().copied().collect();
    for gpu in used {
        out.add(Home::Gpu(gpu), |s| &mut s.overhead, opts.gpu_overhead)?;
    }
    Ok(out)
}

/// Row split spreads a block's matrices over every GPU by the fractions;
/// other modes keep the block whole on its home.
fn place_weights(
    out: &mut Breakdown,
    home: Home,
    bytes: u64,
    opts: &DistributeOptions,
    weights: &[u128],
) -> Result<()> {
    match (home, opts.split_mode) {
        (Home::Gpu(_), crate::distribute::SplitMode::Row) => {
            for (gpu, share) in crate::split::apportion(bytes, weights)
                .into_iter()
                .enumerate()
            {
                if share > 0 {
                    // gpu < n_gpus <= MAX_GPUS.
                    debug_assert!(gpu < MAX_GPUS as usize);
                    out.add(Home::Gpu(gpu as u32), |s| &mut s.weights, share)?;
                }
            }
            Ok(())
        }
        _ => out.add(home, |s| &mut s.weights, bytes),
    }
}

/// The placement of `model`: [`breakdown`] summed per device.
pub fn distribute_model(
    model: &ModelShape,
    opts: &DistributeOptions,
    n_gpus: u32,
) -> Result<Placement> {
    breakdown(model, opts, n_gpus)?.placement()
}
