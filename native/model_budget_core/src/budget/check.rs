//! Admission: does a placement fit a budget on top of what is already used?

use crate::budget::gpu_map::seek;
use crate::budget::placement::Placement;
use crate::budget::spec::{Budget, Limit, VramLimits};

/// The device a check names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// The single pool of a combined budget.
    Total,
    Ram,
    Gpu(u32),
}

/// Why a placement does not fit: the first device that is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Insufficient {
    pub device: Device,
    /// Bytes the placement needs on that device.
    pub required: u64,
    /// Bytes left there, `max(limit - used, 0)`.
    pub available: u64,
}

impl Insufficient {
    /// How many bytes the device is short by (`required - available`).
    pub fn short_by(&self) -> u64 {
        self.required.saturating_sub(self.available)
    }
}

/// Bytes `p` holds on `device` (`Total`: everywhere, clamped to u64).
pub fn share(p: &Placement, device: Device) -> u64 {
    match device {
        Device::Total => u64::try_from(p.total()).unwrap_or(u64::MAX),
        Device::Ram => p.ram,
        Device::Gpu(g) => p.gpu(g),
    }
}

/// The limit of `device` under `budget`: a combined budget's pool for any
/// device, unbounded for an unlimited budget.
pub fn limit(budget: &Budget, device: Device) -> Limit {
    match (budget, device) {
        (Budget::Combined { limit }, _) => Limit::Bytes(*limit),
        (Budget::PerDevice { ram, .. }, Device::Ram) => *ram,
        (Budget::PerDevice { vram, .. }, Device::Gpu(g)) => vram.limit(g),
        _ => Limit::Infinity,
    }
}

/// Bytes still free on `device` given `used` (`max(limit - used, 0)`), or
/// `None` when it is unbounded.
pub fn available(budget: &Budget, used: &Placement, device: Device) -> Option<u64> {
    limit(budget, device).available(share(used, device))
}

/// Checks `placement` against `budget` given `used`. A fit exactly at the
/// limit is accepted. RAM is checked before GPUs, GPUs in index order.
pub fn check(budget: &Budget, placement: &Placement, used: &Placement) -> Result<(), Insufficient> {
    match budget {
        Budget::Unlimited => Ok(()),
        Budget::Combined { limit } => {
            // Totals are u128 sums of u64s; anything beyond u64 is over any limit.
            let clamp = |n: u128| u64::try_from(n).unwrap_or(u64::MAX);
            let required = placement.total();
            let available = u128::from(*limit).saturating_sub(used.total());
            if required > available {
                Err(Insufficient {
                    device: Device::Total,
                    required: clamp(required),
                    available: clamp(available),
                })
            } else {
                Ok(())
            }
        }
        Budget::PerDevice { ram, vram } => {
            within(*ram, Device::Ram, placement.ram, used.ram)?;
            // The three GPU maps are sorted: one walk through each, instead
            // of two searches per GPU.
            let mut limits = match vram {
                VramLimits::Infinity => &[][..],
                VramLimits::PerGpu(map) => map.as_slice(),
            };
            let mut held = used.vram.as_slice();
            for &(gpu, required) in placement.vram.as_slice() {
                let limit = seek(&mut limits, gpu).unwrap_or(Limit::Infinity);
                let used_here = seek(&mut held, gpu).unwrap_or(0);
                within(limit, Device::Gpu(gpu), required, used_here)?;
            }
            Ok(())
        }
    }
}

/// Checks `placement` as [`check`] does and, when it fits, the room left on
/// the devices it puts bytes on once it is added (the pool of a combined
/// budget), summed: `Ok(None)` when one of them has no limit. What ranks
/// the members of a cluster for bin-packing or spreading a load.
pub fn room(
    budget: &Budget,
    placement: &Placement,
    used: &Placement,
) -> Result<Option<u64>, Insufficient> {
    check(budget, placement, used)?;
    let left = |device: Device| {
        available(budget, used, device).map(|free| free - share(placement, device))
    };
    Ok(match budget {
        Budget::Unlimited => None,
        Budget::Combined { .. } => left(Device::Total),
        Budget::PerDevice { .. } => {
            let ram = (placement.ram > 0).then_some(Device::Ram);
            let gpus = placement.vram.iter().filter(|(_, &b)| b > 0);
            ram.into_iter()
                .chain(gpus.map(|(&g, _)| Device::Gpu(g)))
                .try_fold(0u64, |sum, device| {
                    left(device).map(|l| sum.saturating_add(l))
                })
        }
    })
}

