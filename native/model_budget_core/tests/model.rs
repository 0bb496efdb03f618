//! Header readers against files written by tests/support: exact byte counts,
//! every malformation refused with its offset, and property tests over
//! truncated and mutated files (errors, never panics).

mod support;

use std::io::Cursor;

use model_budget_core::model::{gguf, read, safetensors, MatrixClass, PerLayer, MAX_LAYERS};
use model_budget_core::{Error, Format, Model, TypeStats};
use proptest::prelude::*;
use support::{llama, Gguf, Kv};

const F32: u32 = 0;
const Q8_0: u32 = 8;
const Q4_K: u32 = 12;

fn parse_gguf(bytes: &[u8]) -> Result<Model, Error> {
    gguf::parse(Cursor::new(bytes), bytes.len() as u64)
}

fn parse_st(bytes: &[u8]) -> Result<Model, Error> {
    safetensors::parse(Cursor::new(bytes), bytes.len() as u64)
}

fn invalid(offset: u64, reason: &str) -> Error {
    Error::InvalidModel {
        offset,
        reason: reason.into(),
    }
}

fn tiny() -> Gguf {
    llama(2, 256, 512, 1000, 2, Q8_0, false)
}

#[test]
fn the_file_type_is_named_as_llama_cpp_names_it() {
    let with = |kv: Kv| parse_gguf(&tiny().kv("general.file_type", kv).bytes());
    assert_eq!(
        with(Kv::U32(15)).unwrap().file_type.as_deref(),
        Some("Q4_K_M")
    );
    assert_eq!(with(Kv::U32(7)).unwrap().file_type.as_deref(), Some("Q8_0"));
    // Not said, or no type llama.cpp defines: none.
    assert_eq!(parse_gguf(&tiny().bytes()).unwrap().file_type, None);
    assert_eq!(with(Kv::U32(999)).unwrap().file_type, None);
    assert!(with(Kv::Str("Q4_K_M".into())).is_err());
}

#[test]
fn gguf_llama_counts_are_exact() {
    let m = parse_gguf(&tiny().bytes()).unwrap();
    assert_eq!(m.format, Format::Gguf);
    assert_eq!(m.architecture.as_deref(), Some("llama"));
    assert_eq!(m.name.as_deref(), Some("tiny llama"));
    // Hand-computed: Q8_0 is 34 bytes per 32 elements.
    assert_eq!(m.layer_bytes, [628_736, 628_736]);
    assert_eq!(m.input_bytes, 272_000);
    assert_eq!(m.output_bytes, 272_000 + 1024);
    assert_eq!(m.other_bytes, 0);
    assert_eq!(m.weight_bytes, 272_000 * 2 + 1024 + 2 * 628_736);
    assert_eq!(m.n_params, 1_692_928);
    assert_eq!(m.n_tensors, 21);
    assert!(!m.tied_embeddings);
    assert_eq!(
        (m.n_layers, m.n_embd, m.n_vocab),
        (2, Some(256), Some(1000))
    );
    assert_eq!(m.n_head, Some(PerLayer::Uniform(4)));
    assert_eq!(m.n_head_kv, Some(PerLayer::Uniform(2)));
    assert_eq!((m.head_dim_k, m.head_dim_v), (Some(64), Some(64)));
    assert_eq!(m.context_length, Some(8192));
    assert_eq!((m.sliding_window, m.n_experts), (None, None));
    assert_eq!(
        m.types["Q8_0"],
        TypeStats {
            n_tensors: 16,
            n_params: 1_691_648,
            bytes: 1_797_376
        }
    );
    assert_eq!(
        m.types["F32"],
        TypeStats {
            n_tensors: 5,
            n_params: 1280,
            bytes: 5120
        }
    );
    assert!(m.file_bytes > m.weight_bytes);
}

#[test]
fn gguf_tied_head_counts_the_embeddings_once() {
    let m = parse_gguf(&llama(1, 256, 512, 1000, 2, Q8_0, true).bytes()).unwrap();
    assert!(m.tied_embeddings);
    assert_eq!((m.input_bytes, m.embedding_bytes), (272_000, 272_000));
    assert_eq!(m.output_bytes, 1024);
    assert_eq!(m.weight_bytes, 272_000 + 1024 + 628_736);
    // No head matrix of its own; an extra CPU buffer may copy the
    // embeddings for it: 1000 rows (a multiple of 8, not of 16) of 256.
    assert!(m.head_matrices.is_empty());
    assert_eq!(
        m.embedding_matrix,
        Some(MatrixClass {
            ggml: "Q8_0",
            rows_multiple: 8,
            cols_multiple: 256,
            stacked: false
        })
    );
    let untied = parse_gguf(&llama(1, 256, 512, 1000, 2, Q8_0, false).bytes()).unwrap();
    assert_eq!(untied.embedding_matrix, None);
}

