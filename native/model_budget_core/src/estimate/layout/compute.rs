//! Compute-buffer estimate. llama.cpp sizes a backend's compute buffer by
//! reserving its worst-case graph (llama-context.cpp, `sched_reserve`): one
//! micro-batch of `T = min(n_ubatch, n_batch, n_ctx)` tokens against the
//! whole cache, with one output row per slot (llama-server reserves
//! `n_outputs_max = n_seq`). The graph allocator frees each tensor after its
//! last use and reuses the memory, so the buffer is the largest set of
//! tensors alive at one time, not their sum. Two stages dominate it, and
//! never at once:
//!
//! * the feed-forward block: the gate and up projections and their product
//!   (`3 * T * n_ff` floats), beside a few `T * n_embd` hidden states (the
//!   residual, the norm, the attention output, the block input, the
//!   embeddings: five in all). A MoE block holds that for every used
//!   expert side by side, and later each used expert's down projection
//!   output and its weighted copy (`2 * T * n_embd` per expert) beside the
//!   experts' product and three hidden states: with many small experts
//!   (Qwen3-30B-A3B: 8 of 768) that later stage is the larger;
//! * attention without flash attention: the scores of one layer,
//!   `n_kv * T * n_head` floats, beside Q, the attention output and their
//!   copies (six or seven `T * n_q` states) and K and V (two `T * n_kv_heads
//!   * head_dim`). With flash attention the scores are never materialized.
//!
//! The attention masks are graph inputs, alive throughout: `n_kv * T`
//! values, f16 with flash attention and f32 without, one per cache (a model
//! with sliding-window layers has a second, over the window's cells).
//! Logits for one token per slot are small and reuse freed memory.
//!
//! On a GPU (CUDA) the same stages hold, with these differences, each from
//! llama.cpp's source and measured against public CUDA logs (build 10357,
//! test/fixtures/llama_cpp_gpu_truth.json):
//!
//! * the embeddings are looked up on the host, so beside the feed-forward
//!   block a GPU holds three hidden states, not five; the host keeps two
//!   (the looked-up rows and their copy for the GPU) and the masks;
//! * op offload (ggml-backend.cpp, `ggml_backend_sched_backend_id_from_cur`;
//!   ggml-cuda.cu, `offload_op`: batch >= 32): when blocks stay on the host,
//!   every op that reads a host weight runs on the first GPU instead, which
//!   copies that weight into its compute buffer; the buffer is then the
//!   running stage plus the largest host weight matrix, and the host's is
//!   only its inputs. The head's product is offloaded only for 32 outputs
//!   or more, which a server's one output per slot never reserves;
//! * flash attention over a cache that is not f16 converts the layer's K
//!   and V to f16 inside the attention op's allocation (ggml-cuda.cu,
//!   `get_alloc_size`; fattn.cu, `ggml_cuda_flash_attn_ext_get_alloc_size`);
//! * pipeline parallelism (llama-context.cpp: several GPUs, every layer and
//!   the head offloaded, layer split, KV offloaded) keeps
//!   `GGML_SCHED_MAX_COPIES` (4) copies of the host's graph inputs and of
//!   each GPU's received tensors, never reused (ggml-backend.cpp,
//!   `ggml_backend_sched_split_graph`, `n_copies`; measured on two GPUs,
//!   build 9665).
//!
//! Measured against llama.cpp build 11434 on the CPU (the calibration table
//! in test/fixtures/llama_cpp_truth.json): see bench/RESULTS.md.

use std::collections::{BTreeMap, BTreeSet};

use super::assign::{Home, LayerPlan};
use super::kv::{CacheType, KvShape};
use super::{mul, Breakdown, ModelShape};
use crate::error::Result;
use crate::estimate::distribute::{DistributeOptions, SplitMode};

