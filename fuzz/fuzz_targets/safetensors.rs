//! Any bytes as a safetensors file: a model or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_budget_core::model::safetensors;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = safetensors::parse(std::io::Cursor::new(data), data.len() as u64) {
        assert!(m.weight_bytes + 8 <= data.len() as u64);
        assert_eq!(m.layer_bytes.len() as u64, m.n_layers);
    }
});
