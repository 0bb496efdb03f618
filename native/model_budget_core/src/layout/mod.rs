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

fn device_overflow() -> crate::Error {
    invalid("model", "its placement exceeds 2^64 bytes on one device")
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
            .ok_or_else(device_overflow)
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
        *slot = slot.checked_add(bytes).ok_or_else(device_overflow)?;
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

#[cfg(test)]
pub(crate) mod tests {
    use super::kv::CacheType;
    use super::*;
    use crate::distribute::{Mode, SplitMode};
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    const LAYER: u64 = 200 * MIB;
    const INPUT: u64 = 280 * MIB;
    const OUTPUT: u64 = 400 * MIB;

    /// Llama-3.1-8B-like: 32 blocks, GQA 32/8 heads of 128, vocab 128,256.
    pub(crate) fn llama_8b() -> ModelShape {
        ModelShape {
            layer_bytes: vec![LAYER; 32],
            input_bytes: INPUT,
            output_bytes: OUTPUT,
            n_head: 32,
            n_head_kv: vec![8; 32],
            head_dim_k: 128,
            head_dim_v: 128,
            n_embd: 4096,
            n_vocab: 128_256,
            context_length: 131_072,
            sliding_window: None,
            swa_layers: vec![],
        }
    }

    fn opts() -> DistributeOptions {
        DistributeOptions::default()
    }

    // Compute terms of the Llama-like model at n_ubatch 512, flash attention.
    const ACTIVATIONS: u64 = 512 * 4096 * 24;
    const ATTENTION_FA: u64 = 512 * 32 * 128 * 4;
    const LOGITS: u64 = 512 * 128_256 * 4;
    const HOST_INPUT: u64 = 512 * 4096 * 4;
    const MASK_8K: u64 = 8192 * 512 * 4;

    #[test]
    fn full_offload_at_8192_has_one_gib_of_kv_on_the_gpu() {
        let b = breakdown(&llama_8b(), &opts(), 1).unwrap();
        assert_eq!(b.n_ctx, 8192);
        let gpu = b.gpus[&0];
        assert_eq!(gpu.kv_cache, 1 << 30);
        assert_eq!(gpu.weights, 32 * LAYER + OUTPUT);
        assert_eq!(gpu.compute, ACTIVATIONS + LOGITS);
        assert_eq!(gpu.overhead, 512 * MIB);
        assert_eq!(
            b.ram,
            Share {
                weights: INPUT,
                kv_cache: 0,
                compute: HOST_INPUT + MASK_8K,
                overhead: 0
            }
        );
    }

    #[test]
    fn quantized_kv_caches() {
        for (t, block_bytes) in [(CacheType::Q8_0, 34), (CacheType::Q4_0, 18)] {
            let o = DistributeOptions {
                cache_type_k: t,
                cache_type_v: t,
                ..opts()
            };
            let b = breakdown(&llama_8b(), &o, 1).unwrap();
            // 1024 K and 1024 V elements per token and layer: 32 blocks each.
            assert_eq!(b.gpus[&0].kv_cache, 32 * 8192 * 2 * 32 * block_bytes);
        }
        let mixed = DistributeOptions {
            cache_type_k: CacheType::Q8_0,
            ..opts()
        };
        let b = breakdown(&llama_8b(), &mixed, 1).unwrap();
        assert_eq!(b.gpus[&0].kv_cache, 32 * 8192 * (32 * 34 + 1024 * 2));
    }

    #[test]
    fn mha_needs_four_times_the_kv_of_gqa() {
        let mha = ModelShape {
            n_head_kv: vec![32; 32],
            ..llama_8b()
        };
        let kv = |m: &ModelShape| breakdown(m, &opts(), 1).unwrap().gpus[&0].kv_cache;
        assert_eq!(kv(&mha), 4 * kv(&llama_8b()));
    }

    #[test]
    fn sliding_window_layers_hold_window_plus_a_micro_batch() {
        // Gemma-2-like: every other layer has a 4096-token window.
        let gemma = ModelShape {
            sliding_window: Some(4096),
            swa_layers: (0..32).map(|i| i % 2 == 0).collect(),
            ..llama_8b()
        };
        let per_token = 2 * 8 * 128 * 2;
        let o = DistributeOptions {
            n_ctx: Some(32_768),
            ..opts()
        };
        let b = breakdown(&gemma, &o, 1).unwrap();
        // 4096 + 512 cells, already a multiple of 256.
        assert_eq!(
            b.gpus[&0].kv_cache,
            16 * 32_768 * per_token + 16 * 4608 * per_token
        );
        // A context shorter than the window is not padded up.
        let short = DistributeOptions {
            n_ctx: Some(1000),
            ..opts()
        };
        assert_eq!(
            breakdown(&gemma, &short, 1).unwrap().gpus[&0].kv_cache,
            32 * 1000 * per_token
        );
    }

    #[test]
    fn moe_blocks_are_placed_whole() {
        // Mixtral-like: 8 experts make each block large; placement follows bytes.
        let mixtral = ModelShape {
            layer_bytes: vec![1400 * MIB; 32],
            n_vocab: 32_000,
            ..llama_8b()
        };
        let o = DistributeOptions {
            n_gpu_layers: 16,
            ..opts()
        };
        let b = breakdown(&mixtral, &o, 1).unwrap();
        assert_eq!(b.gpus[&0].weights, 16 * 1400 * MIB);
        assert_eq!(b.ram.weights, INPUT + 16 * 1400 * MIB + OUTPUT);
    }

    #[test]
    fn partial_offload_of_10_layers_over_two_gpus_3_to_1() {
        let o = DistributeOptions {
            n_gpu_layers: 10,
            split_mode: SplitMode::Layer,
            tensor_split: vec![3.0, 1.0],
            ..opts()
        };
        let b = breakdown(&llama_8b(), &o, 2).unwrap();
        let kv_layer = 8192 * 2 * 8 * 128 * 2;
        // Blocks 22..31 offloaded; j/10 < 3/4 for j = 0..7: 8 on GPU 0, 2 on GPU 1.
        assert_eq!(b.gpus[&0].weights, 8 * LAYER);
        assert_eq!(b.gpus[&1].weights, 2 * LAYER);
        assert_eq!(b.gpus[&0].kv_cache, 8 * kv_layer);
        assert_eq!(b.gpus[&1].kv_cache, 2 * kv_layer);
        for gpu in [0, 1] {
            assert_eq!(b.gpus[&gpu].compute, ACTIVATIONS + ATTENTION_FA);
            assert_eq!(b.gpus[&gpu].overhead, 512 * MIB);
        }
        // The output head stays with the embeddings and 22 blocks in RAM.
        assert_eq!(b.ram.weights, INPUT + 22 * LAYER + OUTPUT);
        assert_eq!(b.ram.kv_cache, 22 * kv_layer);
        assert_eq!(b.ram.compute, ACTIVATIONS + LOGITS + HOST_INPUT + MASK_8K);
    }

    #[test]
    fn kv_stays_in_ram_without_offload_kqv_and_direct_mode_has_none() {
        let o = DistributeOptions {
            offload_kqv: false,
            ..opts()
        };
        let b = breakdown(&llama_8b(), &o, 1).unwrap();
        assert_eq!((b.ram.kv_cache, b.gpus[&0].kv_cache), (1 << 30, 0));
        let o = DistributeOptions {
            mode: Mode::Direct,
            ..opts()
        };
        let b = breakdown(&llama_8b(), &o, 1).unwrap();
        assert_eq!(b.ram.kv_cache + b.gpus[&0].kv_cache, 0);
    }

    #[test]
    fn row_split_spreads_weights_but_keeps_kv_on_the_main_gpu() {
        let o = DistributeOptions {
            split_mode: SplitMode::Row,
            tensor_split: vec![1.0, 1.0],
            main_gpu: 1,
            ..opts()
        };
        let b = breakdown(&llama_8b(), &o, 2).unwrap();
        assert_eq!(b.gpus[&0].weights + b.gpus[&1].weights, 32 * LAYER + OUTPUT);
        assert_eq!(b.gpus[&0].weights, (32 * LAYER + OUTPUT) / 2);
        assert_eq!((b.gpus[&0].kv_cache, b.gpus[&1].kv_cache), (0, 1 << 30));
    }

    #[test]
    fn no_gpus_puts_everything_in_ram_without_overhead() {
        let b = breakdown(&llama_8b(), &opts(), 0).unwrap();
        assert!(b.gpus.is_empty());
        assert_eq!(b.ram.weights, INPUT + 32 * LAYER + OUTPUT);
        assert_eq!(b.ram.overhead, 0);
    }

    #[test]
    fn the_default_context_is_the_trained_one_capped_at_8192() {
        let short = ModelShape {
            context_length: 2048,
            ..llama_8b()
        };
        assert_eq!(breakdown(&short, &opts(), 0).unwrap().n_ctx, 2048);
        assert_eq!(breakdown(&llama_8b(), &opts(), 0).unwrap().n_ctx, 8192);
        let o = DistributeOptions {
            n_ctx: Some(100_000),
            ..opts()
        };
        assert_eq!(breakdown(&llama_8b(), &o, 0).unwrap().n_ctx, 100_000);
    }

    #[test]
    fn inconsistent_models_are_refused() {
        let bad = ModelShape {
            n_head_kv: vec![8; 3],
            ..llama_8b()
        };
        assert!(breakdown(&bad, &opts(), 1).is_err());
        let empty = ModelShape {
            layer_bytes: vec![],
            n_head_kv: vec![],
            ..llama_8b()
        };
        assert!(breakdown(&empty, &opts(), 1).is_err());
    }

    fn shape() -> impl Strategy<Value = ModelShape> {
        (
            1usize..48,
            proptest::collection::vec(0u64..1 << 32, 48),
            0u64..1 << 32,
            0u64..1 << 32,
            1u32..16,
        )
            .prop_map(|(n, bytes, input, output, kv)| ModelShape {
                layer_bytes: bytes[..n].to_vec(),
                input_bytes: input,
                output_bytes: output,
                n_head_kv: vec![kv; n],
                ..llama_8b()
            })
    }

    fn options() -> impl Strategy<Value = DistributeOptions> {
        (
            prop_oneof![
                Just(SplitMode::None),
                Just(SplitMode::Layer),
                Just(SplitMode::Row)
            ],
            proptest::collection::vec(0.0f64..4.0, 0..3),
            any::<bool>(),
            any::<bool>(),
            1u64..65_536,
        )
            .prop_map(
                |(split_mode, tensor_split, offload_kqv, flash_attn, n_ctx)| DistributeOptions {
                    split_mode,
                    tensor_split,
                    offload_kqv,
                    flash_attn,
                    n_ctx: Some(n_ctx),
                    ..DistributeOptions::default()
                },
            )
    }

    fn gpu_total(p: &Placement) -> u128 {
        p.vram.values().map(|b| u128::from(*b)).sum()
    }

    proptest! {
        #[test]
        fn more_offloaded_layers_never_move_bytes_from_gpu_to_ram(
            model in shape(), o in options(), n_gpus in 1u32..4, k in 0i64..50,
        ) {
            let with = |n_gpu_layers| distribute_model(&model, &DistributeOptions { n_gpu_layers, ..o.clone() }, n_gpus);
            if let (Ok(fewer), Ok(more)) = (with(k), with(k + 1)) {
                prop_assert!(gpu_total(&more) >= gpu_total(&fewer));
                prop_assert!(more.ram <= fewer.ram);
            }
        }

        #[test]
        fn the_breakdown_sums_to_the_placement(model in shape(), o in options(), n_gpus in 0u32..4, k in -1i64..50) {
            let o = DistributeOptions { n_gpu_layers: k, ..o };
            if let Ok(b) = breakdown(&model, &o, n_gpus) {
                let placement = distribute_model(&model, &o, n_gpus).unwrap();
                prop_assert_eq!(u128::from(placement.ram), u128::from(b.ram.total().unwrap()));
                for (gpu, share) in &b.gpus {
                    prop_assert_eq!(placement.gpu(*gpu), share.total().unwrap());
                }
                // Weights are conserved: every byte of the model is somewhere.
                let weights: u128 = std::iter::once(&b.ram).chain(b.gpus.values()).map(|s| u128::from(s.weights)).sum();
                let model_bytes: u128 = model.layer_bytes.iter().map(|b| u128::from(*b)).sum::<u128>()
                    + u128::from(model.input_bytes) + u128::from(model.output_bytes);
                prop_assert_eq!(weights, model_bytes);
            }
        }
    }
}
