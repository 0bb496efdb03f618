//! Spreading a model's footprint over RAM and GPUs, the way llama.cpp's load
//! options would place it.
//!
//! This is the byte-count path: only the file size is known, not the layer
//! layout, so it is deliberately conservative (any offload is charged as a
//! full offload, and the KV cache is a coarse per-token estimate).

use smallvec::SmallVec;

use crate::budget::gpu_map::{GpuMap, INLINE_GPUS};
use crate::budget::placement::Placement;
use crate::error::{invalid, Result};
use crate::estimate::layout::cpu_buffers::CpuBuffers;
use crate::estimate::layout::kv::CacheType;
use crate::estimate::split::{split_into, split_weights, Weights};

/// The most GPUs a placement may span. CUDA builds of llama.cpp cap devices
/// at 16; this leaves room while keeping allocations bounded.
pub const MAX_GPUS: u32 = 1024;

/// Coarse KV-cache bytes per token when the caller gives none.
pub const DEFAULT_KV_BYTES_PER_TOKEN: u64 = 2048;

/// Context (total tokens, shared by all slots) of the coarse KV estimate
/// when the caller gives none: 4 slots of 8192.
pub const DEFAULT_N_CTX: u64 = 32768;

/// Memory a used GPU loses outside llama.cpp's buffers: the CUDA context,
/// cuBLAS's workspace and the pools CUDA kernels allocate at run time
/// (CUDA's context alone was measured at about 211 MiB on a laptop GPU, and
/// a PyTorch process's context and allocator at about 527 MiB on an H100:
/// calibration issue 12). One documented constant for every GPU family; a
/// caller who measured their own passes `gpu_overhead`.
pub const DEFAULT_GPU_OVERHEAD: u64 = 512 << 20;

/// llama-server's prompt cache in RAM (`--cache-ram`, 8192 MiB by default
/// in build 11434): it fills while the server runs, so a server is planned
/// with it.
pub const DEFAULT_CACHE_RAM: u64 = 8192 << 20;

/// Whether the load runs a server with a KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Adds a KV-cache estimate.
    Server,
    /// Weights only.
    Direct,
}

impl Mode {
    /// The options' names, in order.
    pub const NAMES: [&'static str; 2] = ["server", "direct"];
}

/// How offloaded layers are spread over GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitMode {
    /// Everything on `main_gpu`.
    None,
    /// Whole layers per GPU, by `tensor_split`.
    Layer,
    /// Each layer's matrices spread over GPUs, by `tensor_split`.
    Row,
}

impl SplitMode {
    /// The options' names, in order.
    pub const NAMES: [&'static str; 3] = ["none", "layer", "row"];
}

/// `:tensor_split` weights, inline up to `INLINE_GPUS` GPUs: options
/// decoded on every `distribute/3` call allocate nothing.
pub type TensorSplit = SmallVec<[f64; INLINE_GPUS]>;

/// llama.cpp-style load options. Defaults match the Elixir documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct DistributeOptions {
    pub mode: Mode,
    /// `0` keeps everything in RAM; any other value offloads (negative means all).
    pub n_gpu_layers: i64,
    pub split_mode: SplitMode,
    /// Non-negative weights per GPU; empty means an equal split.
    pub tensor_split: TensorSplit,
    pub main_gpu: u32,
    /// Whether the KV cache sits on the GPU(s).
    pub offload_kqv: bool,
    /// Context tokens in total, as llama.cpp's `-c`: the slots share them.
    /// `None` means the default ([`DEFAULT_N_CTX`] for the byte-count path,
    /// the model's trained length for a model, as llama-server's `-c 0`).
    pub n_ctx: Option<u64>,
    /// Slots (llama.cpp's `-np`). They divide `n_ctx`; on the model path
    /// they also size the output buffer and, with caches apart
    /// (`kv_unified: false`), sliding-window caches.
    pub n_parallel: u64,
    /// Whether all slots share one KV cache (`--kv-unified`).
    pub kv_unified: bool,
    /// Logical batch size (`--batch-size`).
    pub n_batch: u64,
    pub kv_bytes_per_token: Option<u64>,
    /// KV element types (model-aware path).
    pub cache_type_k: CacheType,
    pub cache_type_v: CacheType,
    /// Micro-batch size that sizes compute buffers (model-aware path).
    pub n_ubatch: u64,
    pub flash_attn: bool,
    /// Bytes each GPU that receives anything pays for the driver's context.
    pub gpu_overhead: u64,
    /// The runtime profile's extra CPU buffers: which weight matrices the
    /// CPU copies into buffers of its own (model-aware path).
    pub cpu_buffers: CpuBuffers,
    /// Whether the file is memory-mapped (`--mmap`, llama.cpp's default).
    pub mmap: bool,
    /// A server's prompt cache in RAM (`--cache-ram`), server mode only.
    pub cache_ram: u64,
}

