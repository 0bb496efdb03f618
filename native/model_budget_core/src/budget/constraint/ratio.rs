//! Exact rationals on checked `i128`: `0.70` is 7/10, `1.5GB` is 1500000000,
//! and an operation whose result does not fit reports `None` instead of
//! wrapping.

use std::cmp::Ordering;

/// `num / den` in lowest terms with `den > 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ratio {
    num: i128,
    den: i128,
}

impl Ratio {
    pub(crate) const ZERO: Ratio = Ratio { num: 0, den: 1 };

    pub(crate) fn int(n: i128) -> Ratio {
        Ratio { num: n, den: 1 }
    }

    /// `num / den` reduced; `None` when `den` is zero or a sign flip overflows.
    pub(crate) fn new(num: i128, den: i128) -> Option<Ratio> {
        if den == 0 {
            return None;
        }
        let (num, den) = if den < 0 {
            (num.checked_neg()?, den.checked_neg()?)
        } else {
            (num, den)
        };
        // den > 0, so the gcd is at most den and fits in i128.
        let g = gcd(num.unsigned_abs(), den.unsigned_abs()) as i128;
        Some(Ratio {
            num: num / g,
            den: den / g,
        })
    }

    pub(crate) fn is_zero(self) -> bool {
        self.num == 0
    }

    pub(crate) fn checked_add(self, other: Ratio) -> Option<Ratio> {
        if self.den == 1 && other.den == 1 {
            return Some(Ratio::int(self.num.checked_add(other.num)?));
        }
        // Over the lcm rather than the product of the denominators, so that
        // sums of like fractions (tenths, say) stay small.
        let g = gcd(self.den.unsigned_abs(), other.den.unsigned_abs()) as i128;
        let lcm = (self.den / g).checked_mul(other.den)?;
        let a = self.num.checked_mul(lcm / self.den)?;
        let b = other.num.checked_mul(lcm / other.den)?;
        Ratio::new(a.checked_add(b)?, lcm)
    }

    pub(crate) fn checked_neg(self) -> Option<Ratio> {
        Some(Ratio {
            num: self.num.checked_neg()?,
            den: self.den,
        })
    }

    pub(crate) fn checked_sub(self, other: Ratio) -> Option<Ratio> {
        self.checked_add(other.checked_neg()?)
    }

    pub(crate) fn checked_mul(self, other: Ratio) -> Option<Ratio> {
        if self.den == 1 && other.den == 1 {
            return Some(Ratio::int(self.num.checked_mul(other.num)?));
        }
        if self.num == 0 || other.num == 0 {
            return Some(Ratio::ZERO);
        }
        // Cross-reduce first so that the products are as small as they can be.
        let g1 = gcd(self.num.unsigned_abs(), other.den.unsigned_abs()) as i128;
        let g2 = gcd(other.num.unsigned_abs(), self.den.unsigned_abs()) as i128;
        let num = (self.num / g1).checked_mul(other.num / g2)?;
        let den = (self.den / g2).checked_mul(other.den / g1)?;
        Some(Ratio { num, den })
    }

    /// `None` for a zero divisor as for an overflow.
    pub(crate) fn checked_div(self, other: Ratio) -> Option<Ratio> {
        if other.num == 0 {
            return None;
        }
        let recip = Ratio::new(other.den, other.num)?;
        self.checked_mul(recip)
    }

    pub(crate) fn checked_abs(self) -> Option<Ratio> {
        Some(Ratio {
            num: self.num.checked_abs()?,
            den: self.den,
        })
    }

    /// The largest integer not above this value.
    pub(crate) fn floor(self) -> i128 {
        self.num.div_euclid(self.den)
    }

    /// Scales by `10^-places`, for decimal literals.
    pub(crate) fn decimal(digits: i128, places: u32) -> Option<Ratio> {
        Ratio::new(digits, 10i128.checked_pow(places)?)
    }
}

/// Exact for every pair, with no multiplication that could overflow: compares
/// the integer parts, then the fractional parts through their reciprocals
/// (the continued-fraction expansion).
impl Ord for Ratio {
    fn cmp(&self, other: &Ratio) -> Ordering {
        let (mut a, mut b, mut c, mut d) = (self.num, self.den, other.num, other.den);
        let mut flipped = false;
        loop {
            // b, d > 0 throughout, so div_euclid cannot overflow.
            let (qa, ra) = (a.div_euclid(b), a.rem_euclid(b));
            let (qc, rc) = (c.div_euclid(d), c.rem_euclid(d));
            let order = match (qa.cmp(&qc), ra == 0, rc == 0) {
                (Ordering::Equal, true, true) => Ordering::Equal,
                (Ordering::Equal, true, false) => Ordering::Less,
                (Ordering::Equal, false, true) => Ordering::Greater,
                (Ordering::Equal, false, false) => {
                    // ra/b < rc/d  <=>  b/ra > d/rc
                    (a, b, c, d) = (b, ra, d, rc);
                    flipped = !flipped;
                    continue;
                }
                (order, _, _) => order,
            };
            return if flipped { order.reverse() } else { order };
        }
    }
}

