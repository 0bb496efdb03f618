//! Model-aware placement: given a model's layer layout, place its weights,
//! KV cache, compute buffers and per-GPU overhead the way llama.cpp does.
//!
//! The byte-count path (`crate::estimate::distribute`) only knows a file size; this
//! one knows every layer, so a partial offload is charged layer by layer and
//! the KV cache is sized from the real head counts.

pub mod assign;
pub mod compute;
pub mod cpu_buffers;
pub mod estimate;
pub mod kv;
pub mod mapping;

use std::collections::BTreeMap;

use crate::budget::placement::Placement;
use crate::error::{invalid, Result};
use crate::estimate::distribute::{DistributeOptions, Mode, SplitMode, MAX_GPUS};
use crate::model::{MatrixBytes, MatrixClass, Part, Run};
use assign::Home;
use kv::{Cells, KvLayer, KvShape};

/// The context a model-aware placement assumes when the options give none
/// and the model does not say what it was trained for.
pub const DEFAULT_CONTEXT: u64 = 4096;

/// What placement needs to know about a model (from its file header).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelShape {
    /// Bytes of each repeating block, in order.
    pub layer_bytes: Vec<u64>,
    /// Token embeddings and anything not in a block or the output, which
    /// llama.cpp keeps on the host.
    pub input_bytes: u64,
    /// Output head and final norm.
    pub output_bytes: u64,
    /// The token embedding matrix (in `input_bytes`).
    pub embedding_bytes: u64,
    /// Whether the output head is the token embedding matrix: llama.cpp
    /// then copies it only to a GPU that runs the head.
    pub tied_embeddings: bool,
    /// Per block, bytes of its weight matrices by class: what an extra CPU
    /// buffer may take (empty when unknown: nothing is taken).
    pub layer_matrices: Vec<MatrixBytes>,
    /// The same for the output head.
    pub head_matrices: MatrixBytes,
    /// With a tied head, the embeddings' class as the head's matrix.
    pub embedding_matrix: Option<MatrixClass>,
    pub n_head: u32,
    /// KV heads per layer (one entry per layer).
    pub n_head_kv: Vec<u32>,
    pub head_dim_k: u32,
    pub head_dim_v: u32,
    pub n_embd: u32,
    pub n_vocab: u32,
    /// The widest dense feed-forward projection (0 when unknown: taken as
    /// four times the embedding, wider than any common model's).
    pub n_ff: u64,
    /// One expert's feed-forward width, and experts used per token (MoE).
    pub n_ff_exp: u64,
    pub n_expert_used: u64,
    /// Trained context length (0 when unknown).
    pub context_length: u64,
    pub sliding_window: Option<u64>,
    /// Which layers use the sliding window (empty: none).
    pub swa_layers: Vec<bool>,
    /// Per block, bytes of its largest weight matrix (empty or 0: unknown,
    /// taken as a third of the block, about a feed-forward projection).
    pub largest_matrix: Vec<u64>,
    /// The weights in the file's order (empty: llama.cpp's convert order,
    /// embeddings, blocks, head). See [`mapping`].
    pub file_order: Vec<Run>,
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
        for (what, len, may_be_empty) in [
            ("n_head_kv", self.n_head_kv.len(), false),
            ("the sliding-window pattern", self.swa_layers.len(), true),
            ("the layer matrices", self.layer_matrices.len(), true),
            ("the largest matrices", self.largest_matrix.len(), true),
        ] {
            if len != n && !(may_be_empty && len == 0) {
                return Err(invalid(
                    "model",
                    format!("{what} lists {len} layers but the model has {n}"),
                ));
            }
        }
        if let Some(run) = self.file_order.iter().find(|r| match r.part {
            Part::Layer(il) => il as usize >= n,
            _ => false,
        }) {
            return Err(invalid(
                "model",
                format!("the file order names {:?} of {n} layers", run.part),
            ));
        }
        Ok(())
    }

    /// The context used when the options give none: the trained one, as
    /// llama-server's `-c 0`.
    pub fn default_context(&self) -> u64 {
        match self.context_length {
            0 => DEFAULT_CONTEXT,
            n => n,
        }
    }

    /// The KV cache shape under `opts`.
    pub fn kv_shape(&self, opts: &DistributeOptions) -> KvShape {
        KvShape {
            layers: self
                .n_head_kv
                .iter()
                .enumerate()
                .map(|(i, &n_head_kv)| KvLayer {
                    n_head_kv,
                    window: self
                        .sliding_window
                        .filter(|_| self.swa_layers.get(i).copied().unwrap_or(false)),
                })
                .collect(),
            head_dim_k: self.head_dim_k,
            head_dim_v: self.head_dim_v,
            type_k: opts.cache_type_k,
            type_v: opts.cache_type_v,
            cells: Cells {
                n_seq: opts.n_parallel,
                unified: opts.kv_unified,
                // llama.cpp's micro-batch is at most its batch.
                n_ubatch: opts.n_ubatch.min(opts.n_batch),
            },
        }
    }
}

