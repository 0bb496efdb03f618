//! Maps keyed by GPU index, kept sorted in a small inline vector.
//!
//! Placements, usages and budgets name a handful of GPUs; a `BTreeMap`
//! allocates for each of them, and the admission path builds several per
//! call. Up to [`INLINE_GPUS`] entries live inline (no allocation); more
//! spill to the heap. Iteration is in index order, like a `BTreeMap`.

use smallvec::SmallVec;

/// GPUs held without a heap allocation.
pub const INLINE_GPUS: usize = 8;

// The lookups are `#[inline]`: the budget calls make a few dozen per
// call, and a call to each costs more than the search.
/// A sorted map from GPU index to `V`, with the part of `BTreeMap`'s API
/// the crate uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GpuMap<V>(SmallVec<[(u32, V); INLINE_GPUS]>);

impl<V> GpuMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        GpuMap(SmallVec::new())
    }

    #[inline]
    fn position(&self, gpu: u32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&gpu, |(k, _)| *k)
    }

    /// Sets `gpu` to `value`, returning the value it replaced. Appending in
    /// index order (as decoders and splits do) costs no search.
    // Always inlined: decoders call it once per map entry, and LLVM keeps
    // it out of line otherwise (the call costs more than the append).
    #[inline(always)]
    pub fn insert(&mut self, gpu: u32, value: V) -> Option<V> {
        match self.0.last() {
            Some((last, _)) if *last >= gpu => self.insert_within(gpu, value),
            _ => {
                self.0.push((gpu, value));
                None
            }
        }
    }

    /// `insert` of a GPU not above the last one: kept out of line so that
    /// the append, which decoders make once per entry, inlines.
    #[inline(never)]
    fn insert_within(&mut self, gpu: u32, value: V) -> Option<V> {
        match self.position(gpu) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (gpu, value));
                None
            }
        }
    }

    /// The value of `gpu`, if present.
    #[inline]
    pub fn get(&self, gpu: &u32) -> Option<&V> {
        self.position(*gpu).ok().map(|i| &self.0[i].1)
    }

    /// The value of `gpu`, inserted as `default` when absent.
    #[inline]
    pub fn get_or_insert(&mut self, gpu: u32, default: V) -> &mut V {
        let i = match self.position(gpu) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (gpu, default));
                i
            }
        };
        &mut self.0[i].1
    }

    /// Keeps the entries for which `keep` answers true.
    pub fn retain(&mut self, mut keep: impl FnMut(&u32, &mut V) -> bool) {
        self.0.retain(|(k, v)| keep(k, v));
    }

    /// `(gpu, value)` pairs in index order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&u32, &V)> + ExactSizeIterator {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// GPU indices in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &u32> + ExactSizeIterator {
        self.0.iter().map(|(k, _)| k)
    }

    /// Values in index order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.0.iter().map(|(_, v)| v)
    }

    /// Removes every entry, keeping the storage.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries as a sorted slice.
    pub fn as_slice(&self) -> &[(u32, V)] {
        &self.0
    }

    /// Calls `update` on the value of each GPU of `entries` (in increasing
    /// index order), inserted as `default` first where absent: one walk
    /// through both, instead of a search per entry.
    pub fn update_sorted<W>(
        &mut self,
        entries: impl IntoIterator<Item = (u32, W)>,
        default: V,
        mut update: impl FnMut(&mut V, W),
    ) where
        V: Copy,
    {
        // The walk is over a plain slice, taken again only after an insert:
        // each index into the `SmallVec` itself asks whether it spilled.
        let mut i = 0;
        let mut slots: &mut [(u32, V)] = &mut self.0;
        for (gpu, w) in entries {
            while i < slots.len() && slots[i].0 < gpu {
                i += 1;
            }
            if i == slots.len() || slots[i].0 != gpu {
                self.0.insert(i, (gpu, default));
                slots = &mut self.0;
            }
            update(&mut slots[i].1, w);
            i += 1;
        }
    }
}

/// The value of `gpu` in a walk through sorted `entries`, which moves past
/// it and every smaller index: for looking up increasing indices in one
/// pass.
pub fn seek<V: Copy>(entries: &mut &[(u32, V)], gpu: u32) -> Option<V> {
    while let Some((&(index, value), rest)) = entries.split_first() {
        if index > gpu {
            return None;
        }
        *entries = rest;
        if index == gpu {
            return Some(value);
        }
    }
    None
}

/// Later pairs win, as when collecting into a `BTreeMap`.
impl<V> FromIterator<(u32, V)> for GpuMap<V> {
    fn from_iter<I: IntoIterator<Item = (u32, V)>>(iter: I) -> Self {
        let mut map = GpuMap::new();
        for (gpu, value) in iter {
            map.insert(gpu, value);
        }
        map
    }
}

impl<V, const N: usize> From<[(u32, V); N]> for GpuMap<V> {
    fn from(pairs: [(u32, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<V> IntoIterator for GpuMap<V> {
    type Item = (u32, V);
    type IntoIter = smallvec::IntoIter<[(u32, V); INLINE_GPUS]>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a, V> IntoIterator for &'a GpuMap<V> {
    type Item = (&'a u32, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (u32, V)>, fn(&(u32, V)) -> (&u32, &V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn keeps_index_order_whatever_the_insertion_order() {
        let map: GpuMap<u64> = [(3, 30), (0, 0), (2, 20), (0, 1)].into();
        assert_eq!(map.as_slice(), &[(0, 1), (2, 20), (3, 30)]);
        assert_eq!(map.get(&2), Some(&20));
        assert_eq!(map.get(&1), None);
    }

    proptest! {
        /// Every operation agrees with a `BTreeMap` given the same calls.
        #[test]
        fn behaves_like_a_btree_map(ops in proptest::collection::vec((0u32..20, 0u64..5, 0u8..3), 0..40)) {
            let mut ours = GpuMap::new();
            let mut theirs = BTreeMap::new();
            for (gpu, value, op) in ops {
                match op {
                    0 => prop_assert_eq!(ours.insert(gpu, value), theirs.insert(gpu, value)),
                    1 => {
                        *ours.get_or_insert(gpu, 0) += value;
                        *theirs.entry(gpu).or_insert(0) += value;
                    }
                    _ => {
                        ours.retain(|_, v| *v != value);
                        theirs.retain(|_, v| *v != value);
                    }
                }
                let pairs: Vec<(u32, u64)> = theirs.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(ours.as_slice(), pairs.as_slice());
            }
        }
    }
}
