//! Compute-buffer estimate. llama.cpp sizes its compute buffers by reserving
//! the worst-case graph, and the graph allocator re-uses memory across
//! stages, so a buffer is close to its largest stage plus the activations
//! that stay live. We estimate the dominant terms (all f32):
//!
//! * activations: `n_ubatch * n_embd * 4 * 6` on every device that runs
//!   blocks (hidden state, norm, Q/K/V and FFN scratch);
//! * attention: without flash attention the KQ matrix of one layer,
//!   `n_ubatch * n_ctx * n_head * 4`; with it only `n_ubatch * n_head *
//!   head_dim_k * 4`;
//! * logits: `n_ubatch * n_vocab * 4` on the device of the output head;
//! * on the host, always: the input embeddings `n_ubatch * n_embd * 4` and
//!   the KQ mask `n_ctx * n_ubatch * 4`.
//!
//! A device's buffer is the activations plus the larger of attention and
//! logits. For a Llama-3.1-8B-like model at n_ctx 8192, n_ubatch 512 this
//! gives 560 MiB on the GPU without flash attention and 24 MiB on the host,
//! which is what llama.cpp reports for that setup (CUDA0 560.00 MiB,
//! CUDA_Host 24.01 MiB).

use std::collections::BTreeSet;

use super::assign::{Home, LayerPlan};
use super::{Breakdown, ModelShape};
use crate::distribute::DistributeOptions;
use crate::error::{invalid, Result};

fn mul(factors: &[u64]) -> Result<u64> {
    factors
        .iter()
        .try_fold(1u64, |acc, f| acc.checked_mul(*f))
        .ok_or_else(|| invalid("opts", "the compute buffer estimate exceeds 2^64 bytes"))
}

/// Adds each device's compute buffer to `out`.
pub fn add_buffers(
    out: &mut Breakdown,
    model: &ModelShape,
    opts: &DistributeOptions,
    plan: &LayerPlan,
    n_ctx: u64,
) -> Result<()> {
    let ub = opts.n_ubatch;
    let embd = u64::from(model.n_embd);
    let head = u64::from(model.n_head);
    let activations = mul(&[ub, embd, 4, 6])?;
    let attention = if opts.flash_attn {
        mul(&[ub, head, u64::from(model.head_dim_k), 4])?
    } else {
        mul(&[ub, n_ctx, head, 4])?
    };
    let logits = mul(&[ub, u64::from(model.n_vocab), 4])?;

    let running: BTreeSet<Home> = plan.layers.iter().copied().collect();
    let mut devices = running.clone();
    devices.insert(plan.output);
    devices.insert(Home::Ram);
    for home in devices {
        let mut bytes = 0u64;
        let runs_blocks = running.contains(&home);
        let has_output = plan.output == home;
        if runs_blocks {
            bytes = activations;
        }
        let stage = match (runs_blocks, has_output) {
            (true, true) => attention.max(logits),
            (true, false) => attention,
            (false, true) => logits,
            (false, false) => 0,
        };
        bytes = bytes.saturating_add(stage);
        if home == Home::Ram {
            bytes = bytes
                .saturating_add(mul(&[ub, embd, 4])?)
                .saturating_add(mul(&[n_ctx, ub, 4])?);
        }
        out.add(home, |s| &mut s.compute, bytes)?;
    }
    Ok(())
}