fn device_overflow() -> crate::error::Error {
    invalid("model", "its placement exceeds 2^64 bytes on one device")
}

/// One device's share, split into the buffers llama.cpp reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Share {
    /// Model weights (with mmap, the mapped span of the file).
    pub weights: u64,
    /// Weights the CPU copies into its AMX layout (`AMX`).
    pub amx: u64,
    /// Weights the CPU copies for KleidiAI's kernels (`KLEIDIAI`).
    pub kleidiai: u64,
    /// Weights the CPU copies into its repacked layout (`CPU_REPACK`).
    pub repack: u64,
    pub kv_cache: u64,
    /// The compute graph's buffer.
    pub compute: u64,
    /// Logits of one token per slot (`n_seq * n_vocab` floats).
    pub output: u64,
    /// A server's prompt cache in RAM (`--cache-ram`), at its limit.
    pub prompt_cache: u64,
    /// Driver context per GPU.
    pub overhead: u64,
}

impl Share {
    pub fn total(&self) -> Result<u64> {
        [
            self.amx,
            self.kleidiai,
            self.repack,
            self.kv_cache,
            self.compute,
            self.output,
            self.prompt_cache,
            self.overhead,
        ]
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
    /// The context the KV cache was sized for (llama.cpp's `n_ctx`: padded
    /// to 256, and a multiple of the slots when they do not share a cache).
    pub n_ctx: u64,
    /// The runtime profile the host's extra buffers were sized for.
    pub cpu_buffers: cpu_buffers::CpuBuffers,
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

fn mul(factors: &[u64], what: &str) -> Result<u64> {
    factors
        .iter()
        .try_fold(1u64, |acc, f| acc.checked_mul(*f))
        .ok_or_else(|| invalid("opts", format!("the {what} exceeds 2^64 bytes")))
}

/// Places `model` under `opts` on `n_gpus` GPUs.
pub fn breakdown(model: &ModelShape, opts: &DistributeOptions, n_gpus: u32) -> Result<Breakdown> {
    model.validate()?;
    let weights = opts.gpu_weights(n_gpus)?;
    let n_ctx_asked = opts.n_ctx.unwrap_or_else(|| model.default_context());
    let plan = assign::assign(model.n_layers(), opts, &weights)?;
    let kv = model.kv_shape(opts);
    if kv.cells.per_stream(n_ctx_asked) == 0 {
        // llama.cpp refuses it too ("n_ctx_seq == 0").
        return Err(invalid(
            "opts",
            format!(
                "n_ctx {n_ctx_asked} leaves no cells for each of n_parallel {} slots",
                opts.n_parallel
            ),
        ));
    }
    let server = opts.mode == Mode::Server;
    let mut out = Breakdown {
        n_ctx: kv
            .cells
            .per_stream(n_ctx_asked)
            .saturating_mul(kv.cells.streams()),
        cpu_buffers: opts.cpu_buffers,
        ..Breakdown::default()
    };

    if !opts.mmap {
        out.add(Home::Ram, |s| &mut s.weights, model.input_bytes)?;
    }
    let empty = MatrixBytes::new();
    for (il, &bytes) in model.layer_bytes.iter().enumerate() {
        let home = plan.layers[il];
        let matrices = model.layer_matrices.get(il).unwrap_or(&empty);
        let experts = model.n_ff_exp > 0;
        place_weights(&mut out, home, bytes, matrices, experts, opts, &weights)?;
        if server {
            let kv_home = if opts.offload_kqv { home } else { Home::Ram };
            let bytes = kv.layer_bytes(&kv.layers[il], n_ctx_asked).ok_or_else(|| {
                invalid(
                    "opts",
                    format!("the KV cache at n_ctx {n_ctx_asked} exceeds 2^64 bytes"),
                )
            })?;
            out.add(kv_home, |s| &mut s.kv_cache, bytes)?;
        }
    }
    place_weights(
        &mut out,
        plan.output,
        model.output_bytes,
        &model.head_matrices,
        false,
        opts,
        &weights,
    )?;
    // A tied head is the embedding matrix, mapped once on the host; a GPU
    // that runs the head gets its own copy, and so does an extra CPU
    // buffer that takes it for a host head (llama-model.cpp creates the
    // head as a duplicate of the embeddings, in the output's buffer list).
    if let (true, Home::Ram, Some(class)) =
        (model.tied_embeddings, plan.output, model.embedding_matrix)
    {
        let extra = opts
            .cpu_buffers
            .split(&[(class, model.embedding_bytes)].into());
        add_extra(&mut out, &extra)?;
    }
    if model.tied_embeddings && plan.output != Home::Ram {
        place_weights(
            &mut out,
            plan.output,
            model.embedding_bytes,
            &empty,
            false,
            opts,
            &weights,
        )?;
    }

    if opts.mmap {
        // The host maps one range of the file (see `mapping`).
        out.ram.weights = mapping::host_span(model, &plan, opts.cpu_buffers);
    }

    compute::add_buffers(&mut out, model, opts, &plan, &kv, n_ctx_asked, &weights)?;
    let logits = mul(
        &[opts.n_parallel.max(1), u64::from(model.n_vocab), 4],
        "output buffer",
    )?;
    out.add(Home::Ram, |s| &mut s.output, logits)?;
    if server {
        out.add(Home::Ram, |s| &mut s.prompt_cache, opts.cache_ram)?;
    }
    let used: Vec<u32> = out.gpus.keys().copied().collect();
    for gpu in used {
        out.add(Home::Gpu(gpu), |s| &mut s.overhead, opts.gpu_overhead)?;
    }
    Ok(out)
}

/// Row split spreads a block's matrix products over every GPU by the
/// fractions (llama-model.cpp, `make_gpu_buft_list`: the split buffer type
/// comes first, and only a 2-D `MUL_MAT` weight can use it); norms, biases
/// and a MoE block's stacked experts (`MUL_MAT_ID` has no split kernel)
/// stay on the block's home, the main GPU. Without the block's matrices
/// (a model given by hand) all of it is split. Other modes keep the block
/// whole on its home. On the host, the matrices an extra CPU buffer takes
/// are copied into it (see `cpu_buffers`): on top of the mapped range with
/// mmap (which `breakdown` sizes apart, see `mapping`), instead of their
/// place in the loaded weights without.
fn place_weights(
    out: &mut Breakdown,
    home: Home,
    bytes: u64,
    matrices: &MatrixBytes,
    experts: bool,
    opts: &DistributeOptions,
    weights: &[u128],
) -> Result<()> {
    match (home, opts.split_mode) {
        (Home::Gpu(_), SplitMode::Row) => {
            let split = match (experts, matrices.is_empty()) {
                (true, _) => 0,
                (false, true) => bytes,
                (false, false) => matrices
                    .values()
                    .fold(0u64, |acc, b| acc.saturating_add(*b))
                    .min(bytes),
            };
            for (gpu, share) in crate::estimate::split::apportion(split, weights)
                .into_iter()
                .enumerate()
            {
                if share > 0 {
                    // gpu < n_gpus <= MAX_GPUS.
                    debug_assert!(gpu < MAX_GPUS as usize);
                    out.add(Home::Gpu(gpu as u32), |s| &mut s.weights, share)?;
                }
            }
            out.add(home, |s| &mut s.weights, bytes - split)
        }
        (Home::Ram, _) => {
            let extra = opts.cpu_buffers.split(matrices);
            if !opts.mmap {
                out.add(home, |s| &mut s.weights, bytes.saturating_sub(extra.taken))?;
            }
            add_extra(out, &extra)
        }
        _ => out.add(home, |s| &mut s.weights, bytes),
    }
}

/// Adds the extra CPU buffers' copies to the host's share.
fn add_extra(out: &mut Breakdown, extra: &cpu_buffers::ExtraBytes) -> Result<()> {
    out.add(Home::Ram, |s| &mut s.amx, extra.amx)?;
    out.add(Home::Ram, |s| &mut s.kleidiai, extra.kleidiai)?;
    out.add(Home::Ram, |s| &mut s.repack, extra.repack)
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
    use super::cpu_buffers::CpuBuffers;
    use super::kv::CacheType;
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    const LAYER: u64 = 200 * MIB;
    const INPUT: u64 = 280 * MIB;
    const OUTPUT: u64 = 400 * MIB;
    /// Of each block, the bytes in Q4_K matrices.
    const LAYER_Q4_K: u64 = 150 * MIB;

    /// Llama-3.1-8B-like: 32 blocks, GQA 32/8 heads of 128, vocab 128,256.
    pub(crate) fn llama_8b() -> ModelShape {
        ModelShape {
            layer_bytes: vec![LAYER; 32],
            input_bytes: INPUT,
            output_bytes: OUTPUT,
            embedding_bytes: INPUT,
            tied_embeddings: false,
            layer_matrices: vec![
                [
                    (MatrixClass::plain("Q4_K"), LAYER_Q4_K),
                    (MatrixClass::plain("Q6_K"), 40 * MIB)
                ]
                .into();
                32
            ],
            head_matrices: [(MatrixClass::plain("Q6_K"), OUTPUT - MIB)].into(),
            embedding_matrix: None,
            n_head: 32,
            n_head_kv: vec![8; 32],
            head_dim_k: 128,
            head_dim_v: 128,
            n_embd: 4096,
            n_vocab: 128_256,
            n_ff: 14_336,
            n_ff_exp: 0,
            n_expert_used: 0,
            context_length: 131_072,
            sliding_window: None,
            swa_layers: vec![],
            largest_matrix: vec![],
            file_order: vec![],
        }
    }

    /// One slot, 8192 tokens, no prompt cache, AVX2 repacking.
    fn opts() -> DistributeOptions {
        DistributeOptions {
            n_ctx: Some(8192),
            n_parallel: 1,
            cpu_buffers: CpuBuffers::X86Avx2,
            cache_ram: 0,
            ..DistributeOptions::default()
        }
    }

    #[test]
    fn full_offload_at_8192_has_one_gib_of_kv_on_the_gpu() {
        let b = breakdown(&llama_8b(), &opts(), 1).unwrap();
        assert_eq!(b.n_ctx, 8192);
        let gpu = b.gpus[&0];
        assert_eq!(gpu.kv_cache, 1 << 30);
        assert_eq!(gpu.weights, 32 * LAYER + OUTPUT);
        assert_eq!(gpu.repack, 0);
        assert_eq!(gpu.overhead, 512 * MIB);
        assert_eq!((b.ram.weights, b.ram.repack, b.ram.kv_cache), (INPUT, 0, 0));
        // One slot's logits, on the host.
        assert_eq!(b.ram.output, 128_256 * 4);
    }

    #[test]
    fn on_the_cpu_q4_matrices_are_repacked_on_top_of_the_mapped_file() {
        let all = 32 * LAYER + INPUT + OUTPUT;
        let b = breakdown(&llama_8b(), &opts(), 0).unwrap();
        assert_eq!((b.ram.weights, b.ram.repack), (all, 32 * LAYER_Q4_K));
        // Without mmap the repacked matrices are loaded only once.
        let no_mmap = DistributeOptions {
            mmap: false,
            ..opts()
        };
        let b = breakdown(&llama_8b(), &no_mmap, 0).unwrap();
        assert_eq!(
            (b.ram.weights, b.ram.repack),
            (all - 32 * LAYER_Q4_K, 32 * LAYER_Q4_K)
        );
        // No repacking, or an ARM CPU that repacks Q6_K too.
        let none = DistributeOptions {
            cpu_buffers: CpuBuffers::None,
            ..opts()
        };
        assert_eq!(breakdown(&llama_8b(), &none, 0).unwrap().ram.repack, 0);
        let arm = DistributeOptions {
            cpu_buffers: CpuBuffers::ArmDotprod,
            ..opts()
        };
        assert_eq!(
            breakdown(&llama_8b(), &arm, 0).unwrap().ram.repack,
            32 * (LAYER_Q4_K + 40 * MIB) + OUTPUT - MIB
        );
        // Offloaded blocks are not repacked: with the head and 20 blocks
        // offloaded, 12 of 32 stay on the host.
        let partial = DistributeOptions {
            n_gpu_layers: 21,
            ..opts()
        };
        assert_eq!(
            breakdown(&llama_8b(), &partial, 1).unwrap().ram.repack,
            12 * LAYER_Q4_K
        );
    }

    #[test]
    fn a_tied_head_is_mapped_once_on_the_host_and_copied_to_a_gpu() {
        let tied = ModelShape {
            tied_embeddings: true,
            output_bytes: MIB,
            head_matrices: MatrixBytes::new(),
            ..llama_8b()
        };
        let host = breakdown(&tied, &opts(), 0).unwrap();
        assert_eq!(host.ram.weights, INPUT + 32 * LAYER + MIB);
        let gpu = breakdown(&tied, &opts(), 1).unwrap();
        assert_eq!(gpu.gpus[&0].weights, 32 * LAYER + MIB + INPUT);
        assert_eq!(gpu.ram.weights, INPUT);
        // The head is the first layer offloaded: with one, the GPU holds
        // the head's copy of the embeddings and its norm only.
        let head_only = DistributeOptions {
            n_gpu_layers: 1,
            ..opts()
        };
        let b = breakdown(&tied, &head_only, 1).unwrap();
        assert_eq!(b.gpus[&0].weights, MIB + INPUT);
        assert_eq!(b.ram.weights, INPUT + 32 * LAYER);
    }

    #[test]
    fn the_prompt_cache_and_the_output_buffer_are_terms_of_their_own() {
        let server = DistributeOptions {
            n_parallel: 4,
            cache_ram: 8192 * MIB,
            ..opts()
        };
        let b = breakdown(&llama_8b(), &server, 0).unwrap();
        assert_eq!(b.ram.prompt_cache, 8192 * MIB);
        assert_eq!(b.ram.output, 4 * 128_256 * 4);
        let direct = DistributeOptions {
            mode: Mode::Direct,
            ..server
        };
        let b = breakdown(&llama_8b(), &direct, 0).unwrap();
        assert_eq!((b.ram.prompt_cache, b.ram.kv_cache), (0, 0));
    }

    #[test]
    fn the_reserved_micro_batch_is_capped_by_the_batch_and_the_whole_context() {
        let compute = |n_ubatch, n_batch, n_ctx, n_parallel, kv_unified| {
            let o = DistributeOptions {
                n_ubatch,
                n_batch,
                n_ctx: Some(n_ctx),
                n_parallel,
                kv_unified,
                ..opts()
            };
            breakdown(&llama_8b(), &o, 0).unwrap().ram.compute
        };
        // A batch smaller than the micro-batch caps it.
        assert_eq!(
            compute(512, 256, 8192, 1, true),
            compute(256, 256, 8192, 1, true)
        );
        assert!(compute(512, 256, 8192, 1, true) < compute(512, 512, 8192, 1, true));
        // Eight slots of 256 cells apart: the cap is the whole context
        // (2048), not one slot's, so the micro-batch stays 512.
        let apart = compute(512, 2048, 2048, 8, false);
        assert_eq!(
            apart,
            compute(512, 2048, 2048, 1, true) - 2048 * 512 * 2 + 256 * 512 * 2
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
    fn sliding_window_layers_follow_the_slots() {
        // Gemma-2-like: every other layer has a 4096-token window.
        let gemma = ModelShape {
            sliding_window: Some(4096),
            swa_layers: (0..32).map(|i| i % 2 == 0).collect(),
            ..llama_8b()
        };
        let per_token = 2 * 8 * 128 * 2;
        let kv = |n_parallel, kv_unified, n_ctx| {
            let o = DistributeOptions {
                n_ctx: Some(n_ctx),
                n_parallel,
                kv_unified,
                ..opts()
            };
            breakdown(&gemma, &o, 0).unwrap().ram.kv_cache
        };
        // One slot: 4096 + 512 cells, already a multiple of 256.
        assert_eq!(
            kv(1, false, 32_768),
            16 * 32_768 * per_token + 16 * 4608 * per_token
        );
        // Four separate slots of 8192: each keeps its window.
        assert_eq!(
            kv(4, false, 32_768),
            16 * 32_768 * per_token + 16 * 4 * 4608 * per_token
        );
        // A unified cache keeps 4 windows and one micro-batch.
        assert_eq!(
            kv(4, true, 32_768),
            16 * 32_768 * per_token + 16 * 16_896 * per_token
        );
        // A context shorter than the window: padded to 256, no more.
        assert_eq!(kv(1, false, 1000), 32 * 1024 * per_token);
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
            n_gpu_layers: 17,
            ..opts()
        };
        let b = breakdown(&mixtral, &o, 1).unwrap();
        assert_eq!(b.gpus[&0].weights, 16 * 1400 * MIB + OUTPUT);
        assert_eq!(b.ram.weights, INPUT + 16 * 1400 * MIB);
    }

    #[test]
    fn partial_offload_of_10_layers_over_two_gpus_3_to_1() {
        let o = DistributeOptions {
            n_gpu_layers: 10,
            split_mode: SplitMode::Layer,
            tensor_split: vec![3.0, 1.0].into(),
            ..opts()
        };
        let b = breakdown(&llama_8b(), &o, 2).unwrap();
        let kv_layer = 8192 * 2 * 8 * 128 * 2;
        // Blocks 23..31 and the head offloaded; j/10 < 3/4 for j = 0..7:
        // 8 blocks on GPU 0, block 31 and the head on GPU 1.
        assert_eq!(b.gpus[&0].weights, 8 * LAYER);
        assert_eq!(b.gpus[&1].weights, LAYER + OUTPUT);
        assert_eq!(b.gpus[&0].kv_cache, 8 * kv_layer);
        assert_eq!(b.gpus[&1].kv_cache, kv_layer);
        for gpu in [0, 1] {
            assert_eq!(b.gpus[&gpu].overhead, 512 * MIB);
            assert!(b.gpus[&gpu].compute > 0);
        }
        // The embeddings and 23 blocks stay in RAM, mapped as one range.
        assert_eq!(b.ram.weights, INPUT + 23 * LAYER);
        assert_eq!(b.ram.kv_cache, 23 * kv_layer);
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
            tensor_split: vec![1.0, 1.0].into(),
            main_gpu: 1,
            ..opts()
        };
        let b = breakdown(&llama_8b(), &o, 2).unwrap();
        assert_eq!(b.gpus[&0].weights + b.gpus[&1].weights, 32 * LAYER + OUTPUT);
        // The matrix products split (190 of each block's 200 MiB, the head
        // but its 1 MiB norm); the rest stays on the main GPU.
        let split = 32 * 190 * MIB + OUTPUT - MIB;
        assert_eq!(b.gpus[&0].weights, split / 2);
        assert_eq!(b.gpus[&1].weights, split / 2 + 32 * 10 * MIB + MIB);
        assert_eq!((b.gpus[&0].kv_cache, b.gpus[&1].kv_cache), (0, 1 << 30));
        // Each GPU with rows reserves the main GPU's compute buffer.
        assert_eq!(b.gpus[&0].compute, b.gpus[&1].compute);
        assert!(b.gpus[&0].compute > 0);
        // A MoE block's experts have no split kernel: its blocks stay whole.
        let moe = ModelShape {
            n_ff_exp: 14_336,
            n_expert_used: 2,
            ..llama_8b()
        };
        let b = breakdown(&moe, &o, 2).unwrap();
        assert_eq!(b.gpus[&0].weights, (OUTPUT - MIB) / 2);
    }

    #[test]
    fn no_gpus_puts_everything_in_ram_without_overhead() {
        let b = breakdown(&llama_8b(), &opts(), 0).unwrap();
        assert!(b.gpus.is_empty());
        assert_eq!(b.ram.weights, INPUT + 32 * LAYER + OUTPUT);
        assert_eq!(b.ram.overhead, 0);
    }

    #[test]
    fn the_default_context_is_the_trained_one_and_contexts_pad_to_256() {
        let o = DistributeOptions {
            n_ctx: None,
            ..opts()
        };
        let short = ModelShape {
            context_length: 2048,
            ..llama_8b()
        };
        assert_eq!(breakdown(&short, &o, 0).unwrap().n_ctx, 2048);
        assert_eq!(breakdown(&llama_8b(), &o, 0).unwrap().n_ctx, 131_072);
        let unknown = ModelShape {
            context_length: 0,
            ..llama_8b()
        };
        assert_eq!(breakdown(&unknown, &o, 0).unwrap().n_ctx, DEFAULT_CONTEXT);
        let odd = DistributeOptions {
            n_ctx: Some(100_000),
            ..opts()
        };
        assert_eq!(breakdown(&llama_8b(), &odd, 0).unwrap().n_ctx, 100_096);
        // Three separate slots: each pads its share, llama.cpp's n_ctx follows.
        let slots = DistributeOptions {
            n_ctx: Some(8192),
            n_parallel: 3,
            kv_unified: false,
            ..opts()
        };
        assert_eq!(breakdown(&llama_8b(), &slots, 0).unwrap().n_ctx, 3 * 2816);
    }

    #[test]
    fn any_slot_count_is_an_answer_or_an_error_never_a_panic() {
        for (n_parallel, kv_unified) in [(u64::MAX, false), (u64::MAX, true), (1 << 40, false)] {
            let o = DistributeOptions {
                n_parallel,
                kv_unified,
                ..opts()
            };
            // Apart, so many slots overflow the KV cache: an error. Unified,
            // only the output buffer grows, and it overflows too.
            assert!(breakdown(&llama_8b(), &o, 1).is_err());
        }
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
            layer_matrices: vec![],
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
                layer_matrices: bytes[..n]
                    .iter()
                    .map(|b| [(crate::model::MatrixClass::plain("Q4_K"), b / 2)].into())
                    .collect(),
                input_bytes: input,
                output_bytes: output,
                n_head_kv: vec![kv; n],
                ..llama_8b()
            })
    }