#[test]
fn gguf_matrices_by_type_and_ffn_width_per_block() {
    let m = parse_gguf(&llama(2, 256, 512, 1000, 2, Q8_0, false).bytes()).unwrap();
    assert_eq!(m.n_ff, Some(512));
    assert_eq!(m.n_ff_exp, None);
    assert_eq!(m.layer_matrices.len(), 2);
    // Every 2-D weight of a block is a Q8_0 matrix; norms are not.
    let norms = 2 * 256 * 4;
    for (il, matrices) in m.layer_matrices.iter().enumerate() {
        assert!(matrices.keys().all(|c| c.ggml == "Q8_0" && !c.stacked));
        assert_eq!(matrices.values().sum::<u64>(), m.layer_bytes[il] - norms);
    }
    // The head: 1000 rows of 256.
    let head = MatrixClass::of("Q8_0", 1000, 256, false);
    assert_eq!(m.head_matrices, [(head, 272_000)].into());
    // The runs in file order carry the same classes.
    let head_runs: Vec<_> = m
        .file_order
        .iter()
        .filter(|r| r.matrix == Some(head))
        .collect();
    assert_eq!(head_runs.len(), 1);
    assert_eq!(head_runs[0].bytes, 272_000);
}

#[test]
fn gguf_version_2_reads_like_3() {
    let mut g = tiny();
    g.version = 2;
    assert_eq!(
        parse_gguf(&g.bytes()).unwrap(),
        parse_gguf(&tiny().bytes()).unwrap()
    );
}

#[test]
fn gguf_per_layer_heads_swa_and_experts() {
    let g = Gguf::new()
        .kv("general.architecture", Kv::Str("gemma2".into()))
        .kv("gemma2.block_count", Kv::U32(4))
        .kv("gemma2.embedding_length", Kv::U32(64))
        .kv("gemma2.attention.head_count", Kv::U32(4))
        .kv("gemma2.attention.head_count_kv", Kv::I32s(vec![2, 2, 1, 2]))
        .kv("gemma2.attention.key_length", Kv::U32(32))
        .kv("gemma2.attention.value_length", Kv::U32(16))
        .kv("gemma2.attention.sliding_window", Kv::U32(4096))
        .kv("gemma2.expert_count", Kv::U32(8))
        .kv("gemma2.expert_used_count", Kv::U32(2))
        .tensor("blk.0.ffn_gate_exps.weight", &[64, 32, 8], F32)
        .tensor("blk.3.attn_norm.weight", &[64], F32)
        .tensor("rope_freqs.weight", &[16], F32);
    let m = parse_gguf(&g.bytes()).unwrap();
    assert_eq!(m.n_head_kv, Some(PerLayer::Layers(vec![2, 2, 1, 2])));
    assert_eq!((m.head_dim_k, m.head_dim_v), (Some(32), Some(16)));
    assert_eq!(m.sliding_window, Some(4096));
    // llama.cpp's gemma2 pattern: even layers slide.
    assert_eq!(m.sliding_window_layers, [true, false, true, false]);
    assert_eq!((m.n_experts, m.n_experts_used), (Some(8), Some(2)));
    assert_eq!(m.layer_bytes, [64 * 32 * 8 * 4, 0, 0, 256]);
    assert_eq!(m.other_bytes, 64);
}

#[test]
fn gguf_pattern_key_overrides_and_unknown_windows_apply_nowhere() {
    let base = |arch: &str| {
        Gguf::new()
            .kv("general.architecture", Kv::Str(arch.into()))
            .kv(&format!("{arch}.block_count"), Kv::U32(3))
            .kv(&format!("{arch}.attention.sliding_window"), Kv::U32(128))
    };
    let flags = base("x").kv(
        "x.attention.sliding_window_pattern",
        Kv::Bools(vec![false, true, true]),
    );
    assert_eq!(
        parse_gguf(&flags.bytes()).unwrap().sliding_window_layers,
        [false, true, true]
    );
    let period = base("x").kv("x.attention.sliding_window_pattern", Kv::U32(3));
    assert_eq!(
        parse_gguf(&period.bytes()).unwrap().sliding_window_layers,
        [true, true, false]
    );
    let unknown = parse_gguf(&base("phi3").bytes()).unwrap();
    assert_eq!(
        (unknown.sliding_window, unknown.sliding_window_layers),
        (Some(128), vec![false; 3])
    );
    let short = base("x").kv("x.attention.sliding_window_pattern", Kv::Bools(vec![true]));
    assert!(
        matches!(parse_gguf(&short.bytes()), Err(Error::InvalidModel { reason, .. })
        if reason == "x.attention.sliding_window_pattern has 1 entries for 3 layers")
    );
}

