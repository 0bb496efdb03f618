//! One admission, decided in one step: given a manager's snapshot (the
//! budget, the usage, the loads waiting ahead), a placement and the whole
//! list of models it may evict (least recently used first), which models
//! go ([`crate::budget::evict`]'s walk), what each still counts while its
//! unload runs ([`crate::budget::handover`]), and the usage afterwards.
//!
//! The candidates are an iterator, pulled only as far as the walk reaches:
//! a NIF decodes a candidate only when the walk needs it, so a list of a
//! thousand idle models costs what the few it evicts cost. A manager that
//! has not listed them (listing reads every model's last use) passes
//! `None`: a placement that needs no room is admitted all the same, and
//! one that does is answered [`Answer::Unlisted`].

use crate::budget::check::Insufficient;
use crate::budget::constraint::Constraint;
use crate::budget::evict::{self, Choice, Eviction, Pulled, Snapshot};
use crate::budget::handover;
use crate::budget::placement::Placement;
use crate::error::Result;

/// What the admitted placement does with the memory of the models evicted
/// for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A load takes their memory over: each evicted model counts only what
    /// it holds beyond the load's placement until its unload returns (the
    /// hand-over), and the placement joins the usage.
    Load,
    /// A fence only makes room: the evicted models count in full until
    /// their unloads return, and nothing joins the usage.
    Fence,
}

/// An admitted placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The evictions, in order (candidates by their index in the list).
    pub evictions: Vec<Eviction>,
    /// What each evicted model still counts, in eviction order: for a load,
    /// its share of the evicted bytes beyond the load's
    /// ([`handover::residuals`]); for a fence, its whole placement.
    pub residuals: Vec<Placement>,
    /// The usage afterwards (the loads ahead not included): the snapshot's
    /// usage less the evicted placements, plus the residuals, plus the
    /// placement for a load.
    pub usage: Placement,
}

/// What an admission answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Room, and what it takes.
    Admitted(Admission),
    /// Even with every candidate evicted a device stays short: the device
    /// `check` names against the usage and the loads ahead, as they stand.
    Short(Insufficient),
    /// The candidates were not listed and the placement needs room: list
    /// them and ask again.
    Unlisted,
}

/// The candidates of a slice, as [`admit`] takes them.
pub fn listed(candidates: &[Placement]) -> impl Iterator<Item = Result<Placement>> + '_ {
    candidates.iter().cloned().map(Ok)
}

