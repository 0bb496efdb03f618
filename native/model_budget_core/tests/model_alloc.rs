//! No header, however hostile, makes the readers allocate far beyond the
//! file's own size: every declared count is checked against the bytes left
//! before anything is sized by it. Measured with a counting allocator (its
//! own test binary, so nothing else runs under it).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};

use model_budget_core::model::{gguf, safetensors};
use proptest::prelude::*;

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// The largest single allocation while reading `bytes` both ways.
fn largest(bytes: &[u8]) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    let _ = gguf::parse(Cursor::new(bytes), bytes.len() as u64);
    let _ = safetensors::parse(Cursor::new(bytes), bytes.len() as u64);
    LARGEST.load(Ordering::Relaxed)
}

/// Per-entry bookkeeping may be a few times the entry's bytes in the file
/// (and vectors grow by doubling); the read buffer is 64 KiB at most.
fn bound(len: usize) -> usize {
    4 * len + 64 * 1024 + 4096
}

fn gguf_with_counts(tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b.resize(4096, 0);
    b
}

#[test]
fn hostile_counts_and_lengths_allocate_within_the_file_size() {
    let cases = [
        gguf_with_counts(u64::MAX, 0),
        gguf_with_counts(170, 0),
        gguf_with_counts(0, 315),
        // a string array claiming 2^61 elements
        {
            let mut b = gguf_with_counts(0, 1);
            b[24..32].copy_from_slice(&1u64.to_le_bytes());
            b[32] = b'a';
            b[33..37].copy_from_slice(&9u32.to_le_bytes());
            b[37..41].copy_from_slice(&8u32.to_le_bytes());
            b[41..49].copy_from_slice(&(1u64 << 61).to_le_bytes());
            b
        },
        // safetensors: a header length of 2^40, and a header of empty keys
        (1u64 << 40).to_le_bytes().to_vec(),
        {
            let body = format!("{{{}\"\":0}}", "\"\":0,".repeat(800));
            let mut b = (body.len() as u64).to_le_bytes().to_vec();
            b.extend(body.as_bytes());
            b
        },
        support::llama(2, 256, 512, 2000, 2, 8, false).bytes(),
        // the longest per-layer array kept, one byte per entry
        support::Gguf::new()
            .kv(
                "x.attention.head_count_kv",
                support::Kv::Bools(vec![true; 1 << 16]),
            )
            .bytes(),
    ];
    for bytes in &cases {
        let got = largest(bytes);
        assert!(
            got <= bound(bytes.len()),
            "{got} bytes for a {}-byte file",
            bytes.len()
        );
    }

    proptest!(ProptestConfig::with_cases(300), |(
        seed in 0usize..2,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in any::<prop::sample::Index>(),
    )| {
        let mut bytes = if seed == 0 {
            support::llama(1, 256, 256, 300, 2, 12, true).bytes()
        } else {
            support::safetensors(&[("model.embed_tokens.weight", "BF16", vec![300, 64])])
        };
        let header = (bytes.len() / 2).min(20_000);
        for (at, byte) in edits {
            bytes[at.index(header)] = byte;
        }
        bytes.truncate(cut.index(bytes.len()) + 1);
        let got = largest(&bytes);
        prop_assert!(got <= bound(bytes.len()), "{} bytes for a {}-byte file", got, bytes.len());
    });
}
