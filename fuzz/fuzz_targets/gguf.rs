//! Any bytes as a GGUF file: the reader returns a model or an error, never
//! panics, and (with `-malloc_limit_mb`) never allocates past the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_budget_core::model::gguf;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = gguf::parse(std::io::Cursor::new(data), data.len() as u64) {
        assert!(m.weight_bytes <= data.len() as u64);
        assert_eq!(m.layer_bytes.len() as u64, m.n_layers);
    }
});
