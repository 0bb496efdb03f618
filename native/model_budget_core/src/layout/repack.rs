//! Repacked weights: llama.cpp's CPU backend copies the weight matrices of
//! some types into an interleaved layout of its own (a `CPU_REPACK`
//! buffer), for faster matrix products. The copy is the same size as the
//! original, and it comes on top of the mapped file: with mmap the file
//! stays mapped whole, so these tensors are held twice.
//!
//! Which types repack depends on the CPU features the build uses
//! (ggml-cpu/repack.cpp, `ggml_repack_get_optimal_repack_type`, build
//! 11434): every rule also needs the matrix's row count to be a multiple of
//! 8 (of 4 for some ARM kernels; `Model` counts multiples of 8 only). The
//! token embeddings are looked up, not multiplied, and never repack.

use crate::model::MatrixBytes;

/// The repacking rules of a CPU, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repack {
    /// No repacking (`--no-repack`, or a CPU without the kernels).
    None,
    /// x86-64 with AVX2: Q4_0, Q4_K, IQ4_NL and MXFP4.
    X86Avx2,
    /// x86-64 with AVX-512 as well: Q2_K too.
    X86Avx512,
    /// ARM with NEON and the dot-product extension: Q4_0, Q4_K, Q5_K,
    /// Q6_K, Q8_0, IQ4_NL, MXFP4 and Q1_0.
    ArmDotprod,
}

impl Repack {
    /// The ggml types this CPU repacks.
    pub fn types(self) -> &'static [&'static str] {
        match self {
            Repack::None => &[],
            Repack::X86Avx2 => &["Q4_0", "Q4_K", "IQ4_NL", "MXFP4"],
            Repack::X86Avx512 => &["Q4_0", "Q4_K", "IQ4_NL", "MXFP4", "Q2_K"],
            Repack::ArmDotprod => &[
                "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_NL", "MXFP4", "Q1_0",
            ],
        }
    }

    /// Bytes of `matrices` this CPU repacks.
    pub fn bytes(self, matrices: &MatrixBytes) -> u64 {
        let types = self.types();
        matrices
            .iter()
            .filter(|(name, _)| types.contains(&name.as_str()))
            .fold(0u64, |acc, (_, b)| acc.saturating_add(*b))
    }

    /// The rules of this machine's CPU, as a llama.cpp built for it
    /// (`GGML_NATIVE`) would use them.
    pub fn detect() -> Repack {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Repack::X86Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Repack::X86Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                return Repack::ArmDotprod;
            }
        }
        Repack::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrices(pairs: &[(&str, u64)]) -> MatrixBytes {
        pairs.iter().map(|(t, b)| (t.to_string(), *b)).collect()
    }

    #[test]
    fn avx2_repacks_q4_but_not_q6_k_or_q8_0() {
        let m = matrices(&[("Q4_K", 100), ("Q6_K", 10), ("Q8_0", 1), ("Q4_0", 1000)]);
        assert_eq!(Repack::X86Avx2.bytes(&m), 1100);
        assert_eq!(Repack::None.bytes(&m), 0);
        assert_eq!(Repack::ArmDotprod.bytes(&m), 1111);
    }

    #[test]
    fn avx512_adds_q2_k() {
        let m = matrices(&[("Q2_K", 7), ("Q4_K", 1)]);
        assert_eq!(
            (Repack::X86Avx2.bytes(&m), Repack::X86Avx512.bytes(&m)),
            (1, 8)
        );
    }

    #[test]
    fn every_named_type_is_a_ggml_type() {
        for repack in [Repack::X86Avx2, Repack::X86Avx512, Repack::ArmDotprod] {
            for name in repack.types() {
                assert!(
                    crate::model::ggml_type::TYPES
                        .iter()
                        .any(|t| t.name == *name),
                    "{name}"
                );
            }
        }
    }
}
