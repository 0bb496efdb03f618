//! Choosing evictions: which resident models a manager unloads, least
//! recently used first, to make room for a placement under a budget and the
//! `:evict_when` rules. Pure: it simulates releases on a copy of the
//! snapshot. A manager's admission (the walk, the hand-over and the new
//! usage in one step) is [`crate::budget::admission`].
//!
//! (The what-if search of the CLI is `fit`; the CLI's report lives in
//! Elixir. This is the third of the things once all called "plan".)

use crate::budget::check::{check, limit, share, Device, Insufficient};
use crate::budget::constraint::Constraint;
use crate::budget::gpu_map::GpuMap;
use crate::budget::placement::Placement;
use crate::budget::spec::{Budget, Limit};
use crate::error::{invalid, Result};
use std::borrow::Cow;

/// The variables `:evict_when` rules may read, in the order a rules
/// constraint must declare them.
pub const VARIABLES: [&str; 9] = [
    "memory_required",
    "available",
    "total",
    "used",
    "used_percent",
    "free",
    "model_size",
    "resident_count",
    "resident_bytes",
];

const FREE: usize = 5;

/// Live free bytes per device, for rules that read `free`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Free {
    pub total: u64,
    pub ram: u64,
    pub gpus: GpuMap<u64>,
}

impl Free {
    /// Free bytes as a probe reads them: RAM's available bytes and each
    /// GPU's free bytes; the combined pool has their sum.
    pub fn probed(ram: u64, gpus: GpuMap<u64>) -> Free {
        let total = gpus.values().fold(ram, |acc, b| acc.saturating_add(*b));
        Free { total, ram, gpus }
    }

    /// The free bytes on `device` (0 on a GPU the probe did not see).
    pub fn on(&self, device: Device) -> u64 {
        match device {
            Device::Total => self.total,
            Device::Ram => self.ram,
            Device::Gpu(g) => self.gpus.get(&g).copied().unwrap_or(0),
        }
    }

    /// `held` is released: its bytes count as free again.
    fn add(&mut self, held: &Placement) {
        self.total = self.total.saturating_add(clamp(held.total()));
        self.ram = self.ram.saturating_add(held.ram);
        for (gpu, bytes) in held.vram.iter() {
            let slot = self.gpus.get_or_insert(*gpu, 0);
            *slot = slot.saturating_add(*bytes);
        }
    }
}

/// What a manager holds at one instant, as the chooser reads it: the
/// budget and the usage, the resident count and the probe's free bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub budget: Budget,
    /// What is held or reserved, folded.
    pub usage: Placement,
    /// How many models are resident.
    pub resident_count: u64,
    /// Live free bytes per device, when rules read `free`.
    pub free: Option<Free>,
}

/// The former name of [`Snapshot`].
#[deprecated(note = "renamed Snapshot")]
pub type Ledger = Snapshot;

/// Why a model is evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The rules hold on the device.
    Constraint,
    /// The placement needs `required` bytes there and only `available` are left.
    DoesNotFit { required: u64, available: u64 },
}

/// One eviction: the candidate (its index in the list given), and the
/// device and reason it goes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eviction {
    pub candidate: usize,
    pub device: Device,
    pub reason: Reason,
}

/// The answer: room (the evictions in order, and the usage once they are
/// released, the new placement not added), or the device that stays short
/// even with every candidate evicted, as `check` names it against the
/// snapshot as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Room {
        evictions: Vec<Eviction>,
        usage: Placement,
    },
    Short(Insufficient),
}

/// The devices `placement` touches, in the order they are planned: `Total`
/// for a combined budget, else RAM and then each GPU by index, where the
/// placement puts bytes.
pub fn devices(budget: &Budget, placement: &Placement) -> Vec<Device> {
    if let Budget::Combined { .. } = budget {
        return if placement.total() > 0 {
            vec![Device::Total]
        } else {
            vec![]
        };
    }
    let ram = (placement.ram > 0).then_some(Device::Ram);
    ram.into_iter()
        .chain(
            placement
                .vram
                .iter()
                .filter(|(_, b)| **b > 0)
                .map(|(g, _)| Device::Gpu(*g)),
        )
        .collect()
}

