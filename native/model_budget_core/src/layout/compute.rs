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
//! Measured against llama.cpp build 11434 on the CPU (the calibration table
//! in test/fixtures/llama_cpp_truth.json): see bench/RESULTS.md.

use std::collections::BTreeSet;

use super::assign::{Home, LayerPlan};
use super::kv::KvShape;
use super::{mul, Breakdown, ModelShape};
use crate::distribute::DistributeOptions;
use crate::error::Result;

/// Hidden states of `T * n_embd` floats alive beside the feed-forward block.
const FFN_HIDDEN: u64 = 5;
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

/// The sizes that fix a graph's stages, under `opts`.
struct Graph {
    /// Tokens of the reserved micro-batch.
    tokens: u64,
    /// Bytes of the attention masks.
    masks: u64,
    /// Bytes of the feed-forward stage.
    ffn: u64,
    /// Bytes of the attention stage.
    attention: u64,
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
                Ok::<u64, crate::Error>(
                    acc.saturating_add(mul(&[cells, t, mask_value], "compute buffer estimate")?),
                )
            })?;

        let ffn = if model.n_ff_exp > 0 && model.n_expert_used > 0 {
            // The used experts side by side: their gate, up and product,
            // then their down projections' outputs (`n_embd` each) and those
            // weighted, before they are summed.
            let used = model.n_expert_used;
            let wide = model.n_ff_exp.saturating_mul(used);
            let up = FFN_WIDE
                .saturating_mul(wide)
                .saturating_add(FFN_HIDDEN * embd);
            let down = wide
                .saturating_add(MOE_DOWN.saturating_mul(used).saturating_mul(embd))
                .saturating_add(MOE_DOWN_HIDDEN * embd);
            f32s(up.max(down))?
        } else {
            let wide = if model.n_ff > 0 { model.n_ff } else { 4 * embd };
            f32s(
                FFN_WIDE
                    .saturating_mul(wide)
                    .saturating_add(FFN_HIDDEN * embd),
            )?
        };

        let n_q = u64::from(model.n_head) * u64::from(model.head_dim_k);
        let kv_width = kv
            .layers
            .iter()
            .map(|l| u64::from(l.n_head_kv))
            .max()
            .unwrap_or(0)
            * u64::from(model.head_dim_k.max(model.head_dim_v));
        let states = f32s(ATTN_Q * n_q + ATTN_KV * kv_width)?;
        let scores = if opts.flash_attn {
            0
        } else {
            let cells = if has_full {
                full
            } else {
                window.unwrap_or(full)
            };
            mul(
                &[cells, t, u64::from(model.n_head), 4],
                "compute buffer estimate",
            )?
        };
        Ok(Graph {
            tokens: t,
            masks,
            ffn,
            attention: scores.saturating_add(states),
        })
    }

    /// The buffer of a device that runs blocks.
    fn running(&self) -> u64 {
        self.masks.saturating_add(self.ffn.max(self.attention))
    }
}

/// Adds each device's compute buffer to `out`.
pub fn add_buffers(
    out: &mut Breakdown,
    model: &ModelShape,
    opts: &DistributeOptions,
    plan: &LayerPlan,
    kv: &KvShape,
    n_ctx: u64,
) -> Result<()> {
    let graph = Graph::new(model, opts, kv, n_ctx)?;
    let running: BTreeSet<Home> = plan.layers.iter().copied().collect();
    for &home in &running {
        out.add(home, |s| &mut s.compute, graph.running())?;
    }
    if !running.contains(&Home::Ram) {
        // The host still looks up the embeddings and builds the masks.
        let inputs = mul(
            &[graph.tokens, u64::from(model.n_embd), 4],
            "compute buffer estimate",
        )?
        .saturating_add(graph.masks);
        out.add(Home::Ram, |s| &mut s.compute, inputs)?;
    }
    if !running.contains(&plan.output) {
        // A device that runs only the head: its logits.
        let logits = mul(
            &[opts.n_parallel.max(1), u64::from(model.n_vocab), 4],
            "compute buffer estimate",
        )?;
        out.add(plan.output, |s| &mut s.compute, logits)?;
    }
    Ok(())
}
