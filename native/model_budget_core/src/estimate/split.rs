//! Exact integer apportionment of bytes over weighted GPUs. Vectors are
//! inline up to `INLINE_GPUS` GPUs: a placement allocates nothing.

use smallvec::SmallVec;

use crate::budget::gpu_map::{GpuMap, INLINE_GPUS};

/// Integer weights, one per GPU.
pub type Weights = SmallVec<[u128; INLINE_GPUS]>;

/// Bytes per GPU, one per weight.
pub type Shares = SmallVec<[u64; INLINE_GPUS]>;

/// Turns `:tensor_split` weights (finite, non-negative) into integers with
/// exactly the same proportions. An f64 is `m * 2^e`, so aligning the
/// exponents gives exact integers whenever the weights span at most 64 bits
/// of magnitude (any real split); beyond that the smallest are rounded, and a
/// positive weight never becomes zero.
pub fn integer_weights(weights: &[f64]) -> Weights {
    whole_weights(weights).unwrap_or_else(|| aligned_weights(weights))
}

/// Below this every integer is exactly an f64.
const EXACT_INTEGERS: f64 = (1u64 << 53) as f64;

/// `w` as an integer when it is a whole number below 2^53 (each exact in
/// an f64). The round trip through u64 tells, where `fract` would be a
/// library call on baseline x86-64.
fn whole(w: f64) -> Option<u64> {
    if !(0.0..EXACT_INTEGERS).contains(&w) {
        return None;
    }
    let n = w as u64;
    (n as f64 == w).then_some(n)
}

/// `integer_weights` of weights that are all whole numbers below 2^53 (the
/// usual `[3, 1]`), or `None`. Their exponents are their trailing zeros, so
/// aligning them is one shift by the smallest: the same integers as
/// `aligned_weights`, without taking each float apart.
fn whole_weights(weights: &[f64]) -> Option<Weights> {
    let mut ints = Weights::with_capacity(weights.len());
    let mut shift = u32::MAX;
    for &w in weights {
        let n = whole(w)?;
        if n > 0 {
            shift = shift.min(n.trailing_zeros());
        }
        ints.push(u128::from(n));
    }
    if shift != u32::MAX {
        for n in &mut ints {
            *n >>= shift;
        }
    }
    Some(ints)
}

/// `integer_weights` for any weights: each float taken apart into its
/// mantissa and exponent, the exponents aligned.
fn aligned_weights(weights: &[f64]) -> Weights {
    let parts: SmallVec<[Option<(u64, i32)>; INLINE_GPUS]> =
        weights.iter().map(|w| mantissa_exponent(*w)).collect();
    let top = parts
        .iter()
        .flatten()
        .map(|(m, e)| e + (64 - m.leading_zeros() as i32))
        .max();
    let low = parts.iter().flatten().map(|(_, e)| *e).min();
    let (Some(top), Some(low)) = (top, low) else {
        return smallvec::smallvec![0; weights.len()];
    };
    let base = low.max(top - 64);
    parts
        .iter()
        .map(|part| match *part {
            None => 0,
            Some((m, e)) if e >= base => u128::from(m) << (e - base),
            Some((m, e)) => {
                let shift = (base - e).min(127) as u32;
                let rounded = (u128::from(m) + (1u128 << (shift - 1))) >> shift;
                rounded.max(1)
            }
        })
        .collect()
}

/// `w` as `m * 2^e` with `m` odd, or `None` for zero (and anything not a
/// positive finite number, which callers have already refused).
pub(crate) fn mantissa_exponent(w: f64) -> Option<(u64, i32)> {
    if !(w.is_finite() && w > 0.0) {
        return None;
    }
    let bits = w.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    let (m, e) = if exponent == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), exponent - 1075)
    };
    let zeros = m.trailing_zeros();
    Some((m >> zeros, e + zeros as i32))
}

