//! The load options each placement path reads, and the near-miss rule for
//! the keys it does not.
//!
//! Callers pass their whole load options (llama.cpp's, a runtime's, the
//! manager's), so unknown keys are allowed. A key one or two edits from one
//! of ours is almost always a typo (`n_gpu_layer: 0` would otherwise
//! silently offload everything), so it is refused, naming the key it
//! resembles.

/// Which placement an option list feeds: the byte-count estimate or the
/// layer-by-layer placement of a read model. Each reads its own set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionSet {
    Bytes,
    Model,
}

/// Options both paths read, with one meaning each.
const COMMON: &[&str] = &[
    "mode",
    "n_gpu_layers",
    "split_mode",
    "tensor_split",
    "main_gpu",
    "offload_kqv",
    "n_ctx",
    "n_parallel",
];

/// Only the byte-count estimate reads these.
const BYTES_ONLY: &[&str] = &["kv_bytes_per_token"];

/// Only the model path reads these.
const MODEL_ONLY: &[&str] = &[
    "cache_type_k",
    "cache_type_v",
    "n_ubatch",
    "flash_attn",
    "gpu_overhead",
    "n_batch",
    "kv_unified",
    "mmap",
    "cpu_buffers",
    "repack",
    "cache_ram",
];

/// Options of other programs that sit within a typo of ours and mean
/// something else there: never refused.
pub const FOREIGN: &[&str] = &[
    // llama.cpp / LlamaCppEx
    "model",
    "n_seq_max",
    "use_mmap",
    "use_mlock",
    // Elixir / distribution
    "node",
    "name",
];

impl OptionSet {
    /// Whether this path reads `key`.
    pub fn reads(self, key: &str) -> bool {
        COMMON.contains(&key)
            || match self {
                OptionSet::Bytes => BYTES_ONLY.contains(&key),
                OptionSet::Model => MODEL_ONLY.contains(&key),
            }
    }
}