impl Default for DistributeOptions {
    fn default() -> Self {
        DistributeOptions {
            mode: Mode::Server,
            n_gpu_layers: 99,
            split_mode: SplitMode::None,
            tensor_split: TensorSplit::new(),
            main_gpu: 0,
            offload_kqv: true,
            n_ctx: None,
            // llama-server's defaults (build 11434): `--parallel` auto is 4
            // slots sharing a unified cache, batches of 2048, micro-batches of
            // 512, flash attention auto (on where the backend has it).
            n_parallel: 4,
            kv_unified: true,
            n_batch: 2048,
            kv_bytes_per_token: None,
            cache_type_k: CacheType::F16,
            cache_type_v: CacheType::F16,
            n_ubatch: 512,
            flash_attn: true,
            gpu_overhead: DEFAULT_GPU_OVERHEAD,
            cpu_buffers: CpuBuffers::detect(),
            mmap: true,
            cache_ram: DEFAULT_CACHE_RAM,
        }
    }
}

impl DistributeOptions {
    /// Checks the options against the GPU count; returns the integer weight of
    /// each of the `n_gpus` GPUs for a split.
    pub fn gpu_weights(&self, n_gpus: u32) -> Result<Weights> {
        self.check_gpus(n_gpus)?;
        Ok(split_weights(&self.tensor_split, n_gpus))
    }

    /// Checks the options against the GPU count.
    pub fn check_gpus(&self, n_gpus: u32) -> Result<()> {
        if n_gpus > MAX_GPUS {
            return Err(invalid(
                "n_gpus",
                format!("expected an integer in 0..{MAX_GPUS}, got: {n_gpus}"),
            ));
        }
        let split = &self.tensor_split;
        if split.len() > n_gpus as usize {
            return Err(invalid(
                "option :tensor_split",
                format!(
                    "has {} entries for {n_gpus} GPU(s), got: {split:?}",
                    split.len()
                ),
            ));
        }
        if let Some(bad) = split.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            return Err(invalid(
                "option :tensor_split",
                format!("weights must be finite and non-negative, got: {bad:?}"),
            ));
        }
        if !split.is_empty() && split.iter().all(|w| *w == 0.0) {
            return Err(invalid(
                "option :tensor_split",
                format!("needs at least one positive weight, got: {split:?}"),
            ));
        }
        if n_gpus > 0 && self.main_gpu >= n_gpus {
            return Err(invalid(
                "option :main_gpu",
                format!(
                    "must be below the GPU count {n_gpus}, got: {}",
                    self.main_gpu
                ),
            ));
        }
        for (name, value) in [
            ("option :n_ctx", self.n_ctx.unwrap_or(1)),
            ("option :n_parallel", self.n_parallel),
            ("option :n_ubatch", self.n_ubatch),
        ] {
            if value == 0 {
                return Err(invalid(name, "expected a positive integer, got: 0"));
            }
        }
        Ok(())
    }

    /// The coarse KV-cache estimate in bytes (0 in `:direct` mode).
    pub fn kv_bytes(&self) -> Result<u64> {
        if self.mode == Mode::Direct {
            return Ok(0);
        }
        let per_token = self
            .kv_bytes_per_token
            .unwrap_or(DEFAULT_KV_BYTES_PER_TOKEN);
        let n_ctx = self.n_ctx.unwrap_or(DEFAULT_N_CTX);
        n_ctx.checked_mul(per_token).ok_or_else(|| {
            invalid(
                "opts",
                format!(
                    "the KV cache of n_ctx {n_ctx} x {per_token} bytes per token exceeds 2^64 bytes"
                ),
            )
        })
    }

    /// Where the split puts `bytes` over `n_gpus` GPUs (options checked),
    /// appended to `vram`; GPUs given nothing are left out.
    fn spread(&self, bytes: u64, n_gpus: u32, vram: &mut GpuMap<u64>) {
        match self.split_mode {
            SplitMode::None if bytes > 0 => {
                vram.insert(self.main_gpu, bytes);
            }
            SplitMode::None => {}
            SplitMode::Layer | SplitMode::Row => {
                split_into(bytes, &self.tensor_split, n_gpus, vram);
            }
        }
    }
}

