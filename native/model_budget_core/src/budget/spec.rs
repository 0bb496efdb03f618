//! Memory budgets: what a caller asks for (`BudgetSpec`) and what it resolves
//! to on this machine (`Budget`).

use crate::budget::gpu_map::GpuMap;
use crate::error::{invalid, Result};

/// A ceiling on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Bytes(u64),
    Infinity,
}

impl Limit {
    /// Bytes still free under this limit given `used`, or `None` when unbounded.
    /// Never negative: over-committed devices have 0 available.
    pub fn available(self, used: u64) -> Option<u64> {
        match self {
            Limit::Bytes(limit) => Some(limit.saturating_sub(used)),
            Limit::Infinity => None,
        }
    }
}

/// VRAM ceilings of a per-device budget. GPUs absent from the map are unbounded.
// Inline GPU maps make the map variants large; boxing them would bring
// back the allocation per call that `GpuMap` exists to avoid.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VramLimits {
    Infinity,
    PerGpu(GpuMap<Limit>),
}

impl VramLimits {
    pub fn limit(&self, gpu: u32) -> Limit {
        match self {
            VramLimits::Infinity => Limit::Infinity,
            VramLimits::PerGpu(map) => map.get(&gpu).copied().unwrap_or(Limit::Infinity),
        }
    }
}

/// A resolved budget, the shape `check` works against.
// Inline GPU maps make the map variants large; boxing them would bring
// back the allocation per call that `GpuMap` exists to avoid.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Budget {
    /// No limit at all.
    Unlimited,
    /// One pool: RAM plus all VRAM together.
    Combined { limit: u64 },
    /// A ceiling per device.
    PerDevice { ram: Limit, vram: VramLimits },
}

/// RAM part of a per-device `:memory_budget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamSpec {
    Bytes(u64),
    Infinity,
    /// 80% of the memory this process may use.
    Auto,
}

/// VRAM part of a per-device `:memory_budget`.
// Inline GPU maps make the map variants large; boxing them would bring
// back the allocation per call that `GpuMap` exists to avoid.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VramSpec {
    Infinity,
    /// Each GPU's free memory.
    Auto,
    PerGpu(GpuMap<Limit>),
}

/// The `:memory_budget` option as the user wrote it.
// Inline GPU maps make the map variants large; boxing them would bring
// back the allocation per call that `GpuMap` exists to avoid.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetSpec {
    Unlimited,
    Combined(u64),
    Auto,
    PerDevice { ram: RamSpec, vram: VramSpec },
}

impl BudgetSpec {
    /// Whether resolving needs the machine's memory limit.
    pub fn needs_system_memory(&self) -> bool {
        matches!(
            self,
            BudgetSpec::Auto
                | BudgetSpec::PerDevice {
                    ram: RamSpec::Auto,
                    ..
                }
        )
    }

    /// Whether resolving needs the list of GPUs and their free memory.
    pub fn needs_gpus(&self) -> bool {
        matches!(
            self,
            BudgetSpec::Auto
                | BudgetSpec::PerDevice {
                    vram: VramSpec::Auto,
                    ..
                }
        )
    }
}

/// A GPU's free memory, as a device probe reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuFree {
    pub gpu_index: u32,
    pub memory_free: u64,
}

/// The share of the memory limit an `:auto` RAM budget takes: 80%, leaving
/// room for the OS, the BEAM and the runtime itself.
pub const AUTO_RAM_PERCENT: u64 = 80;

/// 80% of `bytes`, rounded down, without overflow.
pub fn auto_ram(bytes: u64) -> u64 {
    // 80% of a u64 always fits in a u64.
    (u128::from(bytes) * u128::from(AUTO_RAM_PERCENT) / 100) as u64
}

/// Resolves a spec against this machine. `ram_limit` is the memory this
/// process may use (physical memory or its cgroup limit); `gpus` the probed
/// GPUs. Each is consulted only when the spec says `:auto` for it.
pub fn resolve(spec: &BudgetSpec, ram_limit: u64, gpus: &[GpuFree]) -> Result<Budget> {
    let mut budget = Budget::Unlimited;
    resolve_into(spec, ram_limit, gpus, &mut budget)?;
    Ok(budget)
}