/// The option an unknown `key` looks like a misspelling of: one or two
/// edits (insertions, deletions, substitutions, swaps of neighbours) from
/// any option of either path, at most one edit per four characters of that
/// option (so `node` is not taken for `mode`'s typo twice over), and not a
/// known option of another program. Exact names of either path are never
/// near misses.
pub fn near_miss(key: &str) -> Option<&'static str> {
    let ours = || COMMON.iter().chain(BYTES_ONLY).chain(MODEL_ONLY);
    if ours().any(|k| *k == key) || FOREIGN.contains(&key) {
        return None;
    }
    let letters = letter_set(key);
    ours()
        // Two edits change at most four letters of the set: most keys are
        // ruled out by one XOR before the edit distance is worked out.
        .filter(|k| (letter_set(k) ^ letters).count_ones() <= 4)
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| (1..=2).contains(d) && *d * 4 <= k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The bytes of `s` as a set, folded into 64 bits (a superset test: two
/// strings one edit apart differ in at most two bits).
fn letter_set(s: &str) -> u64 {
    s.bytes().fold(0, |set, b| set | 1 << (b % 64))
}

/// Optimal string alignment distance (Levenshtein plus adjacent swaps),
/// capped at 3: only distances up to 2 matter, so a row whose every cell is
/// past 2 ends the walk (most keys differ within a few letters), and three
/// rows on the stack stand for the table. Callers pass every unknown key of
/// a whole load-options list, so this runs dozens of times per call.
fn edit_distance(a: &str, b: &str) -> usize {
    const CAP: u8 = 3;
    const MAX: usize = 64;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    // Far apart in length: more than two edits whatever the letters.
    if a.len().abs_diff(b.len()) > 2 || b.len() >= MAX {
        return CAP.into();
    }
    let mut before = [0u8; MAX + 1];
    let mut prev: [u8; MAX + 1] = std::array::from_fn(|j| (j as u8).min(CAP));
    let mut cur = [0u8; MAX + 1];
    for i in 1..=a.len() {
        cur[0] = (i as u8).min(CAP);
        let mut row_min = cur[0];
        for j in 1..=b.len() {
            let cost = u8::from(a[i - 1] != b[j - 1]);
            let mut best = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            cur[j] = best.min(CAP);
            row_min = row_min.min(cur[j]);
        }
        if row_min >= CAP {
            return CAP.into();
        }
        (before, prev, cur) = (prev, cur, before);
    }
    prev[b.len()].into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_name_the_option_they_resemble() {
        assert_eq!(near_miss("n_gpu_layer"), Some("n_gpu_layers"));
        assert_eq!(near_miss("n_gpu_lyaers"), Some("n_gpu_layers"));
        assert_eq!(near_miss("tensor_splitt"), Some("tensor_split"));
        assert_eq!(near_miss("cache_typek"), Some("cache_type_k"));
        assert_eq!(near_miss("flash_atn"), Some("flash_attn"));
        assert_eq!(near_miss("mdoe"), Some("mode"));
    }

    #[test]
    fn options_and_other_programs_keys_are_not_typos() {
        for key in COMMON
            .iter()
            .chain(BYTES_ONLY)
            .chain(MODEL_ONLY)
            .chain(FOREIGN)
        {
            assert_eq!(near_miss(key), None, "{key}");
        }
        for key in [
            "keep_alive",
            "pinned",
            "backend",
            "timeout",
            "n_threads",
            "ctx",
            "seed",
        ] {
            assert_eq!(near_miss(key), None, "{key}");
        }
    }

    #[test]
    fn short_options_allow_one_edit_only() {
        assert_eq!(near_miss("modes"), Some("mode"));
        assert_eq!(near_miss("mo"), None);
        assert_eq!(near_miss("n_cx"), Some("n_ctx"));
        assert_eq!(near_miss("n_x"), None);
    }

    #[test]
    fn each_path_reads_its_own_set() {
        assert!(OptionSet::Bytes.reads("kv_bytes_per_token"));
        assert!(!OptionSet::Model.reads("kv_bytes_per_token"));
        assert!(OptionSet::Model.reads("cache_type_k"));
        assert!(!OptionSet::Bytes.reads("gpu_overhead"));
        assert!(OptionSet::Bytes.reads("n_ctx") && OptionSet::Model.reads("n_ctx"));
    }

    #[test]
    fn edit_distance_counts_swaps_once() {
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", "acb"), 1);
        assert_eq!(edit_distance("abc", "a"), 2);
        assert_eq!(edit_distance("", "abcd"), 3);
        assert_eq!(edit_distance("n_gpu_layer", "n_gpu_layers"), 1);
        assert_eq!(edit_distance("n_ctxx", "n_ctx"), 1);
        assert_eq!(edit_distance("flash_attn", "flsah_atn"), 2);
        assert_eq!(edit_distance("split_mode", "spilt_mdoe"), 2);
        assert_eq!(edit_distance("keep_alive", "tensor_split"), 3);
        assert_eq!(edit_distance("abcdef", "badcfe"), 3);
    }

    proptest::proptest! {
        #[test]
        fn edit_distance_agrees_with_the_full_table_up_to_its_cap(
            a in "[a-d_]{0,8}", b in "[a-d_]{0,8}"
        ) {
            proptest::prop_assert_eq!(edit_distance(&a, &b), full_table(&a, &b).min(3));
        }
    }

    /// The whole optimal-string-alignment table, uncapped: the reference.
    fn full_table(a: &str, b: &str) -> usize {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        let w = b.len() + 1;
        let mut d = vec![0usize; (a.len() + 1) * w];
        for i in 0..=a.len() {
            for j in 0..=b.len() {
                d[i * w + j] = if i == 0 || j == 0 {
                    i + j
                } else {
                    let cost = usize::from(a[i - 1] != b[j - 1]);
                    let mut best = (d[(i - 1) * w + j] + 1)
                        .min(d[i * w + j - 1] + 1)
                        .min(d[(i - 1) * w + j - 1] + cost);
                    if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                        best = best.min(d[(i - 2) * w + j - 2] + 1);
                    }
                    best
                };
            }
        }
        d[a.len() * w + b.len()]
    }
}