/// Places a model of `file_bytes` under `opts` on a machine with `n_gpus`.
pub fn distribute(file_bytes: u64, opts: &DistributeOptions, n_gpus: u32) -> Result<Placement> {
    let mut placement = Placement::empty();
    distribute_into(file_bytes, opts, n_gpus, &mut placement)?;
    Ok(placement)
}

/// [`distribute`], written into `out` (emptied first) where it lies: a
/// placement holds its GPU map inline, and each move of it copies the
/// whole map, a good part of a small split's cost. On error `out` is
/// unspecified.
pub fn distribute_into(
    file_bytes: u64,
    opts: &DistributeOptions,
    n_gpus: u32,
    out: &mut Placement,
) -> Result<()> {
    opts.check_gpus(n_gpus)?;
    let kv = opts.kv_bytes()?;
    let total = file_bytes.checked_add(kv).ok_or_else(|| {
        invalid(
            "file_bytes",
            format!("{file_bytes} plus a KV cache of {kv} exceeds 2^64 bytes"),
        )
    })?;
    out.vram.clear();
    if n_gpus == 0 || opts.n_gpu_layers == 0 {
        out.ram = total;
        return Ok(());
    }
    // Without a layer count, a partial offload is charged as a full one:
    // refusing a load that would fit is better than admitting one that won't.
    let (on_gpus, in_ram) = if opts.offload_kqv {
        (total, 0)
    } else {
        (file_bytes, kv)
    };
    out.ram = in_ram;
    opts.spread(on_gpus, n_gpus, &mut out.vram);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn opts() -> DistributeOptions {
        DistributeOptions::default()
    }

    #[test]
    fn default_server_mode_adds_the_coarse_kv_estimate_on_the_main_gpu() {
        // 32768 tokens (4 slots of 8192) x 2048 bytes = 64 MiB.
        let got = distribute(GIB, &opts(), 1).unwrap();
        assert_eq!(got, Placement::new(0, &[(0, GIB + 64 * 1024 * 1024)]));
    }

    #[test]
    fn direct_mode_adds_nothing() {
        let o = DistributeOptions {
            mode: Mode::Direct,
            ..opts()
        };
        assert_eq!(
            distribute(GIB, &o, 2).unwrap(),
            Placement::new(0, &[(0, GIB)])
        );
    }

    #[test]
    fn kv_bytes_per_token_sizes_the_cache_of_the_total_context() {
        for n_parallel in [1, 2, 7] {
            let o = DistributeOptions {
                n_ctx: Some(100),
                n_parallel,
                kv_bytes_per_token: Some(10),
                ..opts()
            };
            // The slots share n_ctx: 100 tokens whatever their number.
            assert_eq!(distribute(0, &o, 0).unwrap(), Placement::new(1000, &[]));
        }
    }

    #[test]
    fn no_gpus_or_zero_layers_keep_everything_in_ram() {
        let o = DistributeOptions {
            mode: Mode::Direct,
            n_gpu_layers: 0,
            ..opts()
        };
        assert_eq!(distribute(7, &o, 4).unwrap(), Placement::new(7, &[]));
        let o = DistributeOptions {
            mode: Mode::Direct,
            ..opts()
        };
        assert_eq!(distribute(7, &o, 0).unwrap(), Placement::new(7, &[]));
    }

    #[test]
    fn partial_and_negative_offloads_are_charged_as_full() {
        for n_gpu_layers in [1, -1, 10_000] {
            let o = DistributeOptions {
                mode: Mode::Direct,
                n_gpu_layers,
                ..opts()
            };
            assert_eq!(distribute(7, &o, 1).unwrap(), Placement::new(0, &[(0, 7)]));
        }
    }

    #[test]
    fn kv_stays_in_ram_without_offload_kqv() {
        let o = DistributeOptions {
            offload_kqv: false,
            kv_bytes_per_token: Some(1),
            n_ctx: Some(10),
            n_parallel: 1,
            ..opts()
        };
        assert_eq!(
            distribute(100, &o, 1).unwrap(),
            Placement::new(10, &[(0, 100)])
        );
    }

    #[test]
    fn main_gpu_takes_everything_without_a_split() {
        let o = DistributeOptions {
            mode: Mode::Direct,
            main_gpu: 2,
            ..opts()
        };
        assert_eq!(distribute(9, &o, 3).unwrap(), Placement::new(0, &[(2, 9)]));
    }

    #[test]
    fn layer_and_row_splits_follow_tensor_split() {
        for split_mode in [SplitMode::Layer, SplitMode::Row] {
            let o = DistributeOptions {
                mode: Mode::Direct,
                split_mode,
                tensor_split: vec![3.0, 1.0].into(),
                ..opts()
            };
            assert_eq!(
                distribute(10, &o, 2).unwrap(),
                Placement::new(0, &[(0, 8), (1, 2)])
            );
            let equal = DistributeOptions {
                tensor_split: TensorSplit::new(),
                ..o.clone()
            };
            assert_eq!(
                distribute(10, &equal, 3).unwrap(),
                Placement::new(0, &[(0, 4), (1, 3), (2, 3)])
            );
            // Missing entries are zero; zero weights exclude a GPU.
            let short = DistributeOptions {
                tensor_split: vec![0.0, 1.0].into(),
                ..o
            };
            assert_eq!(
                distribute(10, &short, 4).unwrap(),
                Placement::new(0, &[(1, 10)])
            );
        }
    }

    #[test]
    fn bad_splits_are_refused() {
        let split = |tensor_split: Vec<f64>| DistributeOptions {
            split_mode: SplitMode::Layer,
            tensor_split: tensor_split.into(),
            ..opts()
        };
        let err = distribute(1, &split(vec![1.0, 1.0, 1.0]), 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid option :tensor_split: has 3 entries for 2 GPU(s), got: [1.0, 1.0, 1.0]"
        );
        let err = distribute(1, &split(vec![0.0, 0.0]), 2).unwrap_err();
        assert!(err.to_string().contains("positive weight"), "{err}");
        assert!(distribute(1, &split(vec![f64::NAN]), 2).is_err());
        assert!(distribute(1, &split(vec![-1.0]), 2).is_err());
    }

    #[test]
    fn main_gpu_must_exist() {
        let o = DistributeOptions {
            main_gpu: 2,
            ..opts()
        };
        let err = distribute(1, &o, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid option :main_gpu: must be below the GPU count 2, got: 2"
        );
        assert!(distribute(1, &o, 0).is_ok());
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(distribute(u64::MAX, &opts(), 1).is_err());
        let o = DistributeOptions {
            n_ctx: Some(u64::MAX),
            ..opts()
        };
        assert!(distribute(0, &o, 1).is_err());
        assert!(distribute(0, &opts(), MAX_GPUS + 1).is_err());
    }

    fn options() -> impl Strategy<Value = DistributeOptions> {
        (
            prop_oneof![Just(Mode::Server), Just(Mode::Direct)],
            -2i64..100,
            prop_oneof![
                Just(SplitMode::None),
                Just(SplitMode::Layer),
                Just(SplitMode::Row)
            ],
            proptest::collection::vec(0.0f64..10.0, 0..4),
            any::<bool>(),
            1u64..100_000,
            1u64..64,
        )
            .prop_map(
                |(mode, ngl, split_mode, tensor_split, offload_kqv, n_ctx, n_parallel)| {
                    DistributeOptions {
                        mode,
                        n_gpu_layers: ngl,
                        split_mode,
                        tensor_split: tensor_split.into(),
                        offload_kqv,
                        n_ctx: Some(n_ctx),
                        n_parallel,
                        ..DistributeOptions::default()
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn distribute_never_loses_or_invents_bytes(
            bytes in 0u64..1 << 50, o in options(), n_gpus in 0u32..6
        ) {
            if let Ok(placement) = distribute(bytes, &o, n_gpus) {
                prop_assert_eq!(placement.total(), u128::from(bytes + o.kv_bytes().unwrap()));
                prop_assert!(placement.vram.keys().all(|g| *g < n_gpus.max(1)));
                prop_assert!(placement.vram.values().all(|b| *b > 0));
            }
        }
    }
}
