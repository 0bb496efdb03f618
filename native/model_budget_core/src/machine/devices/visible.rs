//! `CUDA_VISIBLE_DEVICES` as the CUDA driver reads it, so that our GPU
//! indices are the ones CUDA programs (llama.cpp, PyTorch) use.
//!
//! Pure functions of the variable's value and the GPUs' UUIDs in NVML order;
//! the probe reads the environment. The rules below were checked against the
//! CUDA driver itself on an H100 (driver 580.159.04: `cuInit`,
//! `cuDeviceGetCount` and `cuDeviceGetUuid` in a fresh process for each of
//! 54 values, all matching; bench/gpu_proof/) and agree with PyTorch's
//! emulation of them (`torch.cuda._parse_visible_devices`):
//!
//! - Unset: every GPU, in NVML (PCI bus) order.
//! - The value is split at commas and read entry by entry. The listed GPUs
//!   are visible in the listed order and renumbered from 0. The first entry
//!   that is invalid hides itself and every entry after it; an empty value,
//!   `","`, `"-1"` or an out-of-range index therefore hides every GPU.
//! - An index entry is read like C's `strtoul`: leading white space and a
//!   `+` are skipped, the leading decimal digits are the index and anything
//!   after them is ignored (`" 0 "`, `"+0"`, `"00"` and `"0abc"` all mean
//!   GPU 0). No digits, a negative number or an index at or past the GPU
//!   count is invalid.
//! - A UUID entry is `GPU-` (or `MIG-`) followed by the start of a GPU's
//!   UUID: enough hex digits to name exactly one GPU, compared without
//!   regard to case or to dashes (`GPU-52ee-3c00` names
//!   `GPU-52ee3c00-...`); trailing white space is ignored. Leading white
//!   space, a lower-case `gpu-`, any other character (`GPU-52ee3c00xyz`),
//!   no hex digit at all (`"GPU-"`) or a prefix shared by several GPUs is
//!   invalid.
//! - The first entry sets the kind of the list: after an index, a UUID entry
//!   is invalid, and after a UUID, an index entry is.
//! - A GPU listed twice makes CUDA's initialisation fail (`cuInit` returns
//!   `CUDA_ERROR_INVALID_DEVICE`), so no GPU is visible at all.
//! - `MIG-` entries: CUDA 13 matched `MIG-<hex>` against a whole GPU's UUID
//!   on a GPU without MIG, which is what we do. MIG instances themselves are
//!   not probed, so an entry naming one is invalid: the instance and the
//!   entries after it are hidden rather than budgeted at their parent's size.
//!
//! One difference remains: CUDA's default `CUDA_DEVICE_ORDER=FASTEST_FIRST`
//! may number unlike GPUs differently from NVML's PCI bus order. With
//! identical GPUs, or `CUDA_DEVICE_ORDER=PCI_BUS_ID`, the orders agree.

/// The environment variable CUDA reads.
pub const ENV: &str = "CUDA_VISIBLE_DEVICES";

/// The variable's value in this process's environment (`None` when unset).
///
/// An Erlang VM keeps its own copy of the environment, which `os:putenv`
/// changes and which ports pass to the programs they start, but the C
/// environment this reads does not see those changes: the NIF takes the
/// value from the Elixir side instead.
pub fn from_env() -> Option<String> {
    std::env::var_os(ENV).map(|value| value.to_string_lossy().into_owned())
}

/// What one entry of the list names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Index,
    Uuid,
}

/// The GPUs CUDA would expose, as positions in `uuids` (NVML order), in
/// CUDA's order: the first is CUDA device 0.
///
/// `value` is the variable's value (`None` when unset); `uuids` holds each
/// GPU's UUID as NVML reports it (`GPU-xxxxxxxx-...`).
pub fn select(value: Option<&str>, uuids: &[&str]) -> Vec<usize> {
    let Some(value) = value else {
        return (0..uuids.len()).collect();
    };
    let mut kind = None;
    let mut selected = Vec::new();
    for entry in value.split(',') {
        let Some((entry_kind, gpu)) = resolve_entry(entry, uuids) else {
            break;
        };
        if *kind.get_or_insert(entry_kind) != entry_kind {
            break;
        }
        if selected.contains(&gpu) {
            return Vec::new();
        }
        selected.push(gpu);
    }
    selected
}

/// The kind of `entry` and the GPU it names, or `None` when it is invalid.
fn resolve_entry(entry: &str, uuids: &[&str]) -> Option<(Kind, usize)> {
    match uuid_prefix(entry) {
        Some(prefix) => Some((Kind::Uuid, by_uuid_prefix(prefix, uuids)?)),
        None => {
            let index = strtoul(entry)?;
            let index = usize::try_from(index).ok().filter(|&i| i < uuids.len())?;
            Some((Kind::Index, index))
        }
    }
}

