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
    /// The sliding window this layer attends to (`n_swa`), or `None`.
    pub window: Option<u64>,
}

/// llama.cpp pads contexts and sliding-window caches to this many cells.
pub const CELL_PAD: u64 = 256;

/// The longest context llama.cpp takes (`n_ctx` is a `uint32_t`).
pub const MAX_CONTEXT: u64 = u32::MAX as u64;

fn pad(cells: u64) -> u64 {
    cells.div_ceil(CELL_PAD) * CELL_PAD
}

/// How llama.cpp lays out its cache cells for a context (llama-context.cpp
/// and llama-kv-cache-iswa.cpp): `n_ctx` is padded to 256; a unified cache
/// keeps one stream of `n_ctx` cells that all sequences share; otherwise
/// each of `n_seq` sequences has its own stream of `n_ctx / n_seq` cells
/// (padded). A sliding-window layer keeps `n_swa + n_ubatch` cells per
/// stream (`n_swa * n_seq + n_ubatch` for a unified cache), padded, and at
/// most a full-attention layer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cells {
    pub n_seq: u64,
    pub unified: bool,
    pub n_ubatch: u64,
}

impl Default for Cells {
    /// One sequence: cells are the padded context.
    fn default() -> Self {
        Cells {
            n_seq: 1,
            unified: true,
            n_ubatch: 0,
        }
    }
}

impl Cells {
    /// Streams the cache keeps (one per sequence unless unified).
    pub fn streams(&self) -> u64 {
        if self.unified {
            1
        } else {
            self.n_seq.max(1)
        }
    }

    /// Cells of one stream of a full-attention layer (`n_ctx_seq` when not
    /// unified), for `n_ctx` no larger than [`MAX_CONTEXT`].
    pub fn per_stream(&self, n_ctx: u64) -> u64 {
        let n_ctx = pad(n_ctx.min(MAX_CONTEXT));
        if self.unified {
            n_ctx
        } else {
            pad(n_ctx / self.n_seq.max(1))
        }
    }

    /// Cells of one stream of `layer`.
    pub fn layer_per_stream(&self, layer: &KvLayer, n_ctx: u64) -> u64 {
        let base = self.per_stream(n_ctx);
        match layer.window {
            None => base,
            Some(w) => {
                let seqs = if self.unified { self.n_seq.max(1) } else { 1 };
                pad(base.min(w.saturating_mul(seqs).saturating_add(self.n_ubatch)))
            }
        }
    }
}

/// The KV cache's dimensions and element types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvShape {
    pub layers: Vec<KvLayer>,
    pub head_dim_k: u32,
    pub head_dim_v: u32,
    pub type_k: CacheType,
    pub type_v: CacheType,
    pub cells: Cells,
}

impl KvShape {
    /// Bytes per cached token of one layer (K and V rows).
    pub fn bytes_per_token(&self, layer: &KvLayer) -> u64 {
        let heads = u64::from(layer.n_head_kv);
        self.type_k.row_bytes(heads * u64::from(self.head_dim_k))
            + self.type_v.row_bytes(heads * u64::from(self.head_dim_v))
    }

    /// Cells one layer holds for a context of `n_ctx`, over all streams.
    pub fn layer_cells(&self, layer: &KvLayer, n_ctx: u64) -> u64 {
        // Saturates: a caller's slot count is not bounded, and a size past
        // u64 is refused where bytes are counted.
        self.cells
            .layer_per_stream(layer, n_ctx)
            .saturating_mul(self.cells.streams())
    }

    /// KV bytes of one layer at `n_ctx` tokens, or `None` past u64.
    pub fn layer_bytes(&self, layer: &KvLayer, n_ctx: u64) -> Option<u64> {
        self.layer_cells(layer, n_ctx)
            .checked_mul(self.bytes_per_token(layer))
    }

    /// KV bytes of the whole model at `n_ctx` tokens, in u128 so that it
    /// never overflows.
    pub fn total_bytes(&self, n_ctx: u64) -> u128 {
        self.layers
            .iter()
            .map(|l| u128::from(self.layer_cells(l, n_ctx)) * u128::from(self.bytes_per_token(l)))
            .sum()
    }

    /// The largest context whose KV cache fits in `budget` bytes: a multiple
    /// of 256, as llama.cpp pads it (the cache grows monotonically with the
    /// context, so a binary search is exact). `u64::MAX` when every layer
    /// has a window and the longest context llama.cpp takes fits.
    pub fn max_context(&self, budget: u64) -> u64 {
        let fits = |n: u64| self.total_bytes(n) <= u128::from(budget);
        if self.layers.iter().all(|l| l.window.is_some()) && fits(MAX_CONTEXT) {
            return u64::MAX;
        }
        let n = largest_fitting(MAX_CONTEXT, fits);
        // Contexts pad up to a multiple of 256, so the largest that fits is one.
        n - n % CELL_PAD
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
        cells: Cells::default(),
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
        // Contexts are padded to 256 cells.
        assert_eq!(shape.total_bytes(100), 32 * 256 * per_layer_token);
    }

    fn windowed(cells: Cells) -> KvShape {
        KvShape {
            layers: vec![KvLayer {
                n_head_kv: 1,
                window: Some(4096),
            }],
            cells,
            ..uniform(1, 1, 1, CacheType::F16, CacheType::F16).unwrap()
        }
    }

    #[test]
    fn separate_slots_each_keep_a_window_and_a_unified_cache_keeps_one_per_slot() {
        let split = Cells {
            n_seq: 4,
            unified: false,
            n_ubatch: 512,
        };
        // 4 streams of min(32768 / 4, 4096 + 512) cells.
        assert_eq!(
            windowed(split).layer_cells(&windowed(split).layers[0], 32_768),
            4 * 4608
        );
        // A stream shorter than the window is not padded past its length.
        assert_eq!(
            windowed(split).layer_cells(&windowed(split).layers[0], 8192),
            4 * 2048
        );
        let unified = Cells {
            unified: true,
            ..split
        };
        // One stream of 4 * 4096 + 512 cells, at most the context.
        assert_eq!(
            windowed(unified).layer_cells(&windowed(unified).layers[0], 32_768),
            16_896
        );
        assert_eq!(
            windowed(unified).layer_cells(&windowed(unified).layers[0], 8192),
            8192
        );
    }

    #[test]
    fn separate_slots_split_the_context_and_pad_each_share() {
        let mut shape = llama_8b(CacheType::F16);
        shape.cells = Cells {
            n_seq: 3,
            unified: false,
            n_ubatch: 512,
        };
        // 8192 / 3 = 2730, padded to 2816 cells per slot, three slots.
        assert_eq!(shape.total_bytes(8192), (1 << 30) / 8192 * 3 * 2816);
    }

    #[test]
    fn max_context_of_a_budget() {
        let shape = llama_8b(CacheType::F16);
        assert_eq!(shape.max_context(1 << 30), 8192);
        // One byte short of 8192 cells: the next multiple of 256 down.
        assert_eq!(shape.max_context((1 << 30) - 1), 7936);
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
            prop_assert_eq!(n % CELL_PAD, if n == u64::MAX { u64::MAX % CELL_PAD } else { 0 });
            if n < MAX_CONTEXT - CELL_PAD {
                prop_assert!(shape.total_bytes(n + 1) > u128::from(budget));
            }
        }
    }
}
