//! The hand-over: what models evicted for a load still count while their
//! unloads run and the load takes their memory over.
//!
//! The load's own backend load starts only once every evicted model's
//! unload has returned, so what backends really hold on a device is at most
//! the evicted models' bytes until then, and the load's afterwards. A
//! manager counts the larger of the two: the load's placement plus these
//! residuals, which add up to the evicted bytes beyond the load's (per
//! device, or in total for a combined budget).

use crate::budget::placement::Placement;
use crate::budget::spec::Budget;
use crate::error::Result;

/// What each evicted model (`evicted`, their placements in eviction order)
/// still counts while a load of `placement` takes their memory over. Each
/// residual is at most its model's placement and the earlier models take
/// the excess first, so a model's unload returning never leaves the count
/// below what the others still hold.
pub fn residuals(
    budget: &Budget,
    evicted: &[Placement],
    placement: &Placement,
) -> Result<Vec<Placement>> {
    if let Budget::Combined { .. } = budget {
        let held: u128 = evicted.iter().map(Placement::total).sum();
        let mut left = held.saturating_sub(placement.total());
        return Ok(evicted.iter().map(|e| take_bytes(e, &mut left)).collect());
    }
    let held = evicted
        .iter()
        .try_fold(Placement::empty(), |acc, e| acc.fold(e))?;
    let mut left = excess(&held, placement);
    Ok(evicted
        .iter()
        .map(|e| {
            let taken = take_each(e, &left);
            left = excess(&left, &taken);
            taken
        })
        .collect())
}

/// Up to `left` bytes of `held` in all, RAM first, then GPUs by index.
fn take_bytes(held: &Placement, left: &mut u128) -> Placement {
    let mut take = |bytes: u64| {
        let taken = u64::try_from((*left).min(u128::from(bytes))).unwrap_or(bytes);
        *left -= u128::from(taken);
        taken
    };
    let ram = take(held.ram);
    let vram = held.vram.iter().map(|(g, b)| (*g, take(*b))).collect();
    Placement { ram, vram }.canonical()
}

/// Up to `left`'s bytes of `held` on each device.
fn take_each(held: &Placement, left: &Placement) -> Placement {
    Placement {
        ram: held.ram.min(left.ram),
        vram: held
            .vram
            .iter()
            .map(|(g, b)| (*g, (*b).min(left.gpu(*g))))
            .collect(),
    }
    .canonical()
}

/// `a` less `b` on each device, never below 0.
fn excess(a: &Placement, b: &Placement) -> Placement {
    Placement {
        ram: a.ram.saturating_sub(b.ram),
        vram: a
            .vram
            .iter()
            .map(|(g, bytes)| (*g, bytes.saturating_sub(b.gpu(*g))))
            .collect(),
    }
    .canonical()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::strategies::measures;
    use proptest::prelude::*;

    #[test]
    fn the_excess_goes_to_the_first_evicted_models() {
        let evicted = [Placement::new(300, &[(0, 100)]), Placement::in_ram(300)];
        let load = Placement::in_ram(500);
        assert_eq!(
            residuals(&Budget::Unlimited, &evicted, &load).unwrap(),
            vec![Placement::new(100, &[(0, 100)]), Placement::empty()]
        );
        assert_eq!(
            residuals(&Budget::Combined { limit: 1000 }, &evicted, &load).unwrap(),
            vec![Placement::in_ram(200), Placement::empty()]
        );
        assert!(residuals(&Budget::Unlimited, &[], &load)
            .unwrap()
            .is_empty());
    }

    fn small() -> impl Strategy<Value = Placement> {
        (
            0..100u64,
            proptest::collection::btree_map(0u32..3, 1..100u64, 0..3),
        )
            .prop_map(|(ram, vram)| Placement {
                ram,
                vram: vram.into_iter().collect(),
            })
    }

    proptest! {
        /// The load plus the residuals count exactly the larger of the
        /// evicted bytes and the load's; whichever unloads have returned,
        /// what is counted covers what the others still hold.
        #[test]
        fn residuals_cover_what_is_still_held(
            evicted in proptest::collection::vec(small(), 1..5),
            load in small(),
            returned in proptest::collection::vec(any::<bool>(), 5),
        ) {
            for (budget, combined) in [(Budget::Combined { limit: 1 }, true), (Budget::Unlimited, false)] {
                let r = residuals(&budget, &evicted, &load).unwrap();
                prop_assert_eq!(r.len(), evicted.len());
                for (res, e) in r.iter().zip(&evicted) {
                    prop_assert!(res.ram <= e.ram);
                    prop_assert!(res.vram.iter().all(|(g, b)| *b > 0 && *b <= e.gpu(*g)));
                }
                let m = |p: &Placement| measures(combined, p);
                for i in 0..m(&load).len() {
                    let all: u128 = evicted.iter().map(|e| m(e)[i]).sum();
                    let counted: u128 = m(&load)[i] + r.iter().map(|x| m(x)[i]).sum::<u128>();
                    prop_assert_eq!(counted, all.max(m(&load)[i]));
                    let left = (0..evicted.len()).filter(|k| !returned[*k]);
                    let (held, still) = left.fold((0u128, m(&load)[i]), |(h, s), k| {
                        (h + m(&evicted[k])[i], s + m(&r[k])[i])
                    });
                    prop_assert!(held <= still);
                }
            }
        }
    }
}
