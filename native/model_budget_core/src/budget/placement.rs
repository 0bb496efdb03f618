//! Where a model's bytes sit: RAM plus VRAM per GPU index.
//!
//! A placement is kept canonical: a GPU holding zero bytes is absent, so two
//! placements that describe the same memory compare equal.

use crate::budget::gpu_map::{seek, GpuMap};
use crate::error::{invalid, Result};

/// Bytes in RAM and on each GPU (by CUDA index). Also used as a usage
/// accumulator: the fold of every resident placement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Placement {
    pub ram: u64,
    pub vram: GpuMap<u64>,
}

impl Placement {
    /// The empty usage: nothing anywhere.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A placement from RAM bytes and `(gpu, bytes)` pairs, canonical.
    pub fn new(ram: u64, vram: &[(u32, u64)]) -> Self {
        Placement {
            ram,
            vram: vram.iter().copied().collect(),
        }
        .canonical()
    }

    /// A placement with everything in RAM.
    pub fn in_ram(bytes: u64) -> Self {
        Placement {
            ram: bytes,
            vram: GpuMap::new(),
        }
    }

    /// Drops GPUs holding zero bytes.
    pub fn canonical(mut self) -> Self {
        self.vram.retain(|_, bytes| *bytes > 0);
        self
    }

    /// All bytes on every device. A u128 because the sum of many u64 can
    /// exceed u64.
    pub fn total(&self) -> u128 {
        self.vram
            .values()
            .fold(u128::from(self.ram), |acc, b| acc + u128::from(*b))
    }

    /// Bytes on one GPU (zero when absent).
    pub fn gpu(&self, index: u32) -> u64 {
        self.vram.get(&index).copied().unwrap_or(0)
    }

    /// Adds `other` into `self` device by device. Fails instead of wrapping.
    pub fn fold(&self, other: &Placement) -> Result<Placement> {
        let mut out = self.clone();
        out.fold_in(other)?;
        Ok(out)
    }

    /// [`Placement::fold`] in place, without copying `self`; on error `self`
    /// is unchanged.
    pub fn fold_in(&mut self, other: &Placement) -> Result<()> {
        // Both GPU maps are sorted: one walk through each.
        let mut held = self.vram.as_slice();
        let fits = self.ram.checked_add(other.ram).is_some()
            && other.vram.as_slice().iter().all(|&(gpu, bytes)| {
                let here = seek(&mut held, gpu).unwrap_or(0);
                here.checked_add(bytes).is_some()
            });
        if !fits {
            return Err(invalid(
                "placement",
                "folding it into the usage would exceed 18446744073709551615 bytes on one device",
            ));
        }
        self.ram += other.ram;
        let added = other.vram.as_slice().iter().filter(|(_, b)| *b > 0);
        self.vram
            .update_sorted(added.copied(), 0, |held, bytes| *held += bytes);
        Ok(())
    }

    /// Takes `other` out of `self`, the inverse of [`Placement::fold`].
    /// Releasing more than is held on any device is an error, never a
    /// negative or wrapped number.
    pub fn release(&self, other: &Placement) -> Result<Placement> {
        let mut out = self.clone();
        out.release_from(other)?;
        Ok(out)
    }

    /// [`Placement::release`] in place; on error `self` is unchanged.
    pub fn release_from(&mut self, other: &Placement) -> Result<()> {
        if other.ram > self.ram {
            return Err(invalid(
                "placement",
                format!(
                    "releases {} bytes of RAM but only {} are held",
                    other.ram, self.ram
                ),
            ));
        }
        let mut held = self.vram.as_slice();
        // Whether a GPU is emptied: only then is there a zero to drop.
        let mut emptied = false;
        for &(gpu, bytes) in other.vram.as_slice() {
            let here = seek(&mut held, gpu).unwrap_or(0);
            if bytes > here {
                return Err(invalid(
                    "placement",
                    format!("releases {bytes} bytes of GPU {gpu} but only {here} are held"),
                ));
            }
            emptied |= bytes == here;
        }
        self.ram -= other.ram;
        let taken = other.vram.as_slice().iter().filter(|(_, b)| *b > 0);
        self.vram
            .update_sorted(taken.copied(), 0, |held, bytes| *held -= bytes);
        if emptied {
            self.vram.retain(|_, b| *b > 0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fold_sums_ram_and_merges_gpus() {
        let used = Placement::new(10, &[(0, 5)]);
        let got = used.fold(&Placement::new(1, &[(0, 2), (3, 7)])).unwrap();
        assert_eq!(got, Placement::new(11, &[(0, 7), (3, 7)]));
    }

    #[test]
    fn fold_refuses_to_wrap() {
        let err = Placement::new(u64::MAX, &[])
            .fold(&Placement::new(1, &[]))
            .unwrap_err();
        assert!(err.to_string().contains("exceed"), "{err}");
        assert!(Placement::new(0, &[(1, u64::MAX)])
            .fold(&Placement::new(0, &[(1, 1)]))
            .is_err());
    }

    #[test]
    fn release_removes_gpus_that_reach_zero() {
        let used = Placement::new(10, &[(0, 5), (1, 4)]);
        assert_eq!(
            used.release(&Placement::new(10, &[(1, 4)])).unwrap(),
            Placement::new(0, &[(0, 5)])
        );
    }

    #[test]
    fn release_more_than_held_is_an_error() {
        let used = Placement::new(10, &[(0, 5)]);
        let err = used.release(&Placement::new(11, &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid placement: releases 11 bytes of RAM but only 10 are held"
        );
        assert!(used.release(&Placement::new(0, &[(2, 1)])).is_err());
        assert!(used.release(&Placement::new(0, &[(0, 6)])).is_err());
    }

    #[test]
    fn zero_entries_are_dropped() {
        assert_eq!(Placement::new(0, &[(0, 0)]).vram.len(), 0);
        assert_eq!(
            Placement::new(0, &[])
                .fold(&Placement::new(0, &[(2, 0)]))
                .unwrap(),
            Placement::empty()
        );
    }

    pub(crate) fn placement() -> impl Strategy<Value = Placement> {
        (
            0..u64::MAX / 4,
            proptest::collection::btree_map(0u32..8, 0..u64::MAX / 4, 0..4),
        )
            .prop_map(|(ram, vram)| {
                Placement {
                    ram,
                    vram: vram.into_iter().collect(),
                }
                .canonical()
            })
    }

    proptest! {
        #[test]
        fn release_undoes_fold(u in placement(), q in placement()) {
            prop_assert_eq!(u.fold(&q).unwrap().release(&q).unwrap(), u);
        }

        #[test]
        fn fold_is_commutative(a in placement(), b in placement()) {
            prop_assert_eq!(a.fold(&b).unwrap(), b.fold(&a).unwrap());
        }

        #[test]
        fn fold_is_associative(a in placement(), b in placement(), c in placement()) {
            prop_assert_eq!(
                a.fold(&b).unwrap().fold(&c).unwrap(),
                a.fold(&b.fold(&c).unwrap()).unwrap()
            );
        }

        #[test]
        fn fold_adds_totals(a in placement(), b in placement()) {
            prop_assert_eq!(a.fold(&b).unwrap().total(), a.total() + b.total());
        }
    }
}