/// Hidden states of `T * n_embd` floats alive beside the feed-forward block
/// on the host, which also looks up the embeddings ...
const FFN_HIDDEN: u64 = 5;
/// ... and on a GPU (measured: 3 * 512 * (18944 + 3584) floats is
/// Qwen2.5-7B's 132.00 MiB, the mask apart).
const FFN_HIDDEN_GPU: u64 = 3;
/// Intermediate `T * n_ff` tensors of a feed-forward block: gate, up, product.
const FFN_WIDE: u64 = 3;
/// Per used expert, `T * n_embd` outputs of a MoE block's down projections
/// (the outputs and their weighted copies) ...
const MOE_DOWN: u64 = 2;
/// ... beside this many hidden states.
const MOE_DOWN_HIDDEN: u64 = 3;
/// `T * n_q` states alive beside the attention scores: six in a Llama-style
/// graph, one more where the graph scales Q apart (Gemma's
/// `query_pre_attn_scalar`); the estimate takes the larger for every model,
/// which errs high by about 3% on the others (bench/RESULTS.md).
const ATTN_Q: u64 = 7;
/// `T * n_kv_heads * head_dim` states (K and V) beside them.
const ATTN_KV: u64 = 2;
/// `T * n_embd` states the host keeps when a GPU runs the blocks: the
/// looked-up embeddings and their copy (measured: 14.01 MiB of 18.01 at
/// Qwen2.5-7B's 3584 x 512, the rest the f16 mask).
const HOST_INPUT_STATES: u64 = 2;
/// The smallest batch CUDA takes a host weight's op for
/// (`op_offload_min_batch_size`).
pub const OP_OFFLOAD_MIN_BATCH: u64 = 32;
/// Copies of the graph inputs under pipeline parallelism
/// (`GGML_SCHED_MAX_COPIES`, ggml/CMakeLists.txt).
pub const PIPELINE_COPIES: u64 = 4;

/// The sizes that fix a graph's stages, under `opts`.
struct Graph {
    /// Tokens of the reserved micro-batch.
    tokens: u64,
    /// Bytes of the attention masks.
    masks: u64,
    /// Bytes of one `T * n_embd` f32 state.
    hidden: u64,
    /// Floats per token of the feed-forward stage's wide tensors, and of a
    /// MoE block's later stage (hidden states included).
    ffn_wide: u64,
    moe_down: u64,
    /// Bytes of the attention stage.
    attention: u64,
    /// Bytes CUDA's flash attention adds to convert a quantized cache.
    kv_f16: u64,
    /// Bytes of the head's stage: the last hidden states, the final norm
    /// and the logits of the reserved outputs.
    head: u64,
}

impl Graph {
    fn new(
        model: &ModelShape,
        opts: &DistributeOptions,
        kv: &KvShape,
        n_ctx: u64,
    ) -> Result<Graph> {
        // llama-context.cpp: n_batch = min(n_ctx, n_batch) for a causal
        // model, n_ubatch = min(n_batch, n_ubatch), with n_ctx the padded
        // total over all slots.
        let total = kv
            .cells
            .per_stream(n_ctx)
            .saturating_mul(kv.cells.streams());
        let t = opts.n_ubatch.min(opts.n_batch).min(total).max(1);
        let embd = u64::from(model.n_embd);
        let f32s = |n: u64| mul(&[t, n, 4], "compute buffer estimate");

        // Cells one sequence attends to: the full-attention cache's, and the
        // window cache's for a model with sliding-window layers.
        let full = kv.cells.per_stream(n_ctx);
        let window = kv
            .layers
            .iter()
            .find(|l| l.window.is_some())
            .map(|l| kv.cells.layer_per_stream(l, n_ctx));
        let has_full = kv.layers.iter().any(|l| l.window.is_none());
        let mask_value = if opts.flash_attn { 2 } else { 4 };
        let masks = [has_full.then_some(full), window]
            .into_iter()
            .flatten()
            .try_fold(0u64, |acc, cells| {
                Ok::<u64, crate::error::Error>(
                    acc.saturating_add(mul(&[cells, t, mask_value], "compute buffer estimate")?),
                )
            })?;

        let (ffn_wide, moe_down) = if model.n_ff_exp > 0 && model.n_expert_used > 0 {
            // The used experts side by side: their gate, up and product,
            // then their down projections' outputs (`n_embd` each) and those
            // weighted, before they are summed.
            let used = model.n_expert_used;
            let wide = model.n_ff_exp.saturating_mul(used);
            let down = wide
                .saturating_add(MOE_DOWN.saturating_mul(used).saturating_mul(embd))
                .saturating_add(MOE_DOWN_HIDDEN * embd);
            (FFN_WIDE.saturating_mul(wide), down)
        } else {
            let wide = if model.n_ff > 0 { model.n_ff } else { 4 * embd };
            (FFN_WIDE.saturating_mul(wide), 0)
        };

        let n_q = u64::from(model.n_head) * u64::from(model.head_dim_k);
        let n_head_kv = kv
            .layers
            .iter()
            .map(|l| u64::from(l.n_head_kv))
            .max()
            .unwrap_or(0);
        let kv_width = n_head_kv * u64::from(model.head_dim_k.max(model.head_dim_v));
        let states = f32s(ATTN_Q * n_q + ATTN_KV * kv_width)?;
        // The cells one attention op reads, over all streams.
        let cells = if has_full {
            full
        } else {
            window.unwrap_or(full)
        };
        let scores = if opts.flash_attn {
            0
        } else {
            mul(
                &[cells, t, u64::from(model.n_head), 4],
                "compute buffer estimate",
            )?
        };
        let converted = |ty: CacheType, dim: u32| {
            if ty == CacheType::F16 {
                0
            } else {
                n_head_kv * u64::from(dim)
            }
        };
        let kv_f16 = if opts.flash_attn {
            mul(
                &[
                    cells,
                    kv.cells.streams(),
                    converted(opts.cache_type_k, model.head_dim_k)
                        + converted(opts.cache_type_v, model.head_dim_v),
                    2,
                ],
                "compute buffer estimate",
            )?
        } else {
            0
        };
        let outputs = opts.n_parallel.max(1).min(t);
        let head = f32s(embd)?.saturating_add(mul(
            &[outputs, embd.saturating_add(u64::from(model.n_vocab)), 4],
            "compute buffer estimate",
        )?);
        Ok(Graph {
            tokens: t,
            masks,
            hidden: f32s(embd)?,
            ffn_wide,
            moe_down,
            attention: scores.saturating_add(states),
            kv_f16,
            head,
        })
    }

