//! The fit search: what `mix model_budget.plan` asks of each model: which devices are short
//! and by how much, the longest context that fits, and the changes to the
//! load options that would make it fit (fewer GPU layers, a shorter context,
//! a quantized KV cache, a smaller prompt cache). Every answer is found by placing the
//! model again and checking it, never by a rule of thumb.

use crate::budget::check::{check, Insufficient};
use crate::budget::placement::Placement;
use crate::budget::spec::Budget;
use crate::error::Result;
use crate::estimate::distribute::DistributeOptions;
use crate::estimate::layout::{distribute_model, kv::CacheType, ModelShape};

/// Where a model is to go: the budget, what is already placed there, and the
/// number of GPUs to spread it over.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub budget: &'a Budget,
    pub used: &'a Placement,
    pub n_gpus: u32,
}

impl Target<'_> {
    /// Whether `model` fits under `opts`. Errors are the options' or the
    /// model's (see [`crate::estimate::layout::breakdown`]).
    pub fn fits(&self, model: &ModelShape, opts: &DistributeOptions) -> Result<bool> {
        let placement = distribute_model(model, opts, self.n_gpus)?;
        Ok(check(self.budget, &placement, self.used).is_ok())
    }

    /// Like [`Target::fits`], for the searches: once the requested options
    /// have been placed without error, the only errors left are sizes past
    /// 2^64 bytes, which fit no budget.
    fn fits_or_too_large(&self, model: &ModelShape, opts: &DistributeOptions) -> bool {
        self.fits(model, opts).unwrap_or(false)
    }
}

/// Every device of `placement` that is short, in `check`'s order (RAM, then
/// GPUs by index; the single pool of a combined budget), where `check` names
/// only the first.
pub fn shortfalls(budget: &Budget, placement: &Placement, used: &Placement) -> Vec<Insufficient> {
    if let Budget::Combined { .. } = budget {
        return check(budget, placement, used).err().into_iter().collect();
    }
    let ram = Placement::in_ram(placement.ram);
    let gpus = placement.vram.iter().map(|(&gpu, &bytes)| Placement {
        ram: 0,
        vram: [(gpu, bytes)].into_iter().collect(),
    });
    std::iter::once(ram)
        .chain(gpus)
        .filter_map(|one| check(budget, &one, used).err())
        .collect()
}

/// The answers for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// The devices that are short under the requested options; empty when
    /// the model fits.
    pub short: Vec<Insufficient>,
    /// The context the requested options size the KV cache for.
    pub n_ctx: u64,
    /// The largest context up to the trained one (`n_ctx` when the model
    /// does not say) that fits with the other options unchanged, so that a
    /// suggestion never goes beyond what the model was trained for; `None`
    /// when not even one token does.
    pub longest_context: Option<u64>,
    /// When the model does not fit and there are GPUs: the largest
    /// `n_gpu_layers` in `0..=n_layers + 1` that fits (`n_layers + 1` also
    /// offloads the output head), or `None` when none does or the model has
    /// more than [`MAX_SEARCHED_LAYERS`] blocks.
    pub n_gpu_layers: Option<i64>,
    /// When the model does not fit: the first of `q8_0` and `q4_0`, used for
    /// both K and V, that is smaller than the requested cache and fits.
    pub cache_type: Option<CacheType>,
    /// When the model does not fit and has a prompt cache (llama-server's
    /// `--cache-ram`, in RAM): the largest one in whole MiB (the option's
    /// unit) below the requested one that fits, `0` when only none does;
    /// `None` when not even that fits.
    pub cache_ram: Option<u64>,
}

/// The unit of llama-server's `--cache-ram`, in which a smaller prompt
/// cache is suggested.
pub const CACHE_RAM_UNIT: u64 = 1 << 20;

/// The quantized KV caches worth suggesting, widest (most accurate) first.
const SMALLER_CACHES: [CacheType; 2] = [CacheType::Q8_0, CacheType::Q4_0];