impl PartialOrd for Ratio {
    fn partial_cmp(&self, other: &Ratio) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(n: i128, d: i128) -> Ratio {
        Ratio::new(n, d).unwrap()
    }

    #[test]
    fn reduces_and_normalises_sign() {
        assert_eq!(r(70, 100), r(7, 10));
        assert_eq!(r(3, -6), r(-1, 2));
        assert_eq!(r(0, -5), Ratio::ZERO);
        assert_eq!(Ratio::new(1, 0), None);
        assert_eq!(Ratio::decimal(70, 2), Some(r(7, 10)));
    }

    #[test]
    fn decimal_sums_are_exact() {
        let tenth = r(1, 10);
        let sum = tenth.checked_add(r(2, 10)).unwrap();
        assert_eq!(sum, r(3, 10));
        assert_eq!(
            r(3, 2).checked_mul(Ratio::int(1_000_000_000)),
            Some(Ratio::int(1_500_000_000))
        );
    }

    #[test]
    fn overflow_is_none_not_a_wrap() {
        let max = Ratio::int(i128::MAX);
        assert_eq!(max.checked_add(Ratio::int(1)), None);
        assert_eq!(max.checked_mul(Ratio::int(2)), None);
        assert_eq!(Ratio::int(i128::MIN).checked_neg(), None);
        assert_eq!(Ratio::int(i128::MIN).checked_abs(), None);
        assert_eq!(
            Ratio::int(1)
                .checked_div(Ratio::int(i128::MIN))
                .map(|x| x.den),
            None
        );
        assert_eq!(r(1, i128::MAX).checked_add(r(1, i128::MAX - 1)), None);
        assert_eq!(Ratio::decimal(1, 39), None);
    }

    #[test]
    fn division() {
        assert_eq!(Ratio::int(7).checked_div(Ratio::ZERO), None);
        assert_eq!(Ratio::int(7).checked_div(Ratio::int(-2)), Some(r(-7, 2)));
    }

    #[test]
    fn ordering_at_the_extremes() {
        let big = r(i128::MAX, i128::MAX - 1);
        let bigger = r(i128::MAX - 1, i128::MAX - 2);
        assert!(big < bigger);
        assert!(Ratio::int(i128::MIN) < Ratio::int(i128::MAX));
        assert!(r(-1, 3) < Ratio::ZERO);
        assert_eq!(r(2, 4).cmp(&r(1, 2)), Ordering::Equal);
    }

    proptest! {
        #[test]
        fn ordering_matches_cross_multiplication(
            a in -1_000_000i128..1_000_000, b in 1i128..1_000_000,
            c in -1_000_000i128..1_000_000, d in 1i128..1_000_000,
        ) {
            prop_assert_eq!(r(a, b).cmp(&r(c, d)), (a * d).cmp(&(c * b)));
        }

        #[test]
        fn ordering_of_large_values_matches_their_difference(
            a in any::<i128>(), b in 1..i128::MAX, c in any::<i128>(), d in 1..i128::MAX,
        ) {
            let (x, y) = (r(a, b), r(c, d));
            prop_assert_eq!(x.cmp(&y), y.cmp(&x).reverse());
            if let Some(diff) = x.checked_sub(y) {
                prop_assert_eq!(x.cmp(&y), diff.cmp(&Ratio::ZERO));
                prop_assert_eq!(x.cmp(&y), diff.num.cmp(&0));
            }
        }

        #[test]
        fn arithmetic_matches_unreduced_fractions(
            a in -1_000_000i128..1_000_000, b in 1i128..1_000_000,
            c in -1_000_000i128..1_000_000, d in 1i128..1_000_000,
        ) {
            let (x, y) = (r(a, b), r(c, d));
            prop_assert_eq!(x.checked_add(y), Some(r(a * d + c * b, b * d)));
            prop_assert_eq!(x.checked_sub(y), Some(r(a * d - c * b, b * d)));
            prop_assert_eq!(x.checked_mul(y), Some(r(a * c, b * d)));
            prop_assert_eq!(x.checked_div(y), Ratio::new(a * d, b * c));
        }
    }
}
