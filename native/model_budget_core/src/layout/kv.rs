//! KV-cache sizes: per layer, per cache type, and the longest context that
//! fits a byte budget.

use crate::error::{invalid, Result};
use crate::model::ggml_type::{self, GgmlType};

/// Element types llama.cpp accepts for `--cache-type-k/-v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Iq4Nl,
}

impl CacheType {
    pub const ALL: [CacheType; 9] = [
        CacheType::F32,
        CacheType::F16,
        CacheType::Bf16,
        CacheType::Q8_0,
        CacheType::Q4_0,
        CacheType::Q4_1,
        CacheType::Q5_0,
        CacheType::Q5_1,
        CacheType::Iq4Nl,
    ];

    /// The type llama.cpp calls `name` (`"q8_0"`, ...).
    pub fn from_name(name: &str) -> Option<CacheType> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The ggml type the cache stores, from the one GGML type table.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            CacheType::F32 => const { ggml_type::by_id(0) },
            CacheType::F16 => const { ggml_type::by_id(1) },
            CacheType::Bf16 => const { ggml_type::by_id(30) },
            CacheType::Q8_0 => const { ggml_type::by_id(8) },
            CacheType::Q4_0 => const { ggml_type::by_id(2) },
            CacheType::Q4_1 => const { ggml_type::by_id(3) },
            CacheType::Q5_0 => const { ggml_type::by_id(6) },
            CacheType::Q5_1 => const { ggml_type::by_id(7) },
            CacheType::Iq4Nl => const { ggml_type::by_id(20) },
        }
    }

    /// (elements per block, bytes per block), from the GGML type table.
    pub fn block(self) -> (u64, u64) {
        let t = self.ggml_type();
        (t.block_size, t.type_size)
    }

    /// Bytes of a row of `elements`, rounding a partial block up (llama.cpp
    /// refuses such rows; rounding up keeps the estimate on the safe side).
    pub fn row_bytes(self, elements: u64) -> u64 {
        let (per_block, bytes) = self.block();
        elements.div_ceil(per_block) * bytes
    }

    pub fn name(self) -> &'static str {
        match self {
            CacheType::F32 => "f32",
            CacheType::F16 => "f16",
            CacheType::Bf16 => "bf16",
            CacheType::Q8_0 => "q8_0",
            CacheType::Q4_0 => "q4_0",
            CacheType::Q4_1 => "q4_1",
            CacheType::Q5_0 => "q5_0",
            CacheType::Q5_1 => "q5_1",
            CacheType::Iq4Nl => "iq4_nl",
        }
    }
}

/// What sizes one layer's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayer {
    pub n_head_kv: u32,
    /// Tokens this layer keeps at most (a sliding window), or `None`.
    pub window: Option<u64>,
}

/// The KV cache's dimensions and element types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvShape {
    pub layers: Vec<KvLayer>,
    pub head_dim_k: u32,
    pub head_dim_v: u32,
    pub type_k: CacheType,
    pub type_v: CacheType,
}

impl KvShape {
    /// Bytes per cached token of one layer (K and V rows).
    pub fn bytes_per_token(&self, layer: &KvLayer) -> u64 {
        let heads = u64::from(layer.n_head_kv);
        self.type_k.row_bytes(heads * u64::from(self.head_dim_k))
            + self.type_v.row_bytes(heads * u64::from(self.head_dim_v))
    }

    /// Cells one layer holds for a context of `n_ctx`.
    pub fn cells(layer: &KvLayer, n_ctx: u64) -> u64 {
        layer.window.map_or(n_ctx, |w| w.min(n_ctx))
    }

    /// KV bytes of one layer at `n_ctx` tokens, or `None` past u64.
    pub fn layer_bytes(&self, layer: &KvLayer, n_ctx: u64) -> Option<u64> {
        Self::cells(layer, n_ctx).checked_mul(self.bytes_per_token(layer))
    }

    /// KV bytes of the whole model at `n_ctx` tokens, in u128 so that it
    /// never overflows.
    pub fn total_bytes(&self, n_ctx: u64) -> u128 {
        self.layers
            .iter()
            .map(|l| u128::from(Self::cells(l, n_ctx)) * u128::from(self.bytes_per_token(l)))
            .sum()
    }

    /// The largest context whose KV cache fits in `budget` bytes (the cache
    /// grows monotonically with the context, so a binary search is exact).
    /// `u64::MAX` when every layer has a window that fits.
    pub fn max_context(&self, budget: u64) -> u64 {
        // Per-token bytes of global layers, summed once; windowed layers kept
        // apart, since they stop growing at their window.
        let mut global = 0u128;
        let mut windowed: Vec<(u64, u128)> = Vec::new();
        for layer in &self.layers {
            let bpt = u128::from(self.bytes_per_token(layer));
            match layer.window {
                None => global += bpt,
                Some(w) => windowed.push((w, bpt)),
            }
        }
        let fits = |n: u64| {
            let grown: u128 = windowed
                .iter()
                .map(|(w, bpt)| u128::from(n.min(*w)) * bpt)
                .sum();
            global
                .checked_mul(u128::from(n))
                .and_then(|g| g.checked_add(grown))
                .is_some_and(|total| total <= u128::from(budget))
        };
        largest_fitting(u64::MAX, fits)
    }
}

