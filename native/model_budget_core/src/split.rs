//! Exact integer apportionment of bytes over weighted GPUs. Vectors are
//! inline up to `INLINE_GPUS` GPUs: a placement allocates nothing.

use smallvec::SmallVec;

use crate::gpu_map::INLINE_GPUS;

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
    let sum: u128 = weights.iter().sum();
    if sum == 0 {
        return smallvec::smallvec![0; weights.len()];
    }
    let total = u128::from(total);
    let mut shares = Shares::with_capacity(weights.len());
    let mut remainders: SmallVec<[(u128, usize); INLINE_GPUS]> =
        SmallVec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        // total < 2^64 and w <= 2^64, so the product fits in u128.
        let scaled = total * w;
        // Each share is at most `total`, which came from a u64. A u128
        // division is a library call; when both operands fit in u64 (small
        // weights), one hardware division gives quotient and remainder.
        let (share, remainder) = match (u64::try_from(scaled), u64::try_from(sum)) {
            (Ok(n), Ok(d)) => (u128::from(n / d), u128::from(n % d)),
            _ => {
                let share = scaled / sum;
                (share, scaled - share * sum)
            }
        };
        shares.push(share as u64);
        remainders.push((remainder, i));
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