fn within(limit: Limit, device: Device, required: u64, used: u64) -> Result<(), Insufficient> {
    match limit.available(used) {
        Some(available) if required > available => Err(Insufficient {
            device,
            required,
            available,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::spec::VramLimits;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn per_device(ram: Limit, vram: &[(u32, Limit)]) -> Budget {
        Budget::PerDevice {
            ram,
            vram: VramLimits::PerGpu(vram.iter().copied().collect()),
        }
    }

    #[test]
    fn unlimited_admits_anything() {
        assert_eq!(
            check(
                &Budget::Unlimited,
                &Placement::new(u64::MAX, &[]),
                &Placement::new(u64::MAX, &[])
            ),
            Ok(())
        );
    }

    #[test]
    fn combined_counts_ram_and_vram_together() {
        let budget = Budget::Combined { limit: 100 };
        assert_eq!(
            check(
                &budget,
                &Placement::new(30, &[(0, 20)]),
                &Placement::new(40, &[(1, 10)])
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &budget,
                &Placement::new(30, &[(0, 21)]),
                &Placement::new(40, &[(1, 10)])
            ),
            Err(Insufficient {
                device: Device::Total,
                required: 51,
                available: 50
            })
        );
    }

    #[test]
    fn combined_over_committed_has_zero_available() {
        let budget = Budget::Combined { limit: 10 };
        let err = check(&budget, &Placement::new(1, &[]), &Placement::new(20, &[])).unwrap_err();
        assert_eq!(err.available, 0);
    }

    #[test]
    fn combined_totals_beyond_u64_are_clamped() {
        let budget = Budget::Combined { limit: 10 };
        let err = check(
            &budget,
            &Placement::new(u64::MAX, &[(0, u64::MAX)]),
            &Placement::new(0, &[]),
        )
        .unwrap_err();
        assert_eq!(err.required, u64::MAX);
    }

    #[test]
    fn exact_fit_is_ok() {
        let budget = per_device(Limit::Bytes(10), &[(0, Limit::Bytes(5))]);
        assert_eq!(
            check(
                &budget,
                &Placement::new(4, &[(0, 2)]),
                &Placement::new(6, &[(0, 3)])
            ),
            Ok(())
        );
    }

    #[test]
    fn ram_is_checked_before_gpus_and_gpus_in_order() {
        let budget = per_device(
            Limit::Bytes(10),
            &[(0, Limit::Bytes(5)), (1, Limit::Bytes(5))],
        );
        let err = check(
            &budget,
            &Placement::new(11, &[(0, 6), (1, 6)]),
            &Placement::new(0, &[]),
        )
        .unwrap_err();
        assert_eq!(err.device, Device::Ram);
        let err = check(
            &budget,
            &Placement::new(1, &[(0, 6), (1, 6)]),
            &Placement::new(0, &[]),
        )
        .unwrap_err();
        assert_eq!(err.device, Device::Gpu(0));
        let err = check(
            &budget,
            &Placement::new(1, &[(0, 1), (1, 6)]),
            &Placement::new(0, &[(1, 2)]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            Insufficient {
                device: Device::Gpu(1),
                required: 6,
                available: 3
            }
        );
    }

    #[test]
    fn gpus_absent_from_the_budget_are_unbounded() {
        let budget = per_device(Limit::Infinity, &[(0, Limit::Bytes(1))]);
        assert_eq!(
            check(
                &budget,
                &Placement::new(u64::MAX, &[(3, u64::MAX)]),
                &Placement::new(0, &[])
            ),
            Ok(())
        );
        let all = Budget::PerDevice {
            ram: Limit::Bytes(0),
            vram: VramLimits::Infinity,
        };
        assert_eq!(
            check(&all, &Placement::new(0, &[(0, 9)]), &Placement::new(0, &[])),
            Ok(())
        );
        assert!(check(&all, &Placement::new(1, &[]), &Placement::new(0, &[])).is_err());
    }

    fn limit() -> impl Strategy<Value = Limit> {
        prop_oneof![
            Just(Limit::Infinity),
            (0..1u64 << 40).prop_map(Limit::Bytes)
        ]
    }

    fn small_placement() -> impl Strategy<Value = Placement> {
        (
            0..1u64 << 40,
            proptest::collection::btree_map(0u32..4, 0..1u64 << 40, 0..4),
        )
            .prop_map(|(ram, vram)| Placement {
                ram,
                vram: vram.into_iter().collect(),
            })
    }

    fn budget() -> impl Strategy<Value = Budget> {
        prop_oneof![
            Just(Budget::Unlimited),
            (1..1u64 << 42).prop_map(|limit| Budget::Combined { limit }),
            (
                limit(),
                proptest::collection::btree_map(0u32..4, limit(), 0..4)
            )
                .prop_map(|(ram, vram): (Limit, BTreeMap<u32, Limit>)| {
                    Budget::PerDevice {
                        ram,
                        vram: VramLimits::PerGpu(vram.into_iter().collect()),
                    }
                }),
        ]
    }

    fn limit_of(budget: &Budget, device: Device) -> Option<u128> {
        let bytes = |l: Limit| match l {
            Limit::Bytes(b) => Some(u128::from(b)),
            Limit::Infinity => None,
        };
        match (budget, device) {
            (Budget::Unlimited, _) => None,
            (Budget::Combined { limit }, Device::Total) => Some(u128::from(*limit)),
            (Budget::PerDevice { ram, .. }, Device::Ram) => bytes(*ram),
            (Budget::PerDevice { vram, .. }, Device::Gpu(g)) => bytes(vram.limit(g)),
            _ => unreachable!("device does not belong to budget"),
        }
    }

    /// Each device the check looks at, with the bytes `q` needs there.
    fn devices(budget: &Budget, q: &Placement) -> Vec<(Device, u128)> {
        match budget {
            Budget::Unlimited => vec![],
            Budget::Combined { .. } => vec![(Device::Total, q.total())],
            Budget::PerDevice { .. } => std::iter::once((Device::Ram, u128::from(q.ram)))
                .chain(
                    q.vram
                        .iter()
                        .map(|(g, b)| (Device::Gpu(*g), u128::from(*b))),
                )
                .collect(),
        }
    }

    fn used_on(used: &Placement, device: Device) -> u128 {
        match device {
            Device::Total => used.total(),
            Device::Ram => u128::from(used.ram),
            Device::Gpu(g) => u128::from(used.gpu(g)),
        }
    }

    #[test]
    fn available_is_what_is_left_or_none_when_unbounded() {
        let budget = per_device(Limit::Bytes(10), &[(0, Limit::Bytes(5))]);
        let used = Placement::new(4, &[(0, 7)]);
        assert_eq!(available(&budget, &used, Device::Ram), Some(6));
        assert_eq!(available(&budget, &used, Device::Gpu(0)), Some(0));
        assert_eq!(available(&budget, &used, Device::Gpu(1)), None);
        let pool = Budget::Combined { limit: 20 };
        assert_eq!(available(&pool, &used, Device::Total), Some(9));
        assert_eq!(available(&Budget::Unlimited, &used, Device::Ram), None);
        let short = check(&budget, &Placement::new(9, &[]), &used).unwrap_err();
        assert_eq!(short.short_by(), 3);
    }

    #[test]
    fn room_is_what_the_used_devices_have_left_after_the_load() {
        let budget = per_device(
            Limit::Bytes(10),
            &[(0, Limit::Bytes(8)), (1, Limit::Bytes(9))],
        );
        let used = Placement::new(4, &[(0, 2)]);
        // RAM 10-4-3 plus GPU 0 8-2-1; GPU 1 holds nothing of the load.
        let load = Placement::new(3, &[(0, 1), (1, 0)]);
        assert_eq!(room(&budget, &load, &used), Ok(Some(3 + 5)));
        assert_eq!(
            room(&budget, &Placement::new(0, &[(2, 1)]), &used),
            Ok(None)
        );
        assert_eq!(room(&budget, &Placement::new(0, &[]), &used), Ok(Some(0)));
        let pool = Budget::Combined { limit: 20 };
        assert_eq!(room(&pool, &load, &used), Ok(Some(20 - 6 - 4)));
        assert_eq!(room(&Budget::Unlimited, &load, &used), Ok(None));
        let short = room(&budget, &Placement::new(7, &[]), &used).unwrap_err();
        assert_eq!(
            (short.device, short.required, short.available),
            (Device::Ram, 7, 6)
        );
    }

    proptest! {
        #[test]
        fn ok_means_every_device_is_within_its_limit(
            b in budget(), q in small_placement(), used in small_placement()
        ) {
            match check(&b, &q, &used) {
                Ok(()) => {
                    for (device, required) in devices(&b, &q) {
                        if let Some(limit) = limit_of(&b, device) {
                            let used_here = used_on(&used, device);
                            prop_assert!(required == 0 || used_here + required <= limit,
                                "{:?} over: used {} + required {} > {}", device, used_here, required, limit);
                        }
                    }
                }
                Err(e) => {
                    let limit = limit_of(&b, e.device).expect("an unbounded device was named");
                    let used_here = used_on(&used, e.device);
                    prop_assert!(used_here + u128::from(e.required) > limit);
                    prop_assert_eq!(u128::from(e.available), limit.saturating_sub(used_here));
                    let required = devices(&b, &q).into_iter().find(|d| d.0 == e.device).unwrap().1;
                    prop_assert_eq!(u128::from(e.required), required);
                }
            }
        }
    }
}