/// Places `model` under `opts` on `target` and searches for what would fit.
pub fn search(model: &ModelShape, opts: &DistributeOptions, target: Target) -> Result<Search> {
    let placement = distribute_model(model, opts, target.n_gpus)?;
    let short = shortfalls(target.budget, &placement, target.used);
    let n_ctx = opts.n_ctx.unwrap_or_else(|| model.default_context());
    let fits = short.is_empty();
    let upper = if model.context_length > 0 {
        model.context_length
    } else {
        n_ctx
    };
    let longest_context = if fits && upper == n_ctx {
        Some(n_ctx)
    } else {
        longest_context(model, opts, target, upper)
    };
    let at_n_ctx = DistributeOptions {
        n_ctx: Some(n_ctx),
        ..opts.clone()
    };
    let n_gpu_layers = if fits || target.n_gpus == 0 {
        None
    } else {
        most_gpu_layers(model, &at_n_ctx, target)
    };
    let (cache_type, cache_ram) = if fits {
        (None, None)
    } else {
        (
            smaller_cache(model, &at_n_ctx, target),
            smaller_prompt_cache(model, &at_n_ctx, target),
        )
    };
    Ok(Search {
        short,
        n_ctx,
        longest_context,
        n_gpu_layers,
        cache_type,
        cache_ram,
    })
}

/// The largest context in `1..=upper` that fits. Every device's bytes grow
/// with the context (KV cells, the KQ mask, attention scratch), so whether
/// it fits only changes once and a binary search is exact.
fn longest_context(
    model: &ModelShape,
    opts: &DistributeOptions,
    target: Target,
    upper: u64,
) -> Option<u64> {
    let fits = |n: u64| {
        let o = DistributeOptions {
            n_ctx: Some(n),
            ..opts.clone()
        };
        target.fits_or_too_large(model, &o)
    };
    let lo = crate::estimate::layout::kv::largest_fitting(upper, fits);
    (lo > 0).then_some(lo)
}

/// The most blocks whose `n_gpu_layers` are searched: the scan places the
/// model once per candidate, so its cost grows with the square of the block
/// count. Published models have at most a few hundred blocks.
pub const MAX_SEARCHED_LAYERS: usize = 1024;

/// The largest `n_gpu_layers` that fits. Offloading more can help (RAM is
/// short) or hurt (a GPU is short), and which GPU a block lands on shifts
/// with the count, so this scans from the top instead of assuming an order.
fn most_gpu_layers(model: &ModelShape, opts: &DistributeOptions, target: Target) -> Option<i64> {
    if model.n_layers() > MAX_SEARCHED_LAYERS {
        return None;
    }
    let all = i64::try_from(model.n_layers()).ok()? + 1;
    (0..=all).rev().find(|&k| {
        let o = DistributeOptions {
            n_gpu_layers: k,
            ..opts.clone()
        };
        target.fits_or_too_large(model, &o)
    })
}

/// The widest quantized cache that shrinks the requested one and fits.
fn smaller_cache(
    model: &ModelShape,
    opts: &DistributeOptions,
    target: Target,
) -> Option<CacheType> {
    let n_ctx = opts.n_ctx.unwrap_or_else(|| model.default_context());
    let kv_bytes = |o: &DistributeOptions| model.kv_shape(o).total_bytes(n_ctx);
    let now = kv_bytes(opts);
    SMALLER_CACHES.into_iter().find(|&t| {
        let o = DistributeOptions {
            cache_type_k: t,
            cache_type_v: t,
            ..opts.clone()
        };
        kv_bytes(&o) < now && target.fits_or_too_large(model, &o)
    })
}