    fn f32s(&self, per_token: u64) -> u64 {
        self.tokens.saturating_mul(per_token).saturating_mul(4)
    }

    /// The feed-forward stage with `hidden` states beside it.
    fn ffn(&self, hidden: u64, embd: u64) -> u64 {
        self.f32s(
            self.ffn_wide
                .saturating_add(hidden.saturating_mul(embd))
                .max(self.moe_down),
        )
    }

    /// The buffer of a device that runs blocks.
    fn running(&self, home: Home, embd: u64) -> u64 {
        let (hidden, attention) = match home {
            Home::Ram => (FFN_HIDDEN, self.attention),
            Home::Gpu(_) => (FFN_HIDDEN_GPU, self.attention.saturating_add(self.kv_f16)),
        };
        self.masks
            .saturating_add(self.ffn(hidden, embd).max(attention))
    }

    /// The buffer of a device that runs the head.
    fn head(&self) -> u64 {
        self.masks.saturating_add(self.head)
    }

    /// What the host keeps while a GPU runs the blocks.
    fn host_inputs(&self) -> u64 {
        self.masks
            .saturating_add(HOST_INPUT_STATES.saturating_mul(self.hidden))
    }
}

/// The GPU that takes the host's offloaded ops: the first of the model's
/// GPUs (llama-context.cpp orders the backends as the model's devices).
fn first_gpu(opts: &DistributeOptions, weights: &[u128]) -> Option<Home> {
    match opts.split_mode {
        SplitMode::None | SplitMode::Row if !weights.is_empty() => Some(Home::Gpu(opts.main_gpu)),
        _ => weights
            .iter()
            .position(|w| *w > 0)
            // position < n_gpus <= MAX_GPUS.
            .map(|gpu| Home::Gpu(gpu as u32)),
    }
}

/// The largest weight matrix of the blocks the host keeps.
fn largest_host_matrix(model: &ModelShape, plan: &LayerPlan) -> u64 {
    plan.layers
        .iter()
        .enumerate()
        .filter(|(_, home)| **home == Home::Ram)
        .map(|(il, _)| match model.largest_matrix.get(il) {
            Some(&bytes) if bytes > 0 => bytes,
            _ => model.layer_bytes[il] / 3,
        })
        .max()
        .unwrap_or(0)
}

