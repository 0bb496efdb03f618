//! ggml tensor types: the id a GGUF file stores, the name llama.cpp prints,
//! and the block layout that fixes a tensor's exact byte count.

/// Super-block size of the K-quants and IQ types (`QK_K` in ggml).
const QK_K: u64 = 256;

/// A ggml type a GGUF tensor may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType {
    /// The id stored in the tensor table.
    pub id: u32,
    /// The name llama.cpp and the `gguf` Python package use.
    pub name: &'static str,
    /// Elements per block.
    pub block_size: u64,
    /// Bytes per block.
    pub type_size: u64,
}

const fn t(id: u32, name: &'static str, block_size: u64, type_size: u64) -> GgmlType {
    GgmlType {
        id,
        name,
        block_size,
        type_size,
    }
}

/// Every type current ggml defines, in id order (ggml.h / gguf-py's
/// `GGML_QUANT_SIZES`).
pub const TYPES: &[GgmlType] = &[
    t(0, "F32", 1, 4),
    t(1, "F16", 1, 2),
    t(2, "Q4_0", 32, 2 + 16),
    t(3, "Q4_1", 32, 2 + 2 + 16),
    t(6, "Q5_0", 32, 2 + 4 + 16),
    t(7, "Q5_1", 32, 2 + 2 + 4 + 16),
    t(8, "Q8_0", 32, 2 + 32),
    t(9, "Q8_1", 32, 4 + 4 + 32),
    t(10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
    t(11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
    t(12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12),
    t(13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
    t(14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
    t(15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
    t(16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
    t(17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
    t(18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8),
    t(19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
    t(20, "IQ4_NL", 32, 2 + 16),
    t(21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
    t(22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
    t(23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
    t(24, "I8", 1, 1),
    t(25, "I16", 1, 2),
    t(26, "I32", 1, 4),
    t(27, "I64", 1, 8),
    t(28, "F64", 1, 8),
    t(29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
    t(30, "BF16", 1, 2),
    t(34, "TQ1_0", QK_K, 2 + 4 * 13),
    t(35, "TQ2_0", QK_K, 2 + 64),
    t(39, "MXFP4", 32, 1 + 16),
    t(40, "NVFP4", 64, 4 + 32),
    t(41, "Q1_0", 128, 2 + 16),
];

/// Ids ggml once used and has since removed; llama.cpp refuses files that
/// still carry them, and so do we, by name.
const REMOVED: &[(u32, &str)] = &[
    (4, "Q4_2"),
    (5, "Q4_3"),
    (31, "Q4_0_4_4"),
    (32, "Q4_0_4_8"),
    (33, "Q4_0_8_8"),
    (36, "IQ4_NL_4_4"),
    (37, "IQ4_NL_4_8"),
    (38, "IQ4_NL_8_8"),
];

/// The type with this id, at compile time (a missing id fails the build).
pub const fn by_id(id: u32) -> GgmlType {
    let mut i = 0;
    while i < TYPES.len() {
        if TYPES[i].id == id {
            return TYPES[i];
        }
        i += 1;
    }
    panic!("no ggml type with this id")
}

impl GgmlType {
    /// The type with this id, or why there is none.
    pub fn from_id(id: u32) -> Result<GgmlType, String> {
        if let Some(ty) = TYPES.iter().find(|ty| ty.id == id) {
            return Ok(*ty);
        }
        match REMOVED.iter().find(|(removed, _)| *removed == id) {
            Some((_, name)) => Err(format!(
                "ggml type {id} ({name}) was removed from ggml; requantize the model"
            )),
            None => Err(format!("unknown ggml type {id}")),
        }
    }

    /// Exact bytes of a tensor of this type whose first dimension is `row`
    /// elements and that holds `elements` in all, the way `ggml_nbytes`
    /// counts them. `None` when a row is not a whole number of blocks.
    pub fn bytes(&self, row: u64, elements: u64) -> Option<u64> {
        if !row.is_multiple_of(self.block_size) {
            return None;
        }
        (elements / self.block_size).checked_mul(self.type_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_layouts_match_ggml() {
        let layout = |name: &str| {
            let ty = TYPES.iter().find(|ty| ty.name == name).unwrap();
            (ty.block_size, ty.type_size)
        };
        // Values from ggml's type_traits (block_q*_K structs are packed).
        assert_eq!(layout("Q4_0"), (32, 18));
        assert_eq!(layout("Q8_0"), (32, 34));
        assert_eq!(layout("Q2_K"), (256, 84));
        assert_eq!(layout("Q3_K"), (256, 110));
        assert_eq!(layout("Q4_K"), (256, 144));
        assert_eq!(layout("Q5_K"), (256, 176));
        assert_eq!(layout("Q6_K"), (256, 210));
        assert_eq!(layout("Q8_K"), (256, 292));
        assert_eq!(layout("IQ2_XXS"), (256, 66));
        assert_eq!(layout("IQ2_XS"), (256, 74));
        assert_eq!(layout("IQ2_S"), (256, 82));
        assert_eq!(layout("IQ3_XXS"), (256, 98));
        assert_eq!(layout("IQ3_S"), (256, 110));
        assert_eq!(layout("IQ1_S"), (256, 50));
        assert_eq!(layout("IQ1_M"), (256, 56));
        assert_eq!(layout("IQ4_NL"), (32, 18));
        assert_eq!(layout("IQ4_XS"), (256, 136));
        assert_eq!(layout("TQ1_0"), (256, 54));
        assert_eq!(layout("TQ2_0"), (256, 66));
        assert_eq!(layout("MXFP4"), (32, 17));
        assert_eq!(layout("BF16"), (1, 2));
    }

    #[test]
    fn ids_are_unique_and_sorted() {
        assert!(TYPES.windows(2).all(|w| w[0].id < w[1].id));
        assert!(REMOVED
            .iter()
            .all(|(id, _)| GgmlType::from_id(*id).is_err()));
    }

    #[test]
    fn unknown_and_removed_ids_say_why() {
        assert_eq!(
            GgmlType::from_id(31).unwrap_err(),
            "ggml type 31 (Q4_0_4_4) was removed from ggml; requantize the model"
        );
        assert_eq!(GgmlType::from_id(99).unwrap_err(), "unknown ggml type 99");
    }

    #[test]
    fn bytes_counts_whole_blocks_per_row() {
        let q4_k = GgmlType::from_id(12).unwrap();
        // 4096 x 14336 Q4_K: 16 blocks of 144 bytes per row.
        assert_eq!(q4_k.bytes(4096, 4096 * 14336), Some(16 * 144 * 14336));
        assert_eq!(q4_k.bytes(100, 100), None);
        assert_eq!(q4_k.bytes(0, 0), Some(0));
    }
}