/// The largest prompt cache in whole [`CACHE_RAM_UNIT`]s below the requested
/// one that fits. The prompt cache only adds RAM, so whether it fits only
/// changes once and a binary search is exact.
fn smaller_prompt_cache(
    model: &ModelShape,
    opts: &DistributeOptions,
    target: Target,
) -> Option<u64> {
    if opts.cache_ram == 0 {
        return None;
    }
    let fits = |units: u64| {
        let o = DistributeOptions {
            cache_ram: units * CACHE_RAM_UNIT,
            ..opts.clone()
        };
        target.fits_or_too_large(model, &o)
    };
    if !fits(0) {
        return None;
    }
    let below = (opts.cache_ram - 1) / CACHE_RAM_UNIT;
    Some(crate::estimate::layout::kv::largest_fitting(below, fits) * CACHE_RAM_UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::check::Device;
    use crate::budget::spec::{Limit, VramLimits};
    use crate::estimate::distribute::SplitMode;
    use proptest::prelude::*;

    use crate::estimate::layout::tests::llama_8b;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn per_device(ram: u64, gpus: &[u64]) -> Budget {
        Budget::PerDevice {
            ram: Limit::Bytes(ram),
            vram: VramLimits::PerGpu(
                gpus.iter()
                    .enumerate()
                    .map(|(i, &b)| (i as u32, Limit::Bytes(b)))
                    .collect(),
            ),
        }
    }

    fn at(budget: &Budget, n_gpus: u32) -> Target<'_> {
        static EMPTY: std::sync::OnceLock<Placement> = std::sync::OnceLock::new();
        Target {
            budget,
            used: EMPTY.get_or_init(Placement::empty),
            n_gpus,
        }
    }

    /// The defaults without the parts that depend on this machine's CPU or
    /// grow while a server runs: no repacking, no prompt cache.
    fn base() -> DistributeOptions {
        DistributeOptions {
            cpu_buffers: crate::estimate::layout::cpu_buffers::CpuBuffers::None,
            cache_ram: 0,
            ..DistributeOptions::default()
        }
    }

    fn placed(model: &ModelShape, opts: &DistributeOptions, n_gpus: u32) -> Placement {
        distribute_model(model, opts, n_gpus).unwrap()
    }

    #[test]
    fn a_model_that_fits_reports_no_shortfall_and_its_trained_context() {
        let budget = per_device(64 * GIB, &[]);
        let s = search(&llama_8b(), &base(), at(&budget, 0)).unwrap();
        assert!(s.short.is_empty());
        // The trained context, as llama-server's `-c 0`.
        assert_eq!(s.n_ctx, 131_072);
        // 131,072 tokens of f16 KV are 16 GiB: fits in 64 GiB with the weights.
        assert_eq!(s.longest_context, Some(131_072));
        assert_eq!(
            (s.n_gpu_layers, s.cache_type, s.cache_ram),
            (None, None, None)
        );
    }

    #[test]
    fn every_short_device_is_named_with_its_shortfall() {
        let opts = DistributeOptions {
            split_mode: SplitMode::Layer,
            ..base()
        };
        let p = placed(&llama_8b(), &opts, 2);
        let budget = per_device(GIB / 4, &[GIB, 64 * GIB]);
        let short = shortfalls(&budget, &p, &Placement::empty());
        let devices: Vec<Device> = short.iter().map(|s| s.device).collect();
        assert_eq!(devices, vec![Device::Ram, Device::Gpu(0)]);
        assert_eq!(short[0].required, p.ram);
        assert_eq!(short[0].available, GIB / 4);
        assert_eq!(short[1].required, p.gpu(0));
        // A combined budget has one pool to be short of.
        let pool = Budget::Combined { limit: GIB };
        let short = shortfalls(&pool, &p, &Placement::empty());
        assert_eq!(short.len(), 1);
        assert_eq!(short[0].device, Device::Total);
    }

    #[test]
    fn usage_already_there_counts() {
        let budget = per_device(16 * GIB, &[]);
        let opts = DistributeOptions {
            n_ctx: Some(8192),
            ..base()
        };
        let alone = search(&llama_8b(), &opts, at(&budget, 0)).unwrap();
        assert!(alone.short.is_empty());
        let used = Placement::in_ram(8 * GIB);
        let target = Target {
            budget: &budget,
            used: &used,
            n_gpus: 0,
        };
        let s = search(&llama_8b(), &opts, target).unwrap();
        assert_eq!(s.short[0].available, 8 * GIB);
        let n = s.longest_context.unwrap();
        assert!(n > 4096 && n < 8192, "{n}");
    }

    #[test]
    fn the_longest_context_is_the_exact_edge() {
        let opts = base();
        let at_4096 = placed(
            &llama_8b(),
            &DistributeOptions {
                n_ctx: Some(4096),
                ..opts.clone()
            },
            0,
        );
        // A budget exactly at the 4096-token footprint.
        let budget = per_device(at_4096.ram, &[]);
        let s = search(&llama_8b(), &opts, at(&budget, 0)).unwrap();
        assert_eq!(s.short[0].device, Device::Ram);
        assert_eq!(s.short[0].required - s.short[0].available, {
            let full = placed(&llama_8b(), &opts, 0);
            full.ram - at_4096.ram
        });
        assert_eq!(s.longest_context, Some(4096));
        // No GPUs: no layer suggestion.
        assert_eq!(s.n_gpu_layers, None);
    }

    #[test]
    fn fewer_gpu_layers_when_the_gpu_is_short() {
        // Room on the GPU for 20 blocks with their KV and buffers.
        let opts = DistributeOptions {
            n_gpu_layers: 20,
            ..base()
        };
        let gpu_at_20 = placed(&llama_8b(), &opts, 1).gpu(0);
        let budget = per_device(64 * GIB, &[gpu_at_20]);
        let s = search(&llama_8b(), &base(), at(&budget, 1)).unwrap();
        assert_eq!(s.short.len(), 1);
        assert_eq!(s.short[0].device, Device::Gpu(0));
        assert_eq!(s.n_gpu_layers, Some(20));
    }

    #[test]
    fn more_gpu_layers_when_ram_is_short() {
        let opts = DistributeOptions {
            n_gpu_layers: 4,
            ..base()
        };
        let all = placed(&llama_8b(), &base(), 1);
        let budget = per_device(all.ram, &[64 * GIB]);
        let s = search(&llama_8b(), &opts, at(&budget, 1)).unwrap();
        assert_eq!(s.short[0].device, Device::Ram);
        // Everything, output head included, is the only offload that fits.
        assert_eq!(s.n_gpu_layers, Some(33));
    }

    #[test]
    fn a_quantized_cache_when_the_kv_is_what_does_not_fit() {
        let opts = base();
        let q8 = DistributeOptions {
            cache_type_k: CacheType::Q8_0,
            cache_type_v: CacheType::Q8_0,
            ..opts.clone()
        };
        let q4 = DistributeOptions {
            cache_type_k: CacheType::Q4_0,
            cache_type_v: CacheType::Q4_0,
            ..opts.clone()
        };
        let ram = |o: &DistributeOptions| placed(&llama_8b(), o, 0).ram;
        let search_at = |limit| {
            let budget = per_device(limit, &[]);
            search(&llama_8b(), &opts, at(&budget, 0)).unwrap()
        };
        assert_eq!(search_at(ram(&q8)).cache_type, Some(CacheType::Q8_0));
        assert_eq!(search_at(ram(&q8) - 1).cache_type, Some(CacheType::Q4_0));
        assert_eq!(search_at(ram(&q4) - 1).cache_type, None);
        // Already q4_0: nothing smaller to offer.
        let budget = per_device(ram(&q4) - 1, &[]);
        let s = search(&llama_8b(), &q4, at(&budget, 0)).unwrap();
        assert_eq!(s.cache_type, None);
    }

    #[test]
    fn a_smaller_prompt_cache_when_it_is_what_does_not_fit() {
        // llama-server's 8 GiB prompt cache on top of 8192 tokens.
        let opts = DistributeOptions {
            n_ctx: Some(8192),
            cache_ram: 8192 * MIB,
            ..base()
        };
        let ram = |cache_ram| {
            let o = DistributeOptions {
                cache_ram,
                ..opts.clone()
            };
            placed(&llama_8b(), &o, 0).ram
        };
        let search_at = |limit, opts: &DistributeOptions| {
            let budget = per_device(limit, &[]);
            search(&llama_8b(), opts, at(&budget, 0)).unwrap()
        };
        // Room for exactly 3000 MiB of it; a byte less leaves 2999.
        let s = search_at(ram(3000 * MIB), &opts);
        assert_eq!(s.short[0].device, Device::Ram);
        assert_eq!(s.cache_ram, Some(3000 * MIB));
        assert_eq!(
            search_at(ram(3000 * MIB) - 1, &opts).cache_ram,
            Some(2999 * MIB)
        );
        // Only without one: 0.
        assert_eq!(search_at(ram(MIB) - 1, &opts).cache_ram, Some(0));
        // Not even without one, or none asked for: nothing to suggest.
        assert_eq!(search_at(ram(0) - 1, &opts).cache_ram, None);
        let none = DistributeOptions {
            cache_ram: 0,
            ..opts.clone()
        };
        assert_eq!(search_at(ram(0) - 1, &none).cache_ram, None);
        // A request that is no whole number of MiB: whole MiB below it.
        let odd = DistributeOptions {
            cache_ram: 3000 * MIB + 1,
            ..opts.clone()
        };
        assert_eq!(
            search_at(ram(3000 * MIB + 1) - 1, &odd).cache_ram,
            Some(3000 * MIB)
        );
    }

    #[test]
    fn no_smaller_prompt_cache_when_a_gpu_is_what_is_short() {
        let opts = DistributeOptions {
            n_ctx: Some(8192),
            cache_ram: 8192 * MIB,
            ..base()
        };
        let p = placed(&llama_8b(), &opts, 1);
        let budget = per_device(64 * GIB, &[p.gpu(0) - 1]);
        let s = search(&llama_8b(), &opts, at(&budget, 1)).unwrap();
        assert_eq!(s.short[0].device, Device::Gpu(0));
        assert_eq!(s.cache_ram, None);
    }

    #[test]
    fn nothing_fits_when_the_weights_alone_are_too_large() {
        let budget = per_device(GIB, &[]);
        let s = search(&llama_8b(), &base(), at(&budget, 0)).unwrap();
        assert_eq!(
            (s.longest_context, s.n_gpu_layers, s.cache_type, s.cache_ram),
            (None, None, None, None)
        );
    }

    #[test]
    fn models_past_the_searched_layers_get_no_layer_answer() {
        let n = MAX_SEARCHED_LAYERS + 1;
        let huge = ModelShape {
            layer_bytes: vec![MIB; n],
            layer_matrices: vec![],
            n_head_kv: vec![8; n],
            ..llama_8b()
        };
        let budget = per_device(64 * GIB, &[MIB]);
        let opts = DistributeOptions {
            n_ctx: Some(8192),
            // Below CUDA's op offload batch: with no layer offloaded the
            // GPU is left empty.
            n_ubatch: 16,
            ..base()
        };
        let s = search(&huge, &opts, at(&budget, 1)).unwrap();
        assert_eq!(s.short[0].device, Device::Gpu(0));
        assert_eq!(s.n_gpu_layers, None);
        let at_limit = ModelShape {
            layer_bytes: vec![MIB; n - 1],
            layer_matrices: vec![],
            n_head_kv: vec![8; n - 1],
            ..llama_8b()
        };
        let s = search(&at_limit, &opts, at(&budget, 1)).unwrap();
        // The GPU cannot hold even its overhead: only keeping everything in RAM fits.
        assert_eq!(s.n_gpu_layers, Some(0));
    }

    #[test]
    fn bad_options_are_errors_not_answers() {
        let budget = Budget::Unlimited;
        let opts = DistributeOptions {
            main_gpu: 3,
            ..base()
        };
        assert!(search(&llama_8b(), &opts, at(&budget, 1)).is_err());
    }

    fn model() -> impl Strategy<Value = ModelShape> {
        (
            1usize..40,
            0u64..1 << 30,
            1u32..16,
            proptest::option::of(1u64..10_000),
            1u64..200_000,
        )
            .prop_map(|(n, layer, kv, window, context)| ModelShape {
                layer_bytes: vec![layer; n],
                layer_matrices: vec![],
                n_head_kv: vec![kv; n],
                sliding_window: window,
                swa_layers: (0..n).map(|i| i % 2 == 0).collect(),
                context_length: context,
                ..llama_8b()
            })
    }

    fn options() -> impl Strategy<Value = DistributeOptions> {
        (
            -1i64..45,
            proptest::option::of(1u64..100_000),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(0u64), 0u64..1 << 34],
        )
            .prop_map(
                |(n_gpu_layers, n_ctx, offload_kqv, flash_attn, cache_ram)| DistributeOptions {
                    n_gpu_layers,
                    n_ctx,
                    offload_kqv,
                    flash_attn,
                    cache_ram,
                    split_mode: SplitMode::Layer,
                    ..base()
                },
            )
    }

    proptest! {
        #[test]
        fn every_suggestion_fits_and_the_longest_context_is_the_edge(
            m in model(), o in options(), n_gpus in 0u32..3,
            ram in 0u64..1 << 36, gpu in 0u64..1 << 35, used_ram in 0u64..1 << 33,
        ) {
            let budget = per_device(ram, &vec![gpu; n_gpus as usize]);
            let used = Placement::in_ram(used_ram);
            let target = Target { budget: &budget, used: &used, n_gpus };
            let s = search(&m, &o, target).unwrap();
            let with_ctx = |n| DistributeOptions { n_ctx: Some(n), ..o.clone() };
            let at_n_ctx = with_ctx(s.n_ctx);
            prop_assert_eq!(s.short.is_empty(), target.fits(&m, &at_n_ctx).unwrap());
            let upper = if m.context_length > 0 { m.context_length } else { s.n_ctx };
            match s.longest_context {
                Some(n) => {
                    prop_assert!(target.fits(&m, &with_ctx(n)).unwrap());
                    if n < upper {
                        prop_assert!(!target.fits(&m, &with_ctx(n + 1)).unwrap());
                    }
                }
                None => prop_assert!(!target.fits(&m, &with_ctx(1)).unwrap()),
            }
            if let Some(k) = s.n_gpu_layers {
                let o = DistributeOptions { n_gpu_layers: k, ..at_n_ctx.clone() };
                prop_assert!(target.fits(&m, &o).unwrap());
                for more in k + 1..=m.n_layers() as i64 + 1 {
                    let o = DistributeOptions { n_gpu_layers: more, ..at_n_ctx.clone() };
                    prop_assert!(!target.fits(&m, &o).unwrap());
                }
            }
            if let Some(t) = s.cache_type {
                let o = DistributeOptions { cache_type_k: t, cache_type_v: t, ..at_n_ctx.clone() };
                prop_assert!(target.fits(&m, &o).unwrap());
            }
            let with = |cache_ram| DistributeOptions { cache_ram, ..at_n_ctx.clone() };
            if let Some(c) = s.cache_ram {
                prop_assert!(c < o.cache_ram && c % CACHE_RAM_UNIT == 0);
                prop_assert!(target.fits(&m, &with(c)).unwrap());
                if c + CACHE_RAM_UNIT < o.cache_ram {
                    prop_assert!(!target.fits(&m, &with(c + CACHE_RAM_UNIT)).unwrap());
                }
            } else if !s.short.is_empty() && o.cache_ram > 0 {
                prop_assert!(!target.fits(&m, &with(0)).unwrap());
            }
        }
    }
}