/// Admits `placement` on top of `snapshot` and the loads waiting `ahead`
/// (counted as held, but not part of the usage answered): the evictions
/// [`evict::choose`] picks from `candidates` under `rules`, the residuals,
/// and the new usage. `candidates` is `None` when they are not listed (see
/// [`Answer::Unlisted`]).
///
/// Each candidate must be held in `snapshot.usage`; one that is not, or a
/// usage that would exceed 2^64 - 1 bytes on a device, is an error.
pub fn admit<I>(
    snapshot: &Snapshot,
    ahead: &[Placement],
    rules: Option<&Constraint>,
    placement: &Placement,
    candidates: Option<I>,
    intent: Intent,
) -> Result<Answer>
where
    I: IntoIterator<Item = Result<Placement>>,
{
    let listed = candidates.is_some();
    let mut counted;
    let walked = if ahead.is_empty() {
        snapshot
    } else {
        counted = snapshot.clone();
        for load in ahead {
            counted.usage.fold_in(load)?;
        }
        &counted
    };
    let mut pulled = Pulled::new(candidates.into_iter().flatten());
    let evictions = match evict::walk(walked, rules, placement, &mut pulled, !listed)? {
        None => return Ok(Answer::Unlisted),
        Some(Choice::Short(short)) => return Ok(Answer::Short(short)),
        Some(Choice::Room { evictions, .. }) => evictions,
    };
    let mut usage = snapshot.usage.clone();
    if evictions.is_empty() {
        // Nothing to hand over: the usage and the load, or the usage as it
        // stands for a fence.
        if intent == Intent::Load {
            usage.fold_in(placement)?;
        }
        return Ok(Answer::Admitted(Admission {
            evictions,
            residuals: Vec::new(),
            usage,
        }));
    }
    let evicted: Vec<Placement> = evictions
        .iter()
        .map(|e| pulled.seen()[e.candidate].clone())
        .collect();
    let residuals = match intent {
        Intent::Fence => evicted,
        Intent::Load => {
            let residuals = handover::residuals(&snapshot.budget, &evicted, placement)?;
            for (held, residual) in evicted.iter().zip(&residuals) {
                usage.release_from(held)?;
                usage.fold_in(residual)?;
            }
            usage.fold_in(placement)?;
            residuals
        }
    };
    Ok(Answer::Admitted(Admission {
        evictions,
        residuals,
        usage,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::check::{check, share, Device};
    use crate::budget::evict::{choose, needs, Reason, VARIABLES};
    use crate::budget::spec::Budget;
    use crate::budget::strategies::{budget, measures, small};
    use proptest::prelude::*;
    use std::cell::Cell;

    fn snapshot(budget: Budget, usage: Placement, resident_count: u64) -> Snapshot {
        Snapshot {
            budget,
            usage,
            resident_count,
            free: None,
        }
    }

    fn rules(expressions: &[&str]) -> Constraint {
        Constraint::compile(expressions, &VARIABLES).unwrap()
    }

    const UNLISTED: Option<std::iter::Empty<Result<Placement>>> = None;

    fn admitted(answer: Answer) -> Admission {
        match answer {
            Answer::Admitted(a) => a,
            other => panic!("expected an admission, got {other:?}"),
        }
    }

    #[test]
    fn a_load_that_fits_joins_the_usage_without_a_list() {
        let s = snapshot(Budget::Combined { limit: 1000 }, Placement::in_ram(400), 2);
        let p = Placement::in_ram(100);
        let got = admitted(admit(&s, &[], None, &p, UNLISTED, Intent::Load).unwrap());
        assert_eq!(
            got,
            Admission {
                evictions: vec![],
                residuals: vec![],
                usage: Placement::in_ram(500),
            }
        );
        let fence = admitted(admit(&s, &[], None, &p, UNLISTED, Intent::Fence).unwrap());
        assert_eq!(fence.usage, Placement::in_ram(400));
    }

    #[test]
    fn a_load_that_needs_room_asks_for_the_list_then_hands_over() {
        let s = snapshot(Budget::Combined { limit: 1000 }, Placement::in_ram(800), 2);
        let held = [Placement::in_ram(400), Placement::in_ram(400)];
        let p = Placement::in_ram(700);
        assert_eq!(
            admit(&s, &[], None, &p, UNLISTED, Intent::Load).unwrap(),
            Answer::Unlisted
        );
        let got = admitted(admit(&s, &[], None, &p, Some(listed(&held)), Intent::Load).unwrap());
        assert_eq!(
            got.evictions
                .iter()
                .map(|e| e.candidate)
                .collect::<Vec<_>>(),
            [0, 1]
        );
        // 800 evicted for 700: the first evicted model still counts 100.
        assert_eq!(
            got.residuals,
            [Placement::in_ram(100), Placement::empty()].to_vec()
        );
        assert_eq!(got.usage, Placement::in_ram(800));
        // A fence: both count in full, the usage is unchanged.
        let fence = admitted(admit(&s, &[], None, &p, Some(listed(&held)), Intent::Fence).unwrap());
        assert_eq!(fence.residuals, held.to_vec());
        assert_eq!(fence.usage, Placement::in_ram(800));
    }

    #[test]
    fn loads_ahead_count_as_held_but_stay_out_of_the_usage() {
        let s = snapshot(Budget::Combined { limit: 1000 }, Placement::in_ram(500), 1);
        let ahead = [Placement::in_ram(200)];
        let p = Placement::in_ram(300);
        let got = admitted(admit(&s, &ahead, None, &p, UNLISTED, Intent::Load).unwrap());
        assert_eq!(got.usage, Placement::in_ram(800));
        let short = admit(
            &s,
            &ahead,
            None,
            &Placement::in_ram(500),
            Some(listed(&[])),
            Intent::Load,
        );
        assert_eq!(
            short.unwrap(),
            Answer::Short(Insufficient {
                device: Device::Total,
                required: 500,
                available: 300
            })
        );
    }

    #[test]
    fn the_walk_pulls_only_the_candidates_it_reaches() {
        let s = snapshot(
            Budget::Combined { limit: 10_000 },
            Placement::in_ram(10_000),
            1000,
        );
        let pulled = Cell::new(0);
        let candidates = (0..1000).map(|_| {
            pulled.set(pulled.get() + 1);
            Ok(Placement::in_ram(10))
        });
        let r = rules(&["memory_required > available * 0.70"]);
        let got = admitted(
            admit(
                &s,
                &[],
                Some(&r),
                &Placement::in_ram(70),
                Some(candidates),
                Intent::Load,
            )
            .unwrap(),
        );
        // 70 > 0.7 * 90 after 9 evictions; 70 <= 0.7 * 100 after 10.
        assert_eq!(got.evictions.len(), 10);
        assert_eq!(pulled.get(), 10);
    }

    #[test]
    fn a_candidate_that_is_not_held_or_a_bad_list_is_an_error() {
        let s = snapshot(Budget::Combined { limit: 10 }, Placement::in_ram(10), 1);
        let p = Placement::in_ram(5);
        let not_held = [Placement::in_ram(50)];
        assert!(admit(&s, &[], None, &p, Some(listed(&not_held)), Intent::Load).is_err());
        let broken = std::iter::once(Err(crate::error::invalid("candidates", "broken")));
        assert!(admit(&s, &[], None, &p, Some(broken), Intent::Load).is_err());
    }

    fn folded(placements: &[Placement]) -> Placement {
        placements
            .iter()
            .try_fold(Placement::empty(), |u, p| u.fold(p))
            .unwrap()
    }

    proptest! {
        /// The admission is the chooser's walk plus the hand-over: the same
        /// evictions and refusals as `choose` over the usage with the loads
        /// ahead; each eviction was needed (its device needed room, for the
        /// reason given, and its model held bytes there); the new usage is
        /// the usage less the evicted placements plus the residuals and the
        /// load, counts on each measure the larger of the evicted bytes and
        /// the load's, and fits the budget whenever the usage did; unlisted,
        /// it answers the same or asks for the list exactly when `needs`
        /// says the placement needs room.
        #[test]
        fn admission_is_walk_then_hand_over(
            b in budget(4000),
            held in proptest::collection::vec(small(), 0..6),
            extra in small(),
            ahead in proptest::collection::vec(small(), 0..2),
            p in small(),
            rule in prop_oneof![
                Just(None),
                Just(Some("memory_required > available * 0.70")),
                Just(Some("used_percent > 50")),
                Just(Some("resident_count > 2")),
            ],
            fence in any::<bool>(),
        ) {
            let usage = held.iter().try_fold(extra.clone(), |u, h| u.fold(h)).unwrap();
            let s = snapshot(b.clone(), usage.clone(), held.len() as u64 + 1);
            let r = rule.map(|e| rules(&[e]));
            let intent = if fence { Intent::Fence } else { Intent::Load };
            let answer = admit(&s, &ahead, r.as_ref(), &p, Some(listed(&held)), intent).unwrap();

            let mut counted = s.clone();
            counted.usage = usage.fold(&folded(&ahead)).unwrap();
            let chosen = choose(&counted, r.as_ref(), &p, &held).unwrap();

            let unlisted = admit(&s, &ahead, r.as_ref(), &p, UNLISTED, intent).unwrap();
            if needs(&counted, r.as_ref(), &p).unwrap().is_some() {
                prop_assert_eq!(&unlisted, &Answer::Unlisted);
            } else {
                prop_assert_eq!(&unlisted, &answer);
            }

            let a = match (answer, chosen) {
                (Answer::Short(short), Choice::Short(theirs)) => {
                    prop_assert_eq!(short, theirs);
                    return Ok(());
                }
                (Answer::Admitted(a), Choice::Room { evictions, .. }) => {
                    prop_assert_eq!(&a.evictions, &evictions);
                    a
                }
                (ours, theirs) => {
                    prop_assert!(false, "admit {:?} against choose {:?}", ours, theirs);
                    unreachable!()
                }
            };

            // Every eviction was needed.
            let mut sim = counted.clone();
            for e in &a.evictions {
                let why = crate::budget::evict::need(&sim, r.as_ref(), &p, e.device).unwrap();
                prop_assert_eq!(why, Some(e.reason));
                prop_assert!(share(&held[e.candidate], e.device) > 0);
                sim.usage = sim.usage.release(&held[e.candidate]).unwrap();
                sim.resident_count -= 1;
            }
            prop_assert_eq!(check(&b, &p, &sim.usage), Ok(()));
            if r.is_none() && check(&b, &p, &counted.usage).is_ok() {
                prop_assert!(a.evictions.is_empty());
            }
            if let Some(e) = a.evictions.iter().find(|e| matches!(e.reason, Reason::DoesNotFit { .. })) {
                prop_assert!(check(&b, &p, &counted.usage).is_err(), "{:?}", e);
            }

            // The usage answered, and what the residuals count.
            let evicted: Vec<Placement> = a.evictions.iter().map(|e| held[e.candidate].clone()).collect();
            prop_assert_eq!(a.residuals.len(), evicted.len());
            let combined = matches!(b, Budget::Combined { .. });
            let kept = evicted.iter().try_fold(usage.clone(), |u, e| u.release(e)).unwrap();
            if fence {
                prop_assert_eq!(&a.residuals, &evicted);
                prop_assert_eq!(&a.usage, &usage);
            } else {
                let expected = kept.fold(&folded(&a.residuals)).unwrap().fold(&p).unwrap();
                prop_assert_eq!(&a.usage, &expected);
                for (res, e) in a.residuals.iter().zip(&evicted) {
                    prop_assert!(res.ram <= e.ram);
                    prop_assert!(res.vram.iter().all(|(g, bytes)| *bytes <= e.gpu(*g)));
                }
                let (m_new, m_kept, m_ev, m_p) = (
                    measures(combined, &a.usage),
                    measures(combined, &kept),
                    measures(combined, &folded(&evicted)),
                    measures(combined, &p),
                );
                for i in 0..m_new.len() {
                    prop_assert_eq!(m_new[i], m_kept[i] + m_ev[i].max(m_p[i]));
                }
            }
            let before = usage.fold(&folded(&ahead)).unwrap();
            if check(&b, &before, &Placement::empty()).is_ok() {
                let after = a.usage.fold(&folded(&ahead)).unwrap();
                prop_assert_eq!(check(&b, &after, &Placement::empty()), Ok(()));
            }
        }
    }
}