/// The text after `GPU-` or `MIG-`, when `entry` is a UUID entry.
fn uuid_prefix(entry: &str) -> Option<&str> {
    entry
        .strip_prefix("GPU-")
        .or_else(|| entry.strip_prefix("MIG-"))
        .map(|rest| rest.trim_end_matches(is_c_space))
}

/// The one GPU whose UUID's hex digits start with those of `prefix`,
/// ignoring case and dashes; `None` when `prefix` holds anything else.
fn by_uuid_prefix(prefix: &str, uuids: &[&str]) -> Option<usize> {
    if !prefix.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
        return None;
    }
    let wanted = hex_digits(prefix);
    if wanted.is_empty() {
        return None;
    }
    let mut matches = uuids.iter().enumerate().filter(|(_, uuid)| {
        let digits = hex_digits(uuid.strip_prefix("GPU-").unwrap_or(""));
        digits
            .get(..wanted.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(&wanted))
    });
    let (first, _) = matches.next()?;
    matches.next().is_none().then_some(first)
}

fn hex_digits(text: &str) -> String {
    text.chars().filter(|&c| c != '-').collect()
}

/// C's `isspace` in the C locale.
fn is_c_space(c: char) -> bool {
    c.is_ascii_whitespace() || c == '\x0b'
}