/// Adds each device's compute buffer to `out`. `weights` are the GPUs'
/// integer `tensor_split` weights (empty without GPUs).
pub fn add_buffers(
    out: &mut Breakdown,
    model: &ModelShape,
    opts: &DistributeOptions,
    plan: &LayerPlan,
    kv: &KvShape,
    n_ctx: u64,
    weights: &[u128],
) -> Result<()> {
    let graph = Graph::new(model, opts, kv, n_ctx)?;
    let embd = u64::from(model.n_embd);
    let running: BTreeSet<Home> = plan.layers.iter().copied().collect();
    let offload_to = first_gpu(opts, weights)
        .filter(|_| running.contains(&Home::Ram) && graph.tokens >= OP_OFFLOAD_MIN_BATCH);

    let mut buffers: BTreeMap<Home, u64> = BTreeMap::new();
    for &home in &running {
        if home == Home::Ram && offload_to.is_some() {
            continue;
        }
        buffers.insert(home, graph.running(home, embd));
    }
    if let Some(gpu) = offload_to {
        // The host's blocks run here, a copy of one host weight at a time.
        let stage = graph
            .running(gpu, embd)
            .saturating_add(largest_host_matrix(model, plan));
        buffers.insert(gpu, stage);
    }
    if opts.split_mode == SplitMode::Row {
        // Every GPU that holds a share of the rows reserved as much as the
        // main one in a four-GPU row-split log (ggml-org/llama.cpp#13661:
        // 1958.63 MiB on each); charged so, on the safe side.
        if let Some(&main) = buffers.get(&Home::Gpu(opts.main_gpu)) {
            for (gpu, _) in weights.iter().enumerate().filter(|(_, w)| **w > 0) {
                // gpu < n_gpus <= MAX_GPUS.
                let slot = buffers.entry(Home::Gpu(gpu as u32)).or_insert(0);
                *slot = (*slot).max(main);
            }
        }
    }
    // A host that runs no block keeps its inputs.
    buffers
        .entry(Home::Ram)
        .or_insert_with(|| graph.host_inputs());
    let head = buffers.entry(plan.output).or_insert(0);
    *head = (*head).max(graph.head());

    let gpus_running = running.iter().filter(|h| **h != Home::Ram).count();
    let pipeline = gpus_running > 1
        && !running.contains(&Home::Ram)
        && plan.output != Home::Ram
        && opts.split_mode == SplitMode::Layer
        && opts.offload_kqv;
    for (&home, &bytes) in &buffers {
        // Under pipeline parallelism the scheduler makes `n_copies` copies
        // of every graph input on its backend (the host: the masks) and of
        // every tensor a split receives from another backend (a GPU: the
        // masks and the hidden state from the host or the previous GPU),
        // and flags each copy an output so that the allocator never reuses
        // its memory (ggml-backend.cpp, `ggml_backend_sched_split_graph`,
        // passes 5 and 6). Measured on two A40s (tobocop2/lilbee, build
        // 9665): each GPU holds its running stage, four masks and four
        // received hidden states beside it (24.91 MiB), the host its two
        // states and four masks (10.30 MiB).
        let copies = if !pipeline {
            0
        } else if home == Home::Ram {
            (PIPELINE_COPIES - 1).saturating_mul(graph.masks)
        } else {
            PIPELINE_COPIES
                .saturating_mul(graph.hidden)
                .saturating_add((PIPELINE_COPIES - 1).saturating_mul(graph.masks))
        };
        out.add(home, |s| &mut s.compute, bytes.saturating_add(copies))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::layout::breakdown;
    use crate::estimate::layout::tests::llama_8b;

    const MIB: u64 = 1 << 20;

    /// One slot of 4096 tokens, flash attention, the default micro-batch.
    fn opts(n_gpu_layers: i64) -> DistributeOptions {
        DistributeOptions {
            n_ctx: Some(4096),
            n_parallel: 1,
            n_gpu_layers,
            cache_ram: 0,
            ..DistributeOptions::default()
        }
    }

    /// Llama-3.1-8B's stages at T = 512 on a GPU: 3 * 14336 + 3 * 4096
    /// floats a token, and a 4096-cell f16 mask.
    const GPU_RUNNING: u64 = 512 * (3 * 14336 + 3 * 4096) * 4 + 4096 * 512 * 2;
    const HOST_INPUTS: u64 = 2 * 512 * 4096 * 4 + 4096 * 512 * 2;

    #[test]
    fn a_full_offload_leaves_the_host_its_inputs() {
        let b = breakdown(&llama_8b(), &opts(-1), 1).unwrap();
        assert_eq!(b.gpus[&0].compute, GPU_RUNNING);
        assert_eq!(b.ram.compute, HOST_INPUTS);
    }

    #[test]
    fn host_blocks_run_on_the_gpu_with_a_copy_of_the_largest_host_weight() {
        // Blocks 0..19 stay; without the file's largest matrix, a third of
        // a block.
        let b = breakdown(&llama_8b(), &opts(13), 1).unwrap();
        let third = 200 * MIB / 3;
        assert_eq!(b.gpus[&0].compute, GPU_RUNNING + third);
        assert_eq!(b.ram.compute, HOST_INPUTS);
        // The file's own figure wins, and only host blocks count.
        let mut largest = vec![10 * MIB; 32];
        largest[5] = 90 * MIB;
        largest[25] = 150 * MIB;
        let known = ModelShape {
            largest_matrix: largest,
            ..llama_8b()
        };
        let b = breakdown(&known, &opts(13), 1).unwrap();
        assert_eq!(b.gpus[&0].compute, GPU_RUNNING + 90 * MIB);
        // With no layer offloaded the GPU still runs the host's blocks.
        let b = breakdown(&known, &opts(0), 1).unwrap();
        assert_eq!(b.gpus[&0].compute, GPU_RUNNING + 150 * MIB);
        assert_eq!(b.gpus[&0].weights + b.gpus[&0].kv_cache, 0);
        // Without a GPU nothing moves.
        let b = breakdown(&known, &opts(0), 0).unwrap();
        assert!(b.gpus.is_empty());
        assert!(b.ram.compute > HOST_INPUTS);
    }

    #[test]
    fn below_the_op_offload_batch_the_host_runs_its_own_blocks() {
        let small = DistributeOptions {
            n_ubatch: 16,
            ..opts(13)
        };
        let b = breakdown(&llama_8b(), &small, 1).unwrap();
        let mask = 4096 * 16 * 2;
        assert_eq!(b.gpus[&0].compute, 16 * (3 * 14336 + 3 * 4096) * 4 + mask);
        // The host's stage keeps five hidden states.
        assert_eq!(b.ram.compute, 16 * (3 * 14336 + 5 * 4096) * 4 + mask);
        let b = breakdown(
            &llama_8b(),
            &DistributeOptions {
                n_ubatch: 16,
                ..opts(0)
            },
            1,
        )
        .unwrap();
        assert!(b.gpus.is_empty());
    }

    #[test]
    fn a_quantized_cache_under_flash_attention_is_converted_on_the_gpu() {
        // At 128k cells the attention stage outgrows the feed-forward one
        // once K and V (8 heads of 128) are copied to f16: 4 KiB a cell.
        let quantized = |flash_attn| DistributeOptions {
            n_ctx: Some(131_072),
            cache_type_k: CacheType::Q8_0,
            cache_type_v: CacheType::Q8_0,
            flash_attn,
            ..opts(-1)
        };
        let f16 = DistributeOptions {
            n_ctx: Some(131_072),
            ..opts(-1)
        };
        let gpu = |o: &DistributeOptions| breakdown(&llama_8b(), o, 1).unwrap().gpus[&0].compute;
        let mask = 131_072 * 512 * 2;
        let states = 512 * (7 * 4096 + 2 * 1024) * 4;
        assert_eq!(
            gpu(&quantized(true)),
            mask + states + 131_072 * 2 * 1024 * 2
        );
        assert!(gpu(&f16) < gpu(&quantized(true)));
        // The host converts nothing: its compute is the same either way.
        let host = |o: &DistributeOptions| breakdown(&llama_8b(), o, 0).unwrap().ram.compute;
        assert_eq!(host(&quantized(true)), host(&f16));
    }

    #[test]
    fn several_gpus_with_everything_offloaded_keep_four_copies_of_their_inputs() {
        let split = |offload_kqv| DistributeOptions {
            split_mode: SplitMode::Layer,
            tensor_split: vec![1.0, 1.0].into(),
            offload_kqv,
            ..opts(-1)
        };
        let b = breakdown(&llama_8b(), &split(true), 2).unwrap();
        let hidden = 512 * 4096 * 4;
        let mask = 4096 * 512 * 2;
        // Four received hidden states beside the stage's own, four masks.
        assert_eq!(b.gpus[&0].compute, GPU_RUNNING + 4 * hidden + 3 * mask);
        assert_eq!(b.gpus[&1].compute, GPU_RUNNING + 4 * hidden + 3 * mask);
        // The host keeps four copies of its graph inputs, the masks.
        assert_eq!(b.ram.compute, HOST_INPUTS + 3 * mask);
        // Not with the KV cache on the host (llama-context.cpp), nor with
        // blocks left on the host.
        let b = breakdown(&llama_8b(), &split(false), 2).unwrap();
        assert_eq!(b.gpus[&0].compute, GPU_RUNNING);
        assert_eq!(b.ram.compute, HOST_INPUTS);
        let partial = DistributeOptions {
            n_gpu_layers: 30,
            ..split(true)
        };
        let b = breakdown(&llama_8b(), &partial, 2).unwrap();
        assert_eq!(b.gpus[&1].compute, GPU_RUNNING);
    }
}
