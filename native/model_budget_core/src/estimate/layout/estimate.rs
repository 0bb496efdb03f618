//! A footprint estimate from a parameter count and bits per weight, the
//! shape of oxibonsai's `MemoryBudget`, with checked arithmetic.

use crate::error::{invalid, Result};

const MIB: u64 = 1 << 20;

/// Runtime overhead: a tenth of the total, at most 256 MiB.
pub const MAX_RUNTIME_OVERHEAD: u64 = 256 * MIB;

/// The KV cache may take 80% of what is left after weights and overhead.
pub const KV_PERCENT: u64 = 80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub total_system_bytes: u64,
    pub model_weight_bytes: u64,
    pub runtime_overhead: u64,
    pub available_bytes: u64,
    pub kv_cache_budget: u64,
}

/// Largest sensible bits per weight: f64 weights.
const MAX_BITS: f64 = 64.0;

/// Estimates a model of `params` weights at `bits_per_weight` in a machine
/// with `total_mib` MiB. Weight bytes are rounded up.
pub fn estimate(total_mib: u64, params: u64, bits_per_weight: f64) -> Result<Estimate> {
    if !(bits_per_weight.is_finite() && bits_per_weight > 0.0 && bits_per_weight <= MAX_BITS) {
        return Err(invalid(
            "bits_per_weight",
            format!("expected a number in (0, 64], got: {bits_per_weight:?}"),
        ));
    }
    let total = total_mib.checked_mul(MIB).ok_or_else(|| {
        invalid(
            "total_available_mib",
            format!("{total_mib} MiB exceeds 2^64 bytes"),
        )
    })?;
    // bits is a finite f64 in (0, 64]: exact as m * 2^e, so params * bits / 8
    // is computed exactly in u128 and rounded up.
    let (m, e) = crate::estimate::split::mantissa_exponent(bits_per_weight)
        .expect("a positive finite number has a mantissa");
    let numerator = u128::from(params) * u128::from(m);
    let shift = e - 3; // divide by 8
    let weight = if shift >= 0 {
        numerator
            .checked_shl(shift as u32)
            .filter(|v| v >> shift == numerator)
    } else {
        let s = (-shift) as u32;
        Some(if s >= 128 {
            u128::from(numerator > 0)
        } else {
            numerator.div_ceil(1u128 << s)
        })
    };
    let weight = weight.and_then(|w| u64::try_from(w).ok()).ok_or_else(|| {
        invalid(
            "model_params",
            format!("{params} weights at {bits_per_weight} bits exceed 2^64 bytes"),
        )
    })?;
    let runtime_overhead = (total / 10).min(MAX_RUNTIME_OVERHEAD);
    let available = total
        .saturating_sub(weight)
        .saturating_sub(runtime_overhead);
    Ok(Estimate {
        total_system_bytes: total,
        model_weight_bytes: weight,
        runtime_overhead,
        available_bytes: available,
        kv_cache_budget: (u128::from(available) * u128::from(KV_PERCENT) / 100) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_8b_model_at_4_5_bits_in_16_gib() {
        let e = estimate(16 * 1024, 8_000_000_000, 4.5).unwrap();
        assert_eq!(e.total_system_bytes, 16 << 30);
        assert_eq!(e.model_weight_bytes, 4_500_000_000);
        assert_eq!(e.runtime_overhead, 256 * MIB);
        assert_eq!(e.available_bytes, (16 << 30) - 4_500_000_000 - 256 * MIB);
        assert_eq!(
            e.kv_cache_budget,
            e.available_bytes / 5 * 4 + (e.available_bytes % 5) * 4 / 5
        );
    }

    #[test]
    fn small_machines_pay_a_tenth_and_never_go_negative() {
        let e = estimate(1000, 10_000_000_000, 16.0).unwrap();
        assert_eq!(e.runtime_overhead, 1000 * MIB / 10);
        assert_eq!(e.available_bytes, 0);
        assert_eq!(e.kv_cache_budget, 0);
    }

    #[test]
    fn fractional_bits_round_up() {
        assert_eq!(estimate(1, 3, 1.5).unwrap().model_weight_bytes, 1); // 4.5 bits
        assert_eq!(estimate(1, 3, 3.0).unwrap().model_weight_bytes, 2); // 9 bits
    }

    #[test]
    fn bad_inputs_are_refused() {
        for bits in [f64::NAN, f64::INFINITY, -1.0, 0.0, 65.0] {
            assert!(estimate(1, 1, bits).is_err(), "{bits}");
        }
        assert!(estimate(u64::MAX, 1, 4.0).is_err());
        assert!(estimate(1, u64::MAX, 64.0).is_err());
    }
}