/// C's `strtoul(entry, _, 10)` where it names a device: the leading decimal
/// number, or `None` when there is none or it is negative (CUDA then sees a
/// huge index). `"-0"` is 0, as in C. Overflow is `None` (C's `ULONG_MAX`).
fn strtoul(entry: &str) -> Option<u64> {
    let rest = entry.trim_start_matches(is_c_space);
    let (negative, rest) = match rest.as_bytes().first() {
        Some(b'+') => (false, &rest[1..]),
        Some(b'-') => (true, &rest[1..]),
        _ => (false, rest),
    };
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    let n: u64 = rest[..digits].parse().ok()?;
    (!negative || n == 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &str = "GPU-958d9bf6-2bd1-4787-c88a-fab3bf602ece";
    const B: &str = "GPU-958e0000-1111-2222-3333-444444444444";
    const C: &str = "GPU-0badcafe-1111-2222-3333-444444444444";
    const GPUS: [&str; 3] = [A, B, C];

    fn sel(value: &str) -> Vec<usize> {
        select(Some(value), &GPUS)
    }

    #[test]
    fn unset_shows_every_gpu_in_nvml_order() {
        assert_eq!(select(None, &GPUS), vec![0, 1, 2]);
        assert_eq!(select(None, &[]), Vec::<usize>::new());
    }

    #[test]
    fn indices_in_listed_order() {
        assert_eq!(sel("0"), vec![0]);
        assert_eq!(sel("2,0"), vec![2, 0]);
        assert_eq!(sel("1,2,0"), vec![1, 2, 0]);
    }

    #[test]
    fn empty_and_minus_one_hide_everything() {
        for value in ["", ",", "-1", ",0", "  ", "x", "-1,0"] {
            assert_eq!(sel(value), Vec::<usize>::new(), "{value:?}");
        }
    }

    #[test]
    fn an_invalid_entry_hides_itself_and_the_rest() {
        assert_eq!(sel("0,-1,1"), vec![0]);
        assert_eq!(sel("2,7,0"), vec![2]);
        assert_eq!(sel("1,,0"), vec![1]);
        assert_eq!(sel("1,"), vec![1]);
        assert_eq!(sel("3"), Vec::<usize>::new());
        assert_eq!(sel("1,x,0"), vec![1]);
    }

    #[test]
    fn indices_read_like_strtoul() {
        for value in [" 0", "0 ", " 0 ", "\t0", "+0", "00", "0x", "0abc", "-0"] {
            assert_eq!(sel(value), vec![0], "{value:?}");
        }
        assert_eq!(sel("1gpu2,2ampere"), vec![1, 2]);
        assert_eq!(sel("+-1"), Vec::<usize>::new());
        assert_eq!(sel("18446744073709551616"), Vec::<usize>::new());
        assert_eq!(sel("18446744073709551615"), Vec::<usize>::new());
    }

    #[test]
    fn a_repeated_gpu_hides_everything() {
        assert_eq!(sel("0,0"), Vec::<usize>::new());
        assert_eq!(sel("1,2,01"), Vec::<usize>::new());
        assert_eq!(sel(&format!("{A},{A}")), Vec::<usize>::new());
        assert_eq!(sel(&format!("{A},GPU-958d9")), Vec::<usize>::new());
        // The repeat comes after an invalid entry, which ends the list first.
        assert_eq!(sel("0,,0"), vec![0]);
    }

    #[test]
    fn full_uuids_in_listed_order() {
        assert_eq!(sel(&format!("{C},{A}")), vec![2, 0]);
        assert_eq!(sel(B), vec![1]);
    }

    #[test]
    fn uuid_prefixes_must_name_one_gpu() {
        assert_eq!(sel("GPU-958d"), vec![0]);
        assert_eq!(sel("GPU-0b,GPU-958e"), vec![2, 1]);
        // Shared by A and B: ambiguous, so invalid.
        assert_eq!(sel("GPU-958"), Vec::<usize>::new());
        assert_eq!(sel("GPU-0b,GPU-958"), vec![2]);
        assert_eq!(sel("GPU-"), Vec::<usize>::new());
        assert_eq!(sel("GPU-ffff"), Vec::<usize>::new());
    }

    #[test]
    fn uuid_prefixes_ignore_dashes_but_nothing_else() {
        assert_eq!(sel("GPU-958d-9bf6"), vec![0]);
        assert_eq!(sel("GPU-958d9bf6-"), vec![0]);
        assert_eq!(sel("GPU-958d9bf62bd1"), vec![0]);
        assert_eq!(sel("GPU--"), Vec::<usize>::new());
        assert_eq!(sel("GPU-958d9bf6xyz"), Vec::<usize>::new());
        assert_eq!(sel("GPU-958d9bf6 xyz"), Vec::<usize>::new());
        assert_eq!(sel("GPU-958d9bf6,GPU-0b"), vec![0, 2]);
    }

    #[test]
    fn uuid_case_and_white_space() {
        assert_eq!(sel(&A.to_uppercase()), vec![0]);
        assert_eq!(sel("GPU-958D9BF6"), vec![0]);
        assert_eq!(sel(&format!("{A} ")), vec![0]);
        assert_eq!(sel(&format!("gpu-{}", &A[4..])), Vec::<usize>::new());
        assert_eq!(sel(&format!(" {A}")), Vec::<usize>::new());
        assert_eq!(sel("GPU"), Vec::<usize>::new());
        assert_eq!(sel(&format!("{A}\t")), vec![0]);
        // Without the GPU- prefix it is read as a number: 958, out of range.
        assert_eq!(sel(&A[4..]), Vec::<usize>::new());
    }

    #[test]
    fn the_first_entry_sets_the_kind() {
        assert_eq!(sel(&format!("{C},0")), vec![2]);
        assert_eq!(sel(&format!("1,{A}")), vec![1]);
        assert_eq!(sel(&format!("1,{A},0")), vec![1]);
    }

    #[test]
    fn mig_ids() {
        // Matched against whole GPUs, as CUDA 13 did on a GPU without MIG.
        assert_eq!(sel("MIG-958d9bf6"), vec![0]);
        assert_eq!(sel(&format!("MIG-{}", &C[4..])), vec![2]);
        // A MIG instance's own UUID, or the old MIG-GPU-.../gi/ci form, names
        // no whole GPU: invalid.
        assert_eq!(
            sel("MIG-5c1e7f00-0000-0000-0000-000000000000"),
            Vec::<usize>::new()
        );
        assert_eq!(sel(&format!("MIG-{A}/0/0")), Vec::<usize>::new());
        assert_eq!(sel("0,MIG-ffffffff"), vec![0]);
    }

    proptest! {
        /// Whatever the value, the result names distinct GPUs that exist.
        #[test]
        fn selections_are_distinct_valid_positions(value in ".{0,40}", n in 0usize..4) {
            let picked = select(Some(&value), &GPUS[..n.min(GPUS.len())]);
            let mut seen = picked.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), picked.len());
            prop_assert!(picked.iter().all(|&i| i < n.min(GPUS.len())));
        }

        /// A list of distinct valid indices is shown exactly, in its order.
        #[test]
        fn distinct_indices_round_trip(order in Just(vec![0usize, 1, 2]).prop_shuffle(), k in 0usize..=3) {
            let order = &order[..k];
            let value: Vec<String> = order.iter().map(usize::to_string).collect();
            let value = value.join(",");
            if k == 0 {
                prop_assert!(select(Some(&value), &GPUS).is_empty());
            } else {
                prop_assert_eq!(select(Some(&value), &GPUS), order.to_vec());
            }
        }

        /// Full UUIDs select the same GPUs as their indices.
        #[test]
        fn uuids_match_indices(order in Just(vec![0usize, 1, 2]).prop_shuffle(), k in 1usize..=3) {
            let by_index: Vec<String> = order[..k].iter().map(usize::to_string).collect();
            let by_uuid: Vec<&str> = order[..k].iter().map(|&i| GPUS[i]).collect();
            prop_assert_eq!(
                select(Some(&by_index.join(",")), &GPUS),
                select(Some(&by_uuid.join(",")), &GPUS)
            );
        }
    }
}