/// Splits `total` over `weights` by the largest-remainder method: each share
/// is `total * w / sum` rounded down, and the bytes left over go one each to
/// the largest remainders (ties to the lower index). The shares always sum to
/// `total` exactly. Returns all zeros when every weight is zero.
pub fn apportion(total: u64, weights: &[u128]) -> Shares {
    narrow_apportion(total, weights).unwrap_or_else(|| wide_apportion(total, weights))
}

/// `apportion` in u64 arithmetic, or `None` when a product `total * w` or
/// the sum of the weights does not fit in u64 (the usual split fits: bytes
/// below 2^40 and small weights).
fn narrow_apportion(total: u64, weights: &[u128]) -> Option<Shares> {
    let narrow: Shares = weights
        .iter()
        .map(|w| u64::try_from(*w).ok())
        .collect::<Option<_>>()?;
    let mut shares: Shares = smallvec::smallvec![0; weights.len()];
    let mut remainders: Shares = smallvec::smallvec![0; weights.len()];
    narrow_shares(total, &narrow, &mut shares, &mut remainders).then_some(shares)
}

/// The largest-remainder split of `total` over `weights` in u64
/// arithmetic, into `shares` (as long as `weights`; `remainders` is scratch
/// of that length): one hardware division per GPU instead of u128 library
/// calls, and the leftover bytes handed out by picking the largest
/// remainder each time instead of sorting. False, `shares` unspecified,
/// when the sum of the weights or a product `total * w` does not fit.
fn narrow_shares(total: u64, weights: &[u64], shares: &mut [u64], remainders: &mut [u64]) -> bool {
    let mut sum = 0u64;
    for &w in weights {
        match (sum.checked_add(w), total.checked_mul(w)) {
            (Some(s), Some(_)) => sum = s,
            _ => return false,
        }
    }
    if sum == 0 {
        shares.fill(0);
        return true;
    }
    let mut given = 0u64;
    for ((&w, share), remainder) in weights.iter().zip(&mut *shares).zip(&mut *remainders) {
        // Checked above: `total * w` fits; each share is at most `total`.
        let scaled = total * w;
        (*share, *remainder) = (scaled / sum, scaled % sum);
        given += *share;
    }
    // The remainders sum to `left * sum`, each below `sum`: more than
    // `left` of them are positive, so a remainder set to zero once taken is
    // never the largest again. `>` keeps the first of equals: the lower
    // index wins ties.
    for _ in 0..total - given {
        let mut best = 0;
        for (i, r) in remainders.iter().enumerate() {
            if *r > remainders[best] {
                best = i;
            }
        }
        shares[best] += 1;
        remainders[best] = 0;
    }
    true
}

/// The integer weights of `n_gpus` GPUs under a checked `:tensor_split`:
/// equal when the split is empty, missing entries zero (as in llama.cpp).
pub fn split_weights(split: &[f64], n_gpus: u32) -> Weights {
    let mut weights = if split.is_empty() {
        smallvec::smallvec![1; n_gpus as usize]
    } else {
        integer_weights(split)
    };
    weights.resize(n_gpus as usize, 0);
    weights
}

/// `apportion(total, &split_weights(split, n_gpus))`, each GPU given
/// something appended to `out` in index order. `distribute/3`'s split: for
/// up to `INLINE_GPUS` GPUs with whole weights it runs on stack arrays, in
/// u64 (see `narrow_split`).
pub fn split_into(total: u64, split: &[f64], n_gpus: u32, out: &mut GpuMap<u64>) {
    let n = n_gpus as usize;
    let mut shares = [0u64; INLINE_GPUS];
    if narrow_split(total, split, n, &mut shares) {
        for (gpu, &share) in shares[..n].iter().enumerate() {
            if share > 0 {
                // gpu < INLINE_GPUS.
                out.insert(gpu as u32, share);
            }
        }
        return;
    }
    for (gpu, share) in apportion(total, &split_weights(split, n_gpus))
        .into_iter()
        .enumerate()
    {
        if share > 0 {
            // gpu < n_gpus, a u32.
            out.insert(gpu as u32, share);
        }
    }
}

