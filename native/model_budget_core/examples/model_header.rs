//! Reads one model's header and reports what it cost: wall time and the
//! process's peak resident memory (Linux `VmHWM`) before and after. Used by
//! bench/model.exs to show that memory does not grow with the model's size.
//!
//! `cargo run --release -p model_budget_core --example model_header -- PATH`

use std::time::Instant;

/// Peak resident set size of this process so far, in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: model_header PATH");
        std::process::exit(2);
    };
    let before = peak_kib();
    let start = Instant::now();
    let result = model_budget_core::model::read(path.as_ref());
    let micros = start.elapsed().as_micros();
    let after = peak_kib();
    match result {
        Ok(m) => println!(
            "file_bytes={} weight_bytes={} n_params={} micros={micros} peak_before_kib={before} peak_after_kib={after}",
            m.file_bytes, m.weight_bytes, m.n_params
        ),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
