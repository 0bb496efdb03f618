//! llama.cpp's file types: what a GGUF header's `general.file_type` says
//! the weights mostly are (`LLAMA_FTYPE_*` in llama.h), by the names
//! llama-quantize takes (`Q4_K_M`, ...). The one table of them.

/// `(general.file_type, name)`, in llama.h's order. Ids llama.cpp retired
/// keep their names, for old files.
const FILE_TYPES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (4, "Q4_1_SOME_F16"),
    (5, "Q4_2"),
    (6, "Q4_3"),
    (7, "Q8_0"),
    (8, "Q5_0"),
    (9, "Q5_1"),
    (10, "Q2_K"),
    (11, "Q3_K_S"),
    (12, "Q3_K_M"),
    (13, "Q3_K_L"),
    (14, "Q4_K_S"),
    (15, "Q4_K_M"),
    (16, "Q5_K_S"),
    (17, "Q5_K_M"),
    (18, "Q6_K"),
    (19, "IQ2_XXS"),
    (20, "IQ2_XS"),
    (21, "Q2_K_S"),
    (22, "IQ3_XS"),
    (23, "IQ3_XXS"),
    (24, "IQ1_S"),
    (25, "IQ4_NL"),
    (26, "IQ3_S"),
    (27, "IQ3_M"),
    (28, "IQ2_S"),
    (29, "IQ2_M"),
    (30, "IQ4_XS"),
    (31, "IQ1_M"),
    (32, "BF16"),
    (33, "Q4_0_4_4"),
    (34, "Q4_0_4_8"),
    (35, "Q4_0_8_8"),
    (36, "TQ1_0"),
    (37, "TQ2_0"),
    (38, "MXFP4_MOE"),
    (39, "NVFP4"),
    (40, "Q1_0"),
    (1024, "GUESSED"),
];

/// The name of file type `id` (`15` is `"Q4_K_M"`), or `None` for an id
/// llama.cpp does not define.
pub fn name(id: u32) -> Option<&'static str> {
    FILE_TYPES
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_names_by_id() {
        assert_eq!(name(0), Some("F32"));
        assert_eq!(name(15), Some("Q4_K_M"));
        assert_eq!(name(18), Some("Q6_K"));
        assert_eq!(name(32), Some("BF16"));
        assert_eq!(name(38), Some("MXFP4_MOE"));
        assert_eq!(name(41), None);
        assert_eq!(name(u32::MAX), None);
    }

    #[test]
    fn one_name_per_id_in_order() {
        assert!(FILE_TYPES.windows(2).all(|w| w[0].0 < w[1].0));
        let mut names: Vec<&str> = FILE_TYPES.iter().map(|(_, n)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FILE_TYPES.len());
    }
}