/// `split_into`'s shares for `n` GPUs, up to `INLINE_GPUS`, whose weights
/// are whole numbers below 2^53 whose products with `total` fit in u64:
/// the weights as they are (a split's shares do not change when every
/// weight is scaled alike, so `integer_weights`' reduction is not needed).
/// False where it does not apply.
fn narrow_split(total: u64, split: &[f64], n: usize, shares: &mut [u64; INLINE_GPUS]) -> bool {
    if n > INLINE_GPUS || split.len() > n {
        return false;
    }
    let mut weights = [0u64; INLINE_GPUS];
    if split.is_empty() {
        weights[..n].fill(1);
    }
    for (slot, &w) in weights.iter_mut().zip(split) {
        let Some(n) = whole(w) else {
            return false;
        };
        *slot = n;
    }
    let mut remainders = [0u64; INLINE_GPUS];
    narrow_shares(total, &weights[..n], &mut shares[..n], &mut remainders[..n])
}

/// `apportion` in u128 arithmetic, for any weights.
fn wide_apportion(total: u64, weights: &[u128]) -> Shares {
    let sum: u128 = weights.iter().sum();
    if sum == 0 {
        return smallvec::smallvec![0; weights.len()];
    }
    let total = u128::from(total);
    let mut shares = Shares::with_capacity(weights.len());
    let mut remainders: SmallVec<[(u128, usize); INLINE_GPUS]> =
        SmallVec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        // total < 2^64 and w <= 2^64, so the product fits in u128; each
        // share is at most `total`, which came from a u64.
        let scaled = total * w;
        let share = scaled / sum;
        shares.push(share as u64);
        remainders.push((scaled - share * sum, i));
    }
    let given: u128 = shares.iter().map(|s| u128::from(*s)).sum();
    let left = (total - given) as usize;
    if left == 0 {
        return shares;
    }
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take(left) {
        shares[i] += 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equal_weights_split_evenly_with_leftovers_to_the_first() {
        assert_eq!(apportion(10, &[1, 1, 1]).to_vec(), vec![4, 3, 3]);
        assert_eq!(apportion(9, &[1, 1, 1]).to_vec(), vec![3, 3, 3]);
    }

    #[test]
    fn largest_remainder_wins_the_leftover() {
        // 3:1 of 10 is 7.5 and 2.5; the tie goes to GPU 0.
        assert_eq!(apportion(10, &[3, 1]).to_vec(), vec![8, 2]);
        // 1:2 of 10 is 3.33 and 6.67.
        assert_eq!(apportion(10, &[1, 2]).to_vec(), vec![3, 7]);
    }

    #[test]
    fn zero_weights_get_nothing() {
        assert_eq!(
            apportion(u64::MAX, &[0, 1, 0]).to_vec(),
            vec![0, u64::MAX, 0]
        );
        assert_eq!(apportion(5, &[0, 0]).to_vec(), vec![0, 0]);
    }

    #[test]
    fn float_weights_keep_their_proportions() {
        assert_eq!(integer_weights(&[0.75, 0.25, 0.0]).to_vec(), vec![3, 1, 0]);
        assert_eq!(integer_weights(&[3.0, 1.0]).to_vec(), vec![3, 1]);
        assert_eq!(integer_weights(&[24.0, 48.0]).to_vec(), vec![3, 6]);
        let tenths = integer_weights(&[0.1, 0.2]);
        assert_eq!(tenths[1], 2 * tenths[0]);
        assert_eq!(integer_weights(&[0.0, 0.0]).to_vec(), vec![0, 0]);
        // Beyond 64 bits of range the smallest weight rounds, but stays positive.
        assert_eq!(integer_weights(&[1e300, 1e-300])[1], 1);
    }

    proptest! {
        /// The fast path for whole weights gives exactly the general path's
        /// integers.
        #[test]
        fn whole_weights_agree_with_aligned_weights(
            weights in proptest::collection::vec(
                prop_oneof![Just(0u64), 1u64..100, 0u64..(1 << 53), (0u64..1000).prop_map(|n| n << 40)],
                0..20,
            ),
        ) {
            let floats: Vec<f64> = weights.iter().map(|n| *n as f64).collect();
            prop_assert_eq!(whole_weights(&floats), Some(aligned_weights(&floats)));
        }

        /// Weights that are not whole, or too large to be exact, take the
        /// general path.
        #[test]
        fn only_whole_weights_take_the_fast_path(
            whole in proptest::collection::vec(0u32..100, 0..8),
            odd in prop_oneof![0.5f64..1e6, Just(1e300), Just((1u64 << 53) as f64)],
        ) {
            let mut floats: Vec<f64> = whole.iter().map(|n| f64::from(*n)).collect();
            floats.push(odd);
            prop_assume!(odd.fract() != 0.0 || odd >= EXACT_INTEGERS);
            prop_assert_eq!(whole_weights(&floats), None);
        }

        /// The u64 path gives exactly the u128 path's shares wherever it
        /// applies, and declines where a product or the sum would not fit.
        #[test]
        fn narrow_apportion_agrees_with_wide_apportion(
            total in prop_oneof![any::<u64>(), 0u64..1 << 40, 0u64..100],
            weights in proptest::collection::vec(
                prop_oneof![Just(0u128), 0u128..10, 0u128..1 << 20, 0u128..1 << 64],
                0..20,
            ),
        ) {
            let sum: u128 = weights.iter().sum();
            let fits = sum <= u128::from(u64::MAX)
                && weights.iter().all(|w| u128::from(total) * w <= u128::from(u64::MAX));
            match narrow_apportion(total, &weights) {
                Some(shares) => {
                    prop_assert!(fits);
                    prop_assert_eq!(shares, wide_apportion(total, &weights));
                }
                None => prop_assert!(!fits),
            }
        }

        /// `distribute/3`'s split on the stack gives exactly the general
        /// path's shares, for whole and fractional weights alike.
        #[test]
        fn split_into_agrees_with_apportion(
            total in prop_oneof![any::<u64>(), 0u64..1 << 40, 0u64..100],
            split in proptest::collection::vec(
                prop_oneof![Just(0.0f64), (0u32..10).prop_map(f64::from), 0.0f64..10.0, Just(1e20)],
                0..12,
            ),
            extra in 0u32..4,
        ) {
            prop_assume!(split.is_empty() || split.iter().any(|w| *w > 0.0));
            let n_gpus = split.len() as u32 + extra;
            let mut ours = GpuMap::new();
            split_into(total, &split, n_gpus, &mut ours);
            let general: GpuMap<u64> = apportion(total, &split_weights(&split, n_gpus))
                .into_iter()
                .enumerate()
                .filter(|(_, share)| *share > 0)
                .map(|(gpu, share)| (gpu as u32, share))
                .collect();
            prop_assert_eq!(ours, general);
        }

        #[test]
        fn a_split_never_loses_or_invents_bytes(
            total in any::<u64>(),
            weights in proptest::collection::vec(0.0f64..1e6, 1..16),
        ) {
            let w = integer_weights(&weights);
            let shares = apportion(total, &w);
            let sum: u128 = shares.iter().map(|s| u128::from(*s)).sum();
            if w.iter().any(|x| *x > 0) {
                prop_assert_eq!(sum, u128::from(total));
            } else {
                prop_assert_eq!(sum, 0);
            }
            for (share, weight) in shares.iter().zip(&w) {
                if *weight == 0 { prop_assert_eq!(*share, 0); }
            }
        }

        #[test]
        fn shares_are_within_one_byte_of_exact(
            total in any::<u64>(),
            weights in proptest::collection::vec(0u128..1000, 1..16),
        ) {
            let sum: u128 = weights.iter().sum();
            prop_assume!(sum > 0);
            for (share, w) in apportion(total, &weights).iter().zip(&weights) {
                let exact_floor = u128::from(total) * w / sum;
                prop_assert!(u128::from(*share) == exact_floor || u128::from(*share) == exact_floor + 1);
            }
        }
    }
}