fn clamp(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The variables' values (in [`VARIABLES`] order) on `device` for a load of
/// `placement`. Each is an integer from 0 to 2^64 - 1: an unbounded device's
/// `total` is 2^64 - 1, the rule language's "unbounded"; `free` is 0 when
/// the snapshot carries none.
pub fn values(ledger: &Snapshot, placement: &Placement, device: Device) -> [u64; 9] {
    let used = share(&ledger.usage, device);
    let total = match limit(&ledger.budget, device) {
        Limit::Bytes(b) => b,
        Limit::Infinity => u64::MAX,
    };
    let used_percent = if total == 0 {
        100
    } else {
        clamp(u128::from(used) * 100 / u128::from(total))
    };
    [
        share(placement, device),
        total.saturating_sub(used),
        total,
        used,
        used_percent,
        ledger.free.as_ref().map_or(0, |f| f.on(device)),
        clamp(placement.total()),
        ledger.resident_count,
        clamp(ledger.usage.total()),
    ]
}

/// Why `device` still needs room, or `None`.
pub(crate) fn need(
    ledger: &Snapshot,
    rules: Option<&Constraint>,
    placement: &Placement,
    device: Device,
) -> Result<Option<Reason>> {
    let v = values(ledger, placement, device);
    let bounded = limit(&ledger.budget, device) != Limit::Infinity;
    if bounded && v[0] > v[1] {
        return Ok(Some(Reason::DoesNotFit {
            required: v[0],
            available: v[1],
        }));
    }
    let Some(rules) = rules else { return Ok(None) };
    let slots = v.map(i128::from);
    Ok(rules.met(&slots)?.then_some(Reason::Constraint))
}

/// Checks that `rules` were compiled over [`VARIABLES`], in order.
pub fn check_rules(rules: &Constraint) -> Result<()> {
    if rules.variables().iter().map(String::as_str).eq(VARIABLES) {
        Ok(())
    } else {
        Err(invalid(
            "rules",
            format!(
                "expected a constraint over the eviction variables {VARIABLES:?}, got one over {:?}",
                rules.variables()
            ),
        ))
    }
}

/// Whether `placement` needs room: the first device it touches
/// ([`devices`]) where it does not fit or the rules hold, and why; `None`
/// when it fits everywhere and the rules hold nowhere, so that [`choose`]
/// would evict nothing whatever the candidates, and a manager need not list
/// them.
pub fn needs(
    ledger: &Snapshot,
    rules: Option<&Constraint>,
    placement: &Placement,
) -> Result<Option<(Device, Reason)>> {
    if let Some(rules) = rules {
        check_rules(rules)?;
    }
    for device in devices(&ledger.budget, placement) {
        if let Some(why) = need(ledger, rules, placement, device)? {
            return Ok(Some((device, why)));
        }
    }
    Ok(None)
}

/// Chooses evictions for `placement`: for each device it touches
/// ([`devices`]), while the load does not fit there or the rules hold, the
/// next of `candidates` (least recently used first) that holds bytes on the
/// device is released in the simulation, and the device is measured again;
/// stop as soon as the load fits and the rules do not hold. Rules that still
/// hold once no candidate is left do not refuse a load that fits.
///
/// Each candidate must be held in `ledger.usage` (their placements folded
/// are at most the usage); releasing one that is not is an error.
pub fn choose(
    ledger: &Snapshot,
    rules: Option<&Constraint>,
    placement: &Placement,
    candidates: &[Placement],
) -> Result<Choice> {
    let choice = choose_from(ledger, rules, placement, candidates, false)?;
    Ok(choice.expect("a walk with no more candidates always answers"))
}

/// [`choose`] over the first candidates of a longer list, so that a caller
/// can pass them a few at a time: `None` when `more` candidates follow and
/// a device still needs room once these are walked (the answer needs more
/// of them); otherwise the answer [`choose`] gives over the whole list.
pub fn choose_from(
    ledger: &Snapshot,
    rules: Option<&Constraint>,
    placement: &Placement,
    candidates: &[Placement],
    more: bool,
) -> Result<Option<Choice>> {
    let mut pulled = Pulled::new(candidates.iter().cloned().map(Ok));
    walk(ledger, rules, placement, &mut pulled, more)
}

/// Candidates pulled from an iterator as a walk reaches them: each is taken
/// (decoded, for a NIF) once, when the walk first needs it, and kept; what
/// the walk never reaches is never taken.
pub(crate) struct Pulled<I> {
    iter: I,
    seen: Vec<Placement>,
    done: bool,
}

impl<I: Iterator<Item = Result<Placement>>> Pulled<I> {
    pub(crate) fn new(iter: I) -> Self {
        Pulled {
            iter,
            seen: Vec::new(),
            done: false,
        }
    }

    /// The candidate at `i`, pulling up to it; `None` past the last.
    fn get(&mut self, i: usize) -> Result<Option<&Placement>> {
        while self.seen.len() <= i && !self.done {
            match self.iter.next() {
                Some(held) => self.seen.push(held?),
                None => self.done = true,
            }
        }
        Ok(self.seen.get(i))
    }

    /// The candidates pulled so far, in order.
    pub(crate) fn seen(&self) -> &[Placement] {
        &self.seen
    }
}

/// The walk behind [`choose_from`], over candidates pulled as it needs them.
pub(crate) fn walk<I: Iterator<Item = Result<Placement>>>(
    ledger: &Snapshot,
    rules: Option<&Constraint>,
    placement: &Placement,
    candidates: &mut Pulled<I>,
    more: bool,
) -> Result<Option<Choice>> {
    if let Some(rules) = rules {
        check_rules(rules)?;
    }
    let needs_free = rules.is_some_and(|r| r.used_variables().any(|i| i == FREE));
    // The simulation is copied from the snapshot at its first release: most
    // admissions release nothing.
    let mut sim = Cow::Borrowed(ledger);
    if !needs_free && ledger.free.is_some() {
        sim.to_mut().free = None;
    }
    let mut evicted: Vec<bool> = Vec::new();
    let mut evictions = Vec::new();
    for device in devices(&ledger.budget, placement) {
        let mut reason = need(&sim, rules, placement, device)?;
        let mut i = 0;
        while let Some(why) = reason {
            let Some(held) = candidates.get(i)? else {
                break;
            };
            if evicted.len() <= i {
                evicted.resize(i + 1, false);
            }
            if !evicted[i] && share(held, device) > 0 {
                let released = sim.to_mut();
                released.usage.release_from(held)?;
                released.resident_count = released.resident_count.saturating_sub(1);
                if let Some(free) = released.free.as_mut() {
                    free.add(held);
                }
                evicted[i] = true;
                evictions.push(Eviction {
                    candidate: i,
                    device,
                    reason: why,
                });
                reason = need(&sim, rules, placement, device)?;
            }
            i += 1;
        }
        if reason.is_some() && more {
            return Ok(None);
        }
        if let Some(Reason::DoesNotFit {
            required,
            available,
        }) = reason
        {
            let short = check(&ledger.budget, placement, &ledger.usage)
                .err()
                .unwrap_or(Insufficient {
                    device,
                    required,
                    available,
                });
            return Ok(Some(Choice::Short(short)));
        }
    }
    Ok(Some(Choice::Room {
        evictions,
        usage: sim.into_owned().usage,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::spec::VramLimits;
    use crate::budget::strategies::{budget, small};
    use proptest::prelude::*;

    fn ledger(budget: Budget, usage: Placement) -> Snapshot {
        Snapshot {
            budget,
            usage,
            resident_count: 3,
            free: None,
        }
    }

    fn rules(expressions: &[&str]) -> Constraint {
        Constraint::compile(expressions, &VARIABLES).unwrap()
    }

    #[test]
    fn evicts_the_least_recently_used_until_it_fits() {
        let l = ledger(Budget::Combined { limit: 1000 }, Placement::in_ram(900));
        let held = vec![Placement::in_ram(300); 3];
        let got = choose(&l, None, &Placement::in_ram(200), &held).unwrap();
        assert_eq!(
            got,
            Choice::Room {
                evictions: vec![Eviction {
                    candidate: 0,
                    device: Device::Total,
                    reason: Reason::DoesNotFit {
                        required: 200,
                        available: 100
                    }
                }],
                usage: Placement::in_ram(600),
            }
        );
    }

    #[test]
    fn a_load_that_cannot_fit_evicts_nothing_and_names_the_device() {
        let l = ledger(Budget::Combined { limit: 1000 }, Placement::in_ram(900));
        let got = choose(&l, None, &Placement::in_ram(200), &[]).unwrap();
        assert_eq!(
            got,
            Choice::Short(Insufficient {
                device: Device::Total,
                required: 200,
                available: 100
            })
        );
    }

    #[test]
    fn only_candidates_holding_bytes_on_the_short_device_go() {
        let budget = Budget::PerDevice {
            ram: Limit::Infinity,
            vram: VramLimits::PerGpu([(0, Limit::Bytes(10)), (1, Limit::Bytes(10))].into()),
        };
        let held = vec![Placement::new(5, &[(1, 5)]), Placement::new(0, &[(0, 8)])];
        let l = ledger(budget, Placement::new(5, &[(0, 8), (1, 5)]));
        let Choice::Room { evictions, usage } =
            choose(&l, None, &Placement::new(0, &[(0, 5)]), &held).unwrap()
        else {
            panic!("expected room");
        };
        assert_eq!(evictions.len(), 1);
        assert_eq!(evictions[0].candidate, 1);
        assert_eq!(usage, Placement::new(5, &[(1, 5)]));
    }

    #[test]
    fn rules_evict_beyond_the_fit_but_never_refuse_a_fit() {
        let l = ledger(Budget::Combined { limit: 1000 }, Placement::in_ram(600));
        let held = vec![Placement::in_ram(300); 2];
        let r = rules(&["memory_required > available * 0.70"]);
        // 200 > 400 * 0.7 is false: nothing to do.
        let got = choose(&l, Some(&r), &Placement::in_ram(200), &held).unwrap();
        assert!(matches!(got, Choice::Room { ref evictions, .. } if evictions.is_empty()));
        // 300 > 280: the rule holds, one eviction; then 300 > 490 is false.
        let Choice::Room { evictions, .. } =
            choose(&l, Some(&r), &Placement::in_ram(300), &held).unwrap()
        else {
            panic!("expected room");
        };
        assert_eq!(evictions[0].reason, Reason::Constraint);
        assert_eq!(evictions.len(), 1);
        // A rule that always holds evicts everything, then admits the fit.
        let always = rules(&["used >= 0"]);
        let Choice::Room { evictions, usage } =
            choose(&l, Some(&always), &Placement::in_ram(1), &held).unwrap()
        else {
            panic!("expected room");
        };
        assert_eq!((evictions.len(), usage), (2, Placement::empty()));
    }

    #[test]
    fn free_counts_released_bytes() {
        let mut l = ledger(Budget::Unlimited, Placement::in_ram(600));
        l.free = Some(Free {
            total: 0,
            ram: 100,
            gpus: GpuMap::new(),
        });
        let held = vec![Placement::in_ram(300); 2];
        let r = rules(&["free < 350"]);
        let Choice::Room { evictions, .. } =
            choose(&l, Some(&r), &Placement::in_ram(1), &held).unwrap()
        else {
            panic!("expected room");
        };
        assert_eq!(evictions.len(), 1);
    }

    #[test]
    fn rules_over_other_variables_are_refused() {
        let r = Constraint::compile(&["x > 1"], &["x"]).unwrap();
        let l = ledger(Budget::Unlimited, Placement::empty());
        assert!(choose(&l, Some(&r), &Placement::in_ram(1), &[]).is_err());
    }

    #[test]
    fn unbounded_devices_measure_2_pow_64_minus_1() {
        let l = ledger(Budget::Unlimited, Placement::in_ram(5));
        let v = values(&l, &Placement::in_ram(1), Device::Ram);
        assert_eq!((v[1], v[2], v[3]), (u64::MAX - 5, u64::MAX, 5));
    }

    proptest! {
        /// With rules, `needs` is `None` exactly when the chooser, given
        /// every candidate, has nothing to do: no eviction, the usage as it
        /// stands.
        #[test]
        fn needs_none_means_nothing_to_evict(
            b in budget(3000),
            held in proptest::collection::vec(small(), 0..5),
            extra in small(),
            p in small(),
            rule in prop_oneof![
                Just("memory_required > available * 0.70"),
                Just("used_percent > 50"),
                Just("resident_count > 2"),
            ],
        ) {
            let usage = held.iter().try_fold(extra.clone(), |u, h| u.fold(h)).unwrap();
            let l = ledger(b, usage.clone());
            let r = rules(&[rule]);
            let need = needs(&l, Some(&r), &p).unwrap();
            let choice = choose(&l, Some(&r), &p, &held).unwrap();
            if need.is_none() {
                prop_assert_eq!(choice, Choice::Room { evictions: vec![], usage });
            } else if let (Some((device, _)), Choice::Room { evictions, .. }) = (need, &choice) {
                // The first device that needs room evicts its first candidate there.
                let any_there = held.iter().any(|h| share(h, device) > 0);
                prop_assert!(!any_there || !evictions.is_empty());
            }
        }
    }

    proptest! {
        /// Walking the candidates a few at a time, as long as the answer
        /// asks for more, gives the answer over the whole list.
        #[test]
        fn a_prefix_answers_as_the_whole_list(
            b in budget(3000),
            held in proptest::collection::vec(small(), 0..6),
            extra in small(),
            p in small(),
            step in 1..4usize,
            rule in prop_oneof![Just(None), Just(Some("used_percent > 30")), Just(Some("resident_count > 1"))],
        ) {
            let usage = held.iter().try_fold(extra.clone(), |u, h| u.fold(h)).unwrap();
            let l = ledger(b, usage);
            let r = rule.map(|e| rules(&[e]));
            let whole = choose(&l, r.as_ref(), &p, &held).unwrap();
            let mut n = 0;
            let chunked = loop {
                n = (n + step).min(held.len());
                let more = n < held.len();
                if let Some(choice) = choose_from(&l, r.as_ref(), &p, &held[..n], more).unwrap() {
                    break choice;
                }
            };
            prop_assert_eq!(chunked, whole);
        }
    }

    proptest! {
        /// Without rules the chooser and a plain check agree: room means the
        /// placement fits the usage left; short means it fits nowhere even
        /// with every candidate gone, and names what `check` names; and no
        /// eviction happens when the placement already fits.
        #[test]
        fn choose_and_check_agree(
            b in budget(3000),
            held in proptest::collection::vec(small(), 0..5),
            extra in small(),
            p in small(),
        ) {
            let usage = held.iter().try_fold(extra.clone(), |u, h| u.fold(h)).unwrap();
            let l = ledger(b.clone(), usage.clone());
            match choose(&l, None, &p, &held).unwrap() {
                Choice::Room { evictions, usage: left } => {
                    prop_assert_eq!(needs(&l, None, &p).unwrap().is_none(), check(&b, &p, &usage).is_ok());
                    prop_assert_eq!(check(&b, &p, &left), Ok(()));
                    if check(&b, &p, &usage).is_ok() {
                        prop_assert!(evictions.is_empty());
                    }
                    let released = evictions
                        .iter()
                        .try_fold(usage.clone(), |u, e| u.release(&held[e.candidate]))
                        .unwrap();
                    prop_assert_eq!(released, left);
                }
                Choice::Short(short) => {
                    let short_somewhere = matches!(
                        needs(&l, None, &p).unwrap(),
                        Some((_, Reason::DoesNotFit { .. }))
                    );
                    prop_assert!(short_somewhere);
                    prop_assert_eq!(Err(short), check(&b, &p, &usage));
                    let none_left = held.iter().try_fold(usage.clone(), |u, h| u.release(h)).unwrap();
                    prop_assert!(check(&b, &p, &none_left).is_err());
                }
            }
        }
    }
}