    fn options() -> impl Strategy<Value = (DistributeOptions, u32)> {
        (
            prop_oneof![
                Just(SplitMode::None),
                Just(SplitMode::Layer),
                Just(SplitMode::Row)
            ],
            1u32..4,
            proptest::collection::vec(0.0f64..4.0, 3),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            1u64..65_536,
        )
            .prop_map(
                |(split_mode, n_gpus, split, offload_kqv, flash_attn, mmap, n_ctx)| {
                    // A split names at most n_gpus weights, not all zero.
                    let mut tensor_split: crate::estimate::distribute::TensorSplit =
                        split[..n_gpus as usize].into();
                    if tensor_split.iter().all(|w| *w == 0.0) {
                        tensor_split.clear();
                    }
                    let o = DistributeOptions {
                        split_mode,
                        tensor_split,
                        offload_kqv,
                        flash_attn,
                        mmap,
                        n_ctx: Some(n_ctx),
                        ..opts()
                    };
                    (o, n_gpus)
                },
            )
    }

    proptest! {
        #[test]
        fn more_offloaded_layers_never_move_weights_or_kv_from_gpu_to_ram(
            model in shape(), (o, n_gpus) in options(), k in 0i64..50,
        ) {
            // Weights and KV only: a GPU that loses its last block also drops
            // its compute buffer and overhead, as llama.cpp allocates none.
            let held = |s: &Share| u128::from(s.weights) + u128::from(s.kv_cache);
            let with = |n_gpu_layers| {
                breakdown(&model, &DistributeOptions { n_gpu_layers, ..o.clone() }, n_gpus)
                    .expect("valid options place")
            };
            let (fewer, more) = (with(k), with(k + 1));
            let gpus = |b: &Breakdown| b.gpus.values().map(held).sum::<u128>();
            prop_assert!(gpus(&more) >= gpus(&fewer));
            prop_assert!(held(&more.ram) <= held(&fewer.ram));
        }

        #[test]
        fn every_byte_of_the_model_is_placed_once_or_repacked(
            model in shape(), (o, n_gpus) in options(), k in -1i64..50,
        ) {
            let o = DistributeOptions { n_gpu_layers: k, ..o };
            let b = breakdown(&model, &o, n_gpus).expect("valid options place");
            let shares = || std::iter::once(&b.ram).chain(b.gpus.values());
            let weights: u128 = shares().map(|s| u128::from(s.weights)).sum();
            let repack: u128 = shares().map(|s| u128::from(s.repack)).sum();
            let model_bytes: u128 = model.layer_bytes.iter().map(|b| u128::from(*b)).sum::<u128>()
                + u128::from(model.input_bytes) + u128::from(model.output_bytes);
            // With mmap the file stays mapped whole and repacked matrices
            // are extra; without, they move from the weights to the repack.
            let expected = if o.mmap { model_bytes } else { model_bytes - repack };
            prop_assert_eq!(weights, expected);
            prop_assert!(b.gpus.values().all(|s| s.repack == 0));
        }
    }
}