/// The largest `n` in `0..=upper` for which `fits(n)` holds, given that
/// `fits` is monotonic (true up to some point, false after) and `fits(0)`
/// holds or 0 stands for "nothing". A binary search: 64 probes at most.
pub fn largest_fitting(upper: u64, fits: impl Fn(u64) -> bool) -> u64 {
    if fits(upper) {
        return upper;
    }
    // Invariant: lo fits (or is 0) and hi does not.
    let (mut lo, mut hi) = (0u64, upper);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Builds a KV shape from plain dimensions (the `max_context_length/3`
/// keyword form): every layer alike, no sliding window.
pub fn uniform(
    n_layers: u32,
    n_head_kv: u32,
    head_dim: u32,
    type_k: CacheType,
    type_v: CacheType,
) -> Result<KvShape> {
    if n_layers == 0 || n_head_kv == 0 || head_dim == 0 {
        return Err(invalid(
            "model_or_dims",
            format!(
                "n_layers, n_head_kv and head_dim must be positive, got: {n_layers}, {n_head_kv}, {head_dim}"
            ),
        ));
    }
    Ok(KvShape {
        layers: vec![
            KvLayer {
                n_head_kv,
                window: None
            };
            n_layers as usize
        ],
        head_dim_k: head_dim,
        head_dim_v: head_dim,
        type_k,
        type_v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn llama_8b(t: CacheType) -> KvShape {
        uniform(32, 8, 128, t, t).unwrap()
    }

    #[test]
    fn llama_8b_at_8192_f16_is_one_gib() {
        assert_eq!(llama_8b(CacheType::F16).total_bytes(8192), 1 << 30);
    }

    #[test]
    fn quantized_caches_use_block_sizes() {
        // 1024 elements per K row: 32 blocks of 34 (q8_0) or 18 (q4_0) bytes.
        assert_eq!(
            llama_8b(CacheType::Q8_0).total_bytes(8192),
            32 * 8192 * 2 * 32 * 34
        );
        assert_eq!(
            llama_8b(CacheType::Q4_0).total_bytes(8192),
            32 * 8192 * 2 * 32 * 18
        );
        assert_eq!(CacheType::Q5_1.row_bytes(33), 48);
        assert_eq!(CacheType::Bf16.row_bytes(3), 6);
    }

    #[test]
    fn gqa_counts_kv_heads_not_query_heads() {
        let mha = uniform(32, 32, 128, CacheType::F16, CacheType::F16).unwrap();
        assert_eq!(
            mha.total_bytes(8192),
            4 * llama_8b(CacheType::F16).total_bytes(8192)
        );
    }

    #[test]
    fn sliding_window_layers_hold_at_most_the_window() {
        let mut shape = llama_8b(CacheType::F16);
        for layer in shape.layers.iter_mut().step_by(2) {
            layer.window = Some(4096);
        }
        let per_layer_token = 2 * 8 * 128 * 2;
        assert_eq!(
            shape.total_bytes(8192),
            16 * 8192 * per_layer_token + 16 * 4096 * per_layer_token
        );
        assert_eq!(shape.total_bytes(100), 32 * 100 * per_layer_token);
    }

    #[test]
    fn max_context_of_a_budget() {
        let shape = llama_8b(CacheType::F16);
        assert_eq!(shape.max_context(1 << 30), 8192);
        assert_eq!(shape.max_context((1 << 30) - 1), 8191);
        assert_eq!(shape.max_context(0), 0);
        let windowed = KvShape {
            layers: vec![KvLayer {
                n_head_kv: 1,
                window: Some(10),
            }],
            ..shape
        };
        assert_eq!(windowed.max_context(u64::MAX), u64::MAX);
    }

    #[test]
    fn dims_must_be_positive() {
        assert!(uniform(0, 8, 128, CacheType::F16, CacheType::F16).is_err());
    }

    proptest! {
        #[test]
        fn the_longest_context_fits_and_one_more_does_not(
            n_layers in 1u32..100, heads in 1u32..64, dim in 1u32..256,
            windows in proptest::collection::vec(proptest::option::of(1u64..100_000), 1..8),
            budget in 0u64..1 << 40,
        ) {
            let mut shape = uniform(n_layers, heads, dim, CacheType::Q8_0, CacheType::F16).unwrap();
            // Give the first layers windows, the rest stay global.
            for (layer, window) in shape.layers.iter_mut().zip(&windows) {
                layer.window = *window;
            }
            let n = shape.max_context(budget);
            prop_assert!(shape.total_bytes(n) <= u128::from(budget));
            if n < u64::MAX {
                prop_assert!(shape.total_bytes(n + 1) > u128::from(budget));
            }
        }
    }
}