/// [`resolve`], written into `out` where it lies: a per-device budget holds
/// its GPU map inline, and each move of it copies the whole map, which
/// costs more than resolving a small budget. On error `out` is unspecified.
pub fn resolve_into(
    spec: &BudgetSpec,
    ram_limit: u64,
    gpus: &[GpuFree],
    out: &mut Budget,
) -> Result<()> {
    let (ram, vram) = match spec {
        BudgetSpec::Unlimited => {
            *out = Budget::Unlimited;
            return Ok(());
        }
        BudgetSpec::Combined(limit) => {
            *out = Budget::Combined { limit: *limit };
            return Ok(());
        }
        BudgetSpec::Auto => (Limit::Bytes(auto_ram(ram_limit)), &VramSpec::Auto),
        BudgetSpec::PerDevice { ram, vram } => (
            match ram {
                RamSpec::Bytes(b) => Limit::Bytes(*b),
                RamSpec::Infinity => Limit::Infinity,
                RamSpec::Auto => Limit::Bytes(auto_ram(ram_limit)),
            },
            vram,
        ),
    };
    *out = Budget::PerDevice {
        ram,
        vram: match vram {
            VramSpec::Infinity => VramLimits::Infinity,
            VramSpec::Auto => VramLimits::PerGpu(GpuMap::new()),
            VramSpec::PerGpu(map) => VramLimits::PerGpu(map.clone()),
        },
    };
    if let (
        VramSpec::Auto,
        Budget::PerDevice {
            vram: VramLimits::PerGpu(map),
            ..
        },
    ) = (vram, out)
    {
        for gpu in gpus {
            if map
                .insert(gpu.gpu_index, Limit::Bytes(gpu.memory_free))
                .is_some()
            {
                return Err(invalid(
                    "gpu_devices",
                    format!("GPU {} is listed more than once", gpu.gpu_index),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPUS: [GpuFree; 2] = [
        GpuFree {
            gpu_index: 0,
            memory_free: 24,
        },
        GpuFree {
            gpu_index: 1,
            memory_free: 12,
        },
    ];

    #[test]
    fn auto_takes_80_percent_of_ram_and_free_vram() {
        let budget = resolve(&BudgetSpec::Auto, 1000, &GPUS).unwrap();
        assert_eq!(
            budget,
            Budget::PerDevice {
                ram: Limit::Bytes(800),
                vram: VramLimits::PerGpu([(0, Limit::Bytes(24)), (1, Limit::Bytes(12))].into()),
            }
        );
    }

    #[test]
    fn auto_ram_does_not_overflow() {
        assert_eq!(auto_ram(u64::MAX), 14757395258967641292);
        assert_eq!(auto_ram(9), 7);
    }

    #[test]
    fn explicit_shapes_pass_through() {
        assert_eq!(
            resolve(&BudgetSpec::Unlimited, 0, &[]).unwrap(),
            Budget::Unlimited
        );
        assert_eq!(
            resolve(&BudgetSpec::Combined(5), 0, &[]).unwrap(),
            Budget::Combined { limit: 5 }
        );
        let spec = BudgetSpec::PerDevice {
            ram: RamSpec::Infinity,
            vram: VramSpec::PerGpu([(1, Limit::Bytes(3))].into()),
        };
        let budget = resolve(&spec, 0, &GPUS).unwrap();
        assert_eq!(
            budget,
            Budget::PerDevice {
                ram: Limit::Infinity,
                vram: VramLimits::PerGpu([(1, Limit::Bytes(3))].into())
            }
        );
    }

    #[test]
    fn per_device_auto_parts() {
        let spec = BudgetSpec::PerDevice {
            ram: RamSpec::Auto,
            vram: VramSpec::Auto,
        };
        assert_eq!(
            resolve(&spec, 100, &GPUS).unwrap(),
            resolve(&BudgetSpec::Auto, 100, &GPUS).unwrap()
        );
        assert!(spec.needs_gpus() && spec.needs_system_memory());
        assert!(!BudgetSpec::Combined(1).needs_gpus());
    }

    #[test]
    fn duplicate_gpus_are_refused() {
        let gpus = [GPUS[0], GPUS[0]];
        let err = resolve(&BudgetSpec::Auto, 1, &gpus).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid gpu_devices: GPU 0 is listed more than once"
        );
    }

    #[test]
    fn vram_limits_default_to_unbounded() {
        let limits = VramLimits::PerGpu([(0, Limit::Bytes(1))].into());
        assert_eq!(limits.limit(0), Limit::Bytes(1));
        assert_eq!(limits.limit(7), Limit::Infinity);
        assert_eq!(Limit::Bytes(5).available(9), Some(0));
    }
}