#[test]
fn gguf_every_type_sizes_rows_by_blocks() {
    // One tensor of each type with a 256-element row (a whole number of
    // blocks for all of them), and its bytes from the type table.
    for ty in model_budget_core::model::ggml_type::TYPES {
        let g = Gguf::new().tensor("t", &[256, 3], 0);
        let (mut bytes, layout) = g.header();
        let type_at = layout.entries[0] + 8 + 1 + 4 + 16;
        bytes[type_at as usize..type_at as usize + 4].copy_from_slice(&ty.id.to_le_bytes());
        let size = 256 / ty.block_size * ty.type_size * 3;
        bytes.resize(bytes.len() + size as usize, 0);
        let m = parse_gguf(&bytes).unwrap();
        assert_eq!(
            m.types[ty.name],
            TypeStats {
                n_tensors: 1,
                n_params: 768,
                bytes: size
            },
            "{}",
            ty.name
        );
    }
}

/// Bytes of `g` with `f` applied, then parsed.
fn mutated(g: &Gguf, f: impl FnOnce(&mut Vec<u8>, &support::Layout)) -> Result<Model, Error> {
    let (_, layout) = g.header();
    let mut bytes = g.bytes();
    f(&mut bytes, &layout);
    parse_gguf(&bytes)
}

fn put_u32(bytes: &mut [u8], at: u64, v: u32) {
    bytes[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: u64, v: u64) {
    bytes[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn gguf_refuses_bad_magic_and_versions() {
    let g = tiny();
    assert_eq!(
        mutated(&g, |b, _| b[0] = b'X').unwrap_err(),
        invalid(0, "not a GGUF file (no GGUF magic)")
    );
    assert_eq!(
        mutated(&g, |b, _| put_u32(b, 4, 1)).unwrap_err(),
        invalid(4, "GGUF version 1 is not supported (versions 2 and 3 are)")
    );
    assert_eq!(
        mutated(&g, |b, _| put_u32(b, 4, 3u32.swap_bytes())).unwrap_err(),
        invalid(4, "big-endian GGUF files are not supported")
    );
    assert_eq!(
        mutated(&g, |b, _| put_u32(b, 4, 4)).unwrap_err(),
        invalid(4, "GGUF version 4 is not supported (versions 2 and 3 are)")
    );
    assert_eq!(
        parse_gguf(b"GGU").unwrap_err(),
        invalid(0, "magic needs 4 bytes but the file ends 3 bytes later")
    );
}

#[test]
fn gguf_refuses_counts_the_file_cannot_hold() {
    let g = tiny();
    let len = g.bytes().len() as u64;
    let err = mutated(&g, |b, _| put_u64(b, 8, u64::MAX)).unwrap_err();
    assert_eq!(
        err,
        invalid(
            8,
            &format!(
                "declares {} tensors, more than the {} remaining bytes can hold",
                u64::MAX,
                len - 24
            )
        )
    );
    let err = mutated(&g, |b, _| put_u64(b, 16, 1 << 40)).unwrap_err();
    assert!(
        matches!(err, Error::InvalidModel { offset: 16, .. }),
        "{err:?}"
    );
}

#[test]
fn gguf_refuses_strings_and_arrays_longer_than_the_file() {
    // The first key's length, at byte 24.
    let err = mutated(&tiny(), |b, _| put_u64(b, 24, 1 << 50)).unwrap_err();
    let Error::InvalidModel { offset, reason } = err else {
        panic!()
    };
    assert_eq!(offset, 32);
    assert!(
        reason.starts_with("metadata key needs 1125899906842624 bytes"),
        "{reason}"
    );

    let g = Gguf::new().kv("a", Kv::U32s(vec![1, 2]));
    // key len (8) + "a" + type (4) + element type (4) = count at 24 + 17.
    let count_at = 24 + 8 + 1 + 4 + 4;
    let err = mutated(&g, |b, _| put_u64(b, count_at, u64::MAX / 2)).unwrap_err();
    assert_eq!(
        err,
        invalid(
            count_at,
            "a declares 9223372036854775807 elements, past 2^64 bytes"
        )
    );
    let err = mutated(&g, |b, _| put_u64(b, count_at, 1 << 40)).unwrap_err();
    assert!(
        matches!(err, Error::InvalidModel { offset, .. } if offset == count_at + 8),
        "{err:?}"
    );
}

#[test]
fn gguf_refuses_unknown_value_types_and_nested_arrays() {
    let g = Gguf::new().kv("a", Kv::U32(1));
    let type_at = 24 + 8 + 1;
    assert_eq!(
        mutated(&g, |b, _| put_u32(b, type_at, 13)).unwrap_err(),
        invalid(type_at, "a has unknown value type 13")
    );
    let g = Gguf::new().kv("a", Kv::U32s(vec![]));
    assert_eq!(
        mutated(&g, |b, _| put_u32(b, type_at + 4, 9)).unwrap_err(),
        invalid(type_at + 4, "a is an array of arrays")
    );
}

#[test]
fn gguf_refuses_duplicates() {
    let g = Gguf::new().kv("a", Kv::U32(1)).kv("a", Kv::U32(2));
    assert_eq!(
        parse_gguf(&g.bytes()).unwrap_err(),
        invalid(24 + 17, "duplicate metadata key a")
    );
    let g = Gguf::new().tensor("t", &[4], F32).tensor("t", &[4], F32);
    let (_, layout) = g.header();
    assert_eq!(
        parse_gguf(&g.bytes()).unwrap_err(),
        invalid(layout.entries[1], "duplicate tensor name t")
    );
}

#[test]
fn gguf_refuses_bad_tensor_entries() {
    let g = Gguf::new().tensor("t", &[256, 2], Q4_K);
    let entry = g.header().1.entries[0];
    let n_dims_at = entry + 8 + 1;
    let type_at = n_dims_at + 4 + 16;
    let offset_at = type_at + 4;
    assert_eq!(
        mutated(&g, |b, _| put_u32(b, n_dims_at, 5)).unwrap_err(),
        invalid(n_dims_at, "tensor t has 5 dimensions, more than 4")
    );
    assert_eq!(
        mutated(&g, |b, _| put_u32(b, type_at, 33)).unwrap_err(),
        invalid(
            type_at,
            "tensor t: ggml type 33 (Q4_0_8_8) was removed from ggml; requantize the model"
        )
    );
    assert_eq!(
        mutated(&g, |b, _| put_u32(b, type_at, 200)).unwrap_err(),
        invalid(type_at, "tensor t: unknown ggml type 200")
    );
    assert_eq!(
        mutated(&g, |b, _| put_u64(b, n_dims_at + 4, 100)).unwrap_err(),
        invalid(
            entry,
            "tensor t of type Q4_K has rows of 100 elements, not a multiple of its block size 256"
        )
    );
    assert_eq!(
        mutated(&g, |b, _| put_u64(b, n_dims_at + 4, 1 << 63)).unwrap_err(),
        invalid(
            n_dims_at + 4,
            "tensor t has a dimension of 9223372036854775808"
        )
    );
    assert_eq!(
        mutated(&g, |b, _| {
            put_u64(b, n_dims_at + 4, 1 << 40);
            put_u64(b, n_dims_at + 12, 1 << 40);
        })
        .unwrap_err(),
        invalid(entry, "tensor t has more than 2^63 elements")
    );
    assert_eq!(
        mutated(&g, |b, _| put_u64(b, offset_at, 16)).unwrap_err(),
        invalid(
            offset_at,
            "tensor t has offset 16, not a multiple of the alignment 32"
        )
    );
    let err = mutated(&g, |b, _| put_u64(b, offset_at, u64::MAX - 31)).unwrap_err();
    assert_eq!(err, invalid(entry, "tensor t starts past 2^64"));
}

#[test]
fn gguf_refuses_regions_past_the_end_and_overlaps() {
    let g = Gguf::new().tensor("a", &[8], F32).tensor("b", &[8], F32);
    let (_, layout) = g.header();
    let mut bytes = g.bytes();
    bytes.pop();
    let len = bytes.len();
    assert_eq!(
        parse_gguf(&bytes).unwrap_err(),
        invalid(
            layout.entries[1],
            &format!(
                "tensor b occupies bytes {}..{}, past the end of the file ({len} bytes)",
                layout.data_start + 32,
                layout.data_start + 64
            )
        )
    );
    let offset_at = layout.entries[1] + 8 + 1 + 4 + 8 + 4;
    assert_eq!(
        mutated(&g, |b, _| put_u64(b, offset_at, 0)).unwrap_err(),
        invalid(layout.entries[1], "tensor b overlaps tensor a")
    );
}

#[test]
fn gguf_checks_alignment_and_kept_values() {
    let with = |v: Kv| {
        let mut g = Gguf::new()
            .kv("general.alignment", v)
            .tensor("t", &[8], F32);
        g.alignment = 64;
        g
    };
    assert_eq!(
        parse_gguf(&with(Kv::U32(64)).bytes()).unwrap().weight_bytes,
        32
    );
    assert_eq!(
        parse_gguf(&with(Kv::U32(48)).bytes()).unwrap_err(),
        invalid(
            24 + 8 + 17 + 4,
            "general.alignment is 48, not a power of two"
        )
    );
    assert!(parse_gguf(&with(Kv::U64(64)).bytes()).is_err());
    let g = Gguf::new().kv("general.architecture", Kv::U32(1));
    assert_eq!(
        parse_gguf(&g.bytes()).unwrap_err(),
        invalid(24 + 8 + 20 + 4, "general.architecture is not a string")
    );
    let g = Gguf::new()
        .kv("general.architecture", Kv::Str("x".into()))
        .kv("x.block_count", Kv::I32(-1));
    assert!(
        matches!(parse_gguf(&g.bytes()), Err(Error::InvalidModel { reason, .. })
        if reason == "x.block_count is -1, expected a non-negative integer")
    );
    let g = Gguf::new()
        .kv("general.architecture", Kv::Str("x".into()))
        .kv("x.block_count", Kv::U64(MAX_LAYERS + 1));
    assert!(
        matches!(parse_gguf(&g.bytes()), Err(Error::InvalidModel { reason, .. })
        if reason == "x.block_count is 65537, more than the 65536 layers a model may have")
    );
    let g = Gguf::new().kv("general.name", Kv::Str("n".repeat(5000)));
    assert!(
        matches!(parse_gguf(&g.bytes()), Err(Error::InvalidModel { reason, .. })
        if reason == "general.name is 5000 bytes long, more than 4096")
    );
}

#[test]
fn gguf_per_layer_arrays_hold_counts() {
    let g = Gguf::new()
        .kv("general.architecture", Kv::Str("x".into()))
        .kv("x.block_count", Kv::U32(2))
        .kv("x.attention.head_count_kv", Kv::I32s(vec![4, -1]));
    // 24-byte preamble, 41 + 29 bytes of the first two entries, then the
    // key (8 + 25), value type, element type and count: the second element.
    let at = 24 + 41 + 29 + 33 + 4 + 4 + 8 + 4;
    assert_eq!(
        parse_gguf(&g.bytes()).unwrap_err(),
        invalid(
            at,
            "x.attention.head_count_kv holds -1, expected a count below 2^32"
        )
    );
    let floats = Gguf::new()
        .kv("general.architecture", Kv::Str("x".into()))
        .kv("x.block_count", Kv::U32(2))
        .kv("x.attention.head_count", Kv::F32s(vec![1.0, 2.0]));
    assert!(
        matches!(parse_gguf(&floats.bytes()), Err(Error::InvalidModel { reason, .. })
        if reason == "x.attention.head_count holds 2 non-integer or too many entries")
    );
}

#[test]
fn gguf_without_tensors_or_metadata_is_a_valid_empty_model() {
    let m = parse_gguf(&Gguf::new().bytes()).unwrap();
    assert_eq!((m.weight_bytes, m.n_layers, m.architecture), (0, 0, None));
    assert_eq!(m.file_bytes, 32);
}

fn st_llama() -> Vec<(&'static str, &'static str, Vec<u64>)> {
    vec![
        ("model.embed_tokens.weight", "BF16", vec![1000, 64]),
        (
            "model.layers.0.self_attn.q_proj.weight",
            "BF16",
            vec![64, 64],
        ),
        ("model.layers.0.self_attn.q_proj.bias", "BF16", vec![64]),
        (
            "model.layers.1.mlp.down_proj.weight",
            "F8_E4M3",
            vec![64, 128],
        ),
        ("model.norm.weight", "F32", vec![64]),
        ("lm_head.weight", "BF16", vec![1000, 64]),
    ]
}

#[test]
fn safetensors_counts_are_exact() {
    let bytes = support::safetensors(&st_llama());
    let m = parse_st(&bytes).unwrap();
    assert_eq!(m.format, Format::Safetensors);
    assert_eq!(m.layer_bytes, [64 * 64 * 2 + 128, 64 * 128]);
    assert_eq!((m.input_bytes, m.output_bytes), (128_000, 128_000 + 256));
    assert_eq!(m.weight_bytes, 128_000 * 2 + 8192 + 128 + 8192 + 256);
    assert_eq!((m.n_embd, m.n_vocab), (Some(64), Some(1000)));
    assert_eq!(
        m.types["F8_E4M3"],
        TypeStats {
            n_tensors: 1,
            n_params: 8192,
            bytes: 8192
        }
    );
    assert_eq!(m.file_bytes, bytes.len() as u64);
}

#[test]
fn safetensors_sub_byte_dtypes() {
    let m = parse_st(&support::safetensors(&[("w", "F4", vec![3, 2])])).unwrap();
    assert_eq!(
        m.types["F4"],
        TypeStats {
            n_tensors: 1,
            n_params: 6,
            bytes: 3
        }
    );
    let odd = "{\"w\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}";
    let err = parse_st(&raw_st(odd, 1)).unwrap_err();
    assert_eq!(
        err,
        invalid(
            13,
            "tensor w of 3 F4 elements is not a whole number of bytes"
        )
    );
}

/// A safetensors file with this exact header text and `data` bytes.
fn raw_st(header: &str, data: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.resize(out.len() + data, 0);
    out
}

#[test]
fn safetensors_refuses_malformed_headers() {
    let entry = |dtype: &str, shape: &str, offsets: &str| {
        format!("{{\"w\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":{offsets}}}}}")
    };
    let st = |h: &str, data| parse_st(&raw_st(h, data)).unwrap_err();
    assert_eq!(
        parse_st(&[1, 0, 0]).unwrap_err(),
        invalid(
            0,
            "header length needs 8 bytes but the file ends 3 bytes later"
        )
    );
    assert_eq!(
        parse_st(&u64::MAX.to_le_bytes()).unwrap_err(),
        invalid(
            0,
            "header length 18446744073709551615 is more than the 100000000 bytes the format allows"
        )
    );
    assert_eq!(
        parse_st(&[9, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap_err(),
        invalid(0, "header length 9 runs past the end of the file (9 bytes)")
    );
    assert_eq!(
        parse_st(&raw_st("{\"\u{e9}", 0)[..11]).unwrap_err(),
        invalid(
            0,
            "header length 4 runs past the end of the file (11 bytes)"
        )
    );
    let mut bad_utf8 = raw_st("{\"ab\":1}", 0);
    bad_utf8[10] = 0xff;
    assert_eq!(
        parse_st(&bad_utf8).unwrap_err(),
        invalid(10, "header is not valid UTF-8")
    );
    assert!(matches!(
        st("[1,2]", 0),
        Error::InvalidModel { offset: 8, .. }
    ));
    assert_eq!(
        st(&entry("Q4", "[2]", "[0,2]"), 2),
        invalid(13, "tensor w has unknown dtype \"Q4\"")
    );
    assert_eq!(
        st(&entry("F16", "[2]", "[0,3]"), 3),
        invalid(
            13,
            "tensor w of dtype F16 and shape [2] needs 4 bytes but its data_offsets [0, 3] hold 3"
        )
    );
    assert_eq!(
        st(&entry("F16", "[2]", "[4,0]"), 4),
        invalid(
            13,
            "tensor w of dtype F16 and shape [2] needs 4 bytes but its data_offsets [4, 0] hold 0"
        )
    );
    assert_eq!(
        st(&entry("F16", "[4294967296,4294967296]", "[0,0]"), 0),
        invalid(13, "tensor w has more than 2^64 elements")
    );
    assert_eq!(
        st(&entry("F16", "[2]", "[4,8]"), 8),
        invalid(13, "tensor w starts at data byte 4, expected 0: tensors must follow each other without gaps or overlap")
    );
    let h = entry("F16", "[2]", "[0,4]");
    assert_eq!(
        st(&h, 3),
        invalid(
            13,
            &format!(
                "tensor w ends at data byte 4, past the end of the file ({} bytes)",
                8 + h.len() + 3
            )
        )
    );
    let end = 8 + h.len() as u64 + 4;
    assert_eq!(
        st(&h, 5),
        invalid(
            end,
            &format!(
                "the tensors end at byte {end} but the file has {} bytes",
                end + 1
            )
        )
    );
    let err = st(&entry("F16", "[-2]", "[0,4]"), 4);
    assert!(
        matches!(&err, Error::InvalidModel { reason, .. } if reason.starts_with("tensor w: invalid value: integer `-2`")),
        "{err:?}"
    );
    let dup = "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}";
    assert_eq!(st(dup, 2), invalid(65, "duplicate tensor name w"));
}

#[test]
fn read_reports_file_system_errors_by_name() {
    assert!(matches!(
        read("/nonexistent/model.gguf".as_ref()),
        Err(Error::Io { code: "enoent", .. })
    ));
}

#[test]
fn read_resolves_folders_indexes_and_configs() {
    let dir = std::env::temp_dir().join(format!("mb-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tensors = st_llama();
    std::fs::write(
        dir.join("model-00001-of-00002.safetensors"),
        support::safetensors(&tensors[..3]),
    )
    .unwrap();
    std::fs::write(
        dir.join("model-00002-of-00002.safetensors"),
        support::safetensors(&tensors[3..]),
    )
    .unwrap();
    let map: Vec<String> = tensors
        .iter()
        .enumerate()
        .map(|(i, (name, ..))| {
            format!(
                "\"{name}\": \"model-0000{}-of-00002.safetensors\"",
                1 + (i >= 3) as u8
            )
        })
        .collect();
    let index = format!(
        "{{\"metadata\": {{\"total_size\": 1}}, \"weight_map\": {{{}}}}}",
        map.join(", ")
    );
    std::fs::write(dir.join("model.safetensors.index.json"), &index).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096}"#,
    )
    .unwrap();
    let m = read(&dir).unwrap();
    assert_eq!(m.architecture.as_deref(), Some("llama"));
    assert_eq!((m.n_layers, m.context_length), (2, Some(4096)));
    assert_eq!(m.n_head_kv, Some(PerLayer::Uniform(1)));
    assert_eq!(m.head_dim_k, Some(32));
    assert_eq!(
        m.weight_bytes,
        parse_st(&support::safetensors(&tensors))
            .unwrap()
            .weight_bytes
    );

    let evil = index.replace(
        "model-00002-of-00002.safetensors",
        "../model-00002-of-00002.safetensors",
    );
    std::fs::write(dir.join("model.safetensors.index.json"), &evil).unwrap();
    let err = read(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidModel { reason, .. }
        if reason == "model.safetensors.index.json: shard \"../model-00002-of-00002.safetensors\" is not a file beside the index"),
        "{err:?}"
    );
    let missing = index.replace("lm_head.weight", "lm_head.bias");
    std::fs::write(dir.join("model.safetensors.index.json"), &missing).unwrap();
    let err = read(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidModel { reason, .. }
        if reason == "model.safetensors.index.json: names model-00002-of-00002.safetensors for tensor lm_head.bias, which that shard does not hold"),
        "{err:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn read_gathers_the_splits_of_a_split_gguf() {
    let dir = std::env::temp_dir().join(format!("mb-split-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let whole = tiny();
    let expected = parse_gguf(&whole.bytes()).unwrap();
    // Split as gguf-split does: metadata in the first file, tensors spread.
    let split = |no: u16, range: std::ops::Range<usize>| {
        let mut g = Gguf::new();
        if no == 0 {
            g.kvs = whole.kvs.clone();
        }
        g = g.kv("split.no", Kv::U16(no)).kv("split.count", Kv::U16(3));
        g.tensors = whole.tensors[range].to_vec();
        g
    };
    let name = |i: u16| dir.join(format!("tiny-{i:05}-of-00003.gguf"));
    let parts = [split(0, 0..5), split(1, 5..12), split(2, 12..21)];
    for (i, g) in parts.iter().enumerate() {
        std::fs::write(name(i as u16 + 1), g.bytes()).unwrap();
    }
    let m = read(&name(2)).unwrap();
    assert_eq!(read(&name(1)).unwrap(), m);
    let file_bytes: u64 = parts.iter().map(|g| g.bytes().len() as u64).sum();
    assert_eq!(
        m,
        Model {
            file_bytes,
            ..expected
        }
    );

    std::fs::write(name(3), split(1, 12..21).bytes()).unwrap();
    assert_eq!(
        read(&name(1)).unwrap_err(),
        invalid(
            0,
            "tiny-00003-of-00003.gguf: is split 1 of 3, expected split 2 of 3"
        )
    );
    std::fs::write(name(3), split(2, 11..21).bytes()).unwrap();
    let err = read(&name(1)).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidModel { reason, .. }
        if reason == "tiny-00003-of-00003.gguf: tensor blk.1.attn_q.weight is also in another split"),
        "{err:?}"
    );
    std::fs::remove_file(name(3)).unwrap();
    assert!(matches!(
        read(&name(1)),
        Err(Error::Io { code: "enoent", .. })
    ));
    let odd = dir.join("tiny.gguf");
    std::fs::write(&odd, split(0, 0..5).bytes()).unwrap();
    assert_eq!(
        read(&odd).unwrap_err(),
        invalid(
            0,
            "split.count is 3 but the file name is not NAME-0000N-of-00003.gguf"
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Invariants of any model the readers accept.
fn consistent(m: &Model, len: u64) {
    assert!(m.weight_bytes <= len);
    let parts = m.layer_bytes.iter().sum::<u64>() + m.input_bytes + m.output_bytes + m.other_bytes;
    // A tied head is the embedding matrix counted a second time.
    if m.tied_embeddings {
        assert!(parts >= m.weight_bytes && parts - m.weight_bytes <= m.input_bytes);
    } else {
        assert_eq!(parts, m.weight_bytes);
    }
    assert_eq!(m.layer_bytes.len() as u64, m.n_layers);
    assert_eq!(
        m.types.values().map(|t| t.bytes).sum::<u64>(),
        m.weight_bytes
    );
}

fn gguf_case() -> impl Strategy<Value = Vec<u8>> {
    (
        1u64..4,
        prop::bool::ANY,
        prop::sample::select(vec![F32, Q8_0, Q4_K, 14, 23]),
    )
        .prop_map(|(layers, tied, ty)| llama(layers, 256, 256, 40, 2, ty, tied).bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_gguf_files_read_consistently(bytes in gguf_case()) {
        consistent(&parse_gguf(&bytes).unwrap(), bytes.len() as u64);
    }

    #[test]
    fn truncated_gguf_files_are_refused(bytes in gguf_case(), cut in 0.0f64..1.0) {
        let cut = (bytes.len() as f64 * cut) as usize;
        prop_assert!(parse_gguf(&bytes[..cut]).is_err());
    }

    #[test]
    fn mutated_gguf_files_never_panic(
        bytes in gguf_case(),
        edits in prop::collection::vec((0.0f64..1.0, any::<u8>()), 1..8),
    ) {
        let mut bytes = bytes;
        // Mutate the header, where all the parsing happens.
        let header = parse_gguf(&bytes).map(|m| m.file_bytes - m.weight_bytes).unwrap_or(64) as usize;
        for (at, byte) in edits {
            let i = ((header.min(bytes.len()) as f64) * at) as usize;
            bytes[i] = byte;
        }
        if let Ok(m) = parse_gguf(&bytes) {
            consistent(&m, bytes.len() as u64);
        }
    }

    #[test]
    fn truncated_and_mutated_safetensors_never_panic(
        cut in 0.0f64..1.0,
        edits in prop::collection::vec((0.0f64..1.0, any::<u8>()), 0..6),
    ) {
        let mut bytes = support::safetensors(&st_llama());
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let truncate = edits.is_empty();
        for (at, byte) in edits {
            bytes[(header as f64 * at) as usize] = byte;
        }
        if truncate {
            bytes.truncate((bytes.len() as f64 * cut) as usize);
            prop_assert!(parse_st(&bytes).is_err());
        } else if let Ok(m) = parse_st(&bytes) {
            consistent(&m, bytes.len() as u64);
        }
    }
}

/// Writes small valid files for the fuzzers to start from:
/// `FUZZ_SEEDS=$PWD/fuzz/seeds cargo test --release -p model_budget_core --test model -- --ignored`
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = std::path::PathBuf::from(std::env::var("FUZZ_SEEDS").expect("FUZZ_SEEDS"));
    let write = |target: &str, name: &str, bytes: Vec<u8>| {
        std::fs::create_dir_all(dir.join(target)).unwrap();
        std::fs::write(dir.join(target).join(name), bytes).unwrap();
    };
    let mut v2 = llama(1, 32, 32, 8, 1, Q8_0, true);
    v2.version = 2;
    write("gguf", "llama-tied-v2", v2.bytes());
    write("gguf", "llama", llama(2, 32, 32, 6, 1, Q8_0, false).bytes());
    let gemma = Gguf::new()
        .kv("general.architecture", Kv::Str("gemma2".into()))
        .kv("general.alignment", Kv::U32(64))
        .kv("gemma2.block_count", Kv::U32(2))
        .kv("gemma2.attention.head_count", Kv::U32s(vec![2, 4]))
        .kv("gemma2.attention.head_count_kv", Kv::I32s(vec![1, 2]))
        .kv("gemma2.attention.sliding_window", Kv::U64(64))
        .kv(
            "gemma2.attention.sliding_window_pattern",
            Kv::Bools(vec![true, false]),
        )
        .kv("gemma2.expert_count", Kv::U8(4))
        .kv("gemma2.rope.scale", Kv::F32s(vec![1.0, 2.0]))
        .kv(
            "tokenizer.ggml.tokens",
            Kv::Strs(vec!["a".into(), "bc".into()]),
        )
        .tensor("blk.0.ffn_gate_exps.weight", &[32, 2, 4], Q8_0)
        .tensor("blk.1.attn_norm.weight", &[8], F32)
        .tensor("token_embd.weight", &[8, 2], F32)
        .tensor("output_norm.weight", &[8], F32);
    let mut gemma = gemma;
    gemma.alignment = 64;
    write("gguf", "gemma2-arrays", gemma.bytes());
    let small = [
        ("model.embed_tokens.weight", "BF16", vec![6, 8]),
        (
            "model.layers.0.self_attn.q_proj.weight",
            "F8_E4M3",
            vec![8, 8],
        ),
        ("model.layers.0.self_attn.q_proj.bias", "F4", vec![8]),
        ("model.layers.1.mlp.experts.3.w1.weight", "I64", vec![2, 2]),
        ("model.norm.weight", "F32", vec![8]),
        ("lm_head.weight", "BF16", vec![6, 8]),
    ];
    write("safetensors", "llama", support::safetensors(&small));
    write("safetensors", "one", support::safetensors(&small[4..5]));
}
