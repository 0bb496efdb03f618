//! Proptest strategies for budgets and placements over three GPUs, and
//! the measures a budget compares, shared by the eviction, admission and
//! hand-over invariants.

use proptest::prelude::*;

use crate::budget::placement::Placement;
use crate::budget::spec::{Budget, Limit, VramLimits};

/// A placement of under 1,000 bytes per device, canonical.
pub fn small() -> impl Strategy<Value = Placement> {
    (
        0..1000u64,
        proptest::collection::btree_map(0u32..3, 0..1000u64, 0..3),
    )
        .prop_map(|(ram, vram)| {
            Placement {
                ram,
                vram: vram.into_iter().collect(),
            }
            .canonical()
        })
}

/// A device's limit below `max` bytes, or none.
pub fn limit(max: u64) -> impl Strategy<Value = Limit> {
    prop_oneof![Just(Limit::Infinity), (0..max).prop_map(Limit::Bytes)]
}

/// Any kind of budget: per device limits below `max`, one pool below twice
/// that.
pub fn budget(max: u64) -> impl Strategy<Value = Budget> {
    prop_oneof![
        Just(Budget::Unlimited),
        (1..2 * max).prop_map(|limit| Budget::Combined { limit }),
        (
            limit(max),
            proptest::collection::btree_map(0u32..3, limit(max), 0..3)
        )
            .prop_map(|(ram, vram)| Budget::PerDevice {
                ram,
                vram: VramLimits::PerGpu(vram.into_iter().collect()),
            }),
    ]
}

/// The measures a budget compares: the total for a combined budget, else
/// RAM and each of the three GPUs.
pub fn measures(combined: bool, p: &Placement) -> Vec<u128> {
    if combined {
        vec![p.total()]
    } else {
        std::iter::once(u128::from(p.ram))
            .chain((0..3).map(|g| u128::from(p.gpu(g))))
            .collect()
    }
}
