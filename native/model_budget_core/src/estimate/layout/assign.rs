//! Which device each layer lives on, by llama.cpp's rule (llama-model.cpp,
//! `load_tensors`): the output head counts as layer `n_layers`, and the
//! last `n_gpu_layers` of those `n_layers + 1` are offloaded
//! (`i_gpu_start = n_layer + 1 - n_gpu_layers`), so `n_gpu_layers: 1` moves
//! the head alone and `n_gpu_layers: n_layers` leaves block 0 on the host;
//! the token embeddings never move. With `split_mode: :layer` offloaded
//! layer `j` of `act` goes to the first GPU whose cumulative `tensor_split`
//! fraction exceeds `j / act`.

use crate::error::Result;
use crate::estimate::distribute::{DistributeOptions, SplitMode};

/// A layer's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Home {
    Ram,
    Gpu(u32),
}

/// The device of each repeating block and of the output head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    pub layers: Vec<Home>,
    pub output: Home,
}

/// Assigns `n_layers` blocks and the output head. `weights` are the
/// integer `tensor_split` weights of each GPU (see `gpu_weights`).
pub fn assign(n_layers: usize, opts: &DistributeOptions, weights: &[u128]) -> Result<LayerPlan> {
    let n = n_layers as i128;
    let n_gpus = weights.len();
    // Negative n_gpu_layers means "all", as in llama.cpp.
    let ngl = if opts.n_gpu_layers < 0 {
        n + 1
    } else {
        i128::from(opts.n_gpu_layers)
    };
    let start = (n + 1 - ngl).max(0);
    let act = if n_gpus == 0 { 0 } else { ngl.min(n + 1) };
    let total: u128 = weights.iter().sum();
    let cumulative: Vec<u128> = weights
        .iter()
        .scan(0u128, |acc, w| {
            *acc += w;
            Some(*acc)
        })
        .collect();

    let home = |il: i128| -> Home {
        if il < start || il - start >= act {
            return Home::Ram;
        }
        match opts.split_mode {
            SplitMode::None | SplitMode::Row => Home::Gpu(opts.main_gpu),
            SplitMode::Layer => {
                // First GPU with cumulative / total > (il - start) / act, in
                // exact integers instead of llama.cpp's floats.
                let j = (il - start) as u128;
                let act = act as u128;
                let gpu = cumulative
                    .iter()
                    .position(|c| c * act > j * total)
                    .unwrap_or(n_gpus - 1);
                Home::Gpu(gpu as u32)
            }
        }
    };

    Ok(LayerPlan {
        layers: (0..n).map(home).collect(),
        output: home(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(n_gpu_layers: i64, split_mode: SplitMode) -> DistributeOptions {
        DistributeOptions {
            n_gpu_layers,
            split_mode,
            ..DistributeOptions::default()
        }
    }

    #[test]
    fn the_head_goes_first_then_the_last_blocks() {
        // As llama.cpp b10357 placed Qwen2.5-7B (28 blocks) with -ngl 18:
        // blocks 11..27 and the head (test/fixtures/llama_cpp_gpu_truth.json).
        let plan = assign(28, &opts(18, SplitMode::None), &[1]).unwrap();
        assert!(plan.layers[..11].iter().all(|h| *h == Home::Ram));
        assert!(plan.layers[11..].iter().all(|h| *h == Home::Gpu(0)));
        assert_eq!(plan.output, Home::Gpu(0));
        let plan = assign(4, &opts(1, SplitMode::None), &[1]).unwrap();
        assert!(plan.layers.iter().all(|h| *h == Home::Ram));
        assert_eq!(plan.output, Home::Gpu(0));
        let plan = assign(4, &opts(4, SplitMode::None), &[1]).unwrap();
        assert_eq!(
            plan.layers,
            [Home::Ram, Home::Gpu(0), Home::Gpu(0), Home::Gpu(0)]
        );
        let plan = assign(4, &opts(5, SplitMode::None), &[1]).unwrap();
        assert!(plan.layers.iter().all(|h| *h == Home::Gpu(0)));
        assert_eq!(plan.output, Home::Gpu(0));
        let plan = assign(4, &opts(-1, SplitMode::None), &[1]).unwrap();
        assert!(plan.layers.iter().all(|h| *h == Home::Gpu(0)));
        assert_eq!(plan.output, Home::Gpu(0));
    }

    #[test]
    fn no_gpus_or_zero_layers_keep_everything_in_ram() {
        for (ngl, weights) in [(99, vec![]), (0, vec![1])] {
            let plan = assign(3, &opts(ngl, SplitMode::Layer), &weights).unwrap();
            assert!(plan.layers.iter().all(|h| *h == Home::Ram));
            assert_eq!(plan.output, Home::Ram);
        }
    }

    #[test]
    fn layer_split_follows_cumulative_fractions() {
        // 33 offloaded layers (32 blocks + output) over 3:1.
        let plan = assign(32, &opts(99, SplitMode::Layer), &[3, 1]).unwrap();
        let on_0 = plan.layers.iter().filter(|h| **h == Home::Gpu(0)).count();
        // j / 33 < 3/4 for j = 0..=24: 25 blocks on GPU 0, the rest and the output on GPU 1.
        assert_eq!(on_0, 25);
        assert_eq!(plan.output, Home::Gpu(1));
        // Zero weights are skipped.
        let plan = assign(4, &opts(99, SplitMode::Layer), &[0, 1, 0, 1]).unwrap();
        assert_eq!(
            plan.layers,
            [Home::Gpu(1), Home::Gpu(1), Home::Gpu(1), Home::Gpu(3)]
        );
    }

    #[test]
    fn row_and_none_use_the_main_gpu_as_home() {
        let o = DistributeOptions {
            main_gpu: 1,
            ..opts(99, SplitMode::Row)
        };
        let plan = assign(2, &o, &[1, 1]).unwrap();
        assert_eq!(plan.layers, [Home::Gpu(1), Home::Gpu(1)]);
    }
}
