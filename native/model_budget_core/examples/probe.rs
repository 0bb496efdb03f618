//! Prints what the device probe sees, and what it costs:
//! `cargo run --release --example probe -p model_budget_core [-- --quiet]`.
//! `--quiet` prints only the status and GPUs (for scripted comparisons).

use std::hint::black_box;
use std::time::{Duration, Instant};

use model_budget_core::machine::devices::{self, GpuStatus};
use model_budget_core::machine::system;

const RUNS: usize = 1000;

fn main() {
    let quiet = std::env::args().any(|a| a == "--quiet");
    let visible = devices::visible::from_env();
    let visible = visible.as_deref();
    println!("CUDA_VISIBLE_DEVICES={visible:?}");

    let started = Instant::now();
    let status = devices::status(visible);
    let first_status = started.elapsed();
    let started = Instant::now();
    let gpus = devices::devices(visible);
    let first_devices = started.elapsed();
    match &status {
        GpuStatus::Ok {
            driver_version,
            count,
        } => println!("status: ok, driver {driver_version}, {count} visible GPU(s)"),
        GpuStatus::Unavailable(why) => println!("status: unavailable: {why}"),
    }
    for gpu in &gpus {
        println!(
            "gpu_index={} nvml_index={} name={:?} uuid={} memory_total={} ({} MiB) memory_free={} ({} MiB) memory_used={} ({} MiB)",
            gpu.gpu_index,
            gpu.nvml_index,
            gpu.name,
            gpu.uuid,
            gpu.memory_total,
            gpu.memory_total >> 20,
            gpu.memory_free,
            gpu.memory_free >> 20,
            gpu.memory_used,
            gpu.memory_used >> 20,
        );
    }
    if quiet {
        return;
    }

    let started = Instant::now();
    let mem = system::memory();
    let first_memory = started.elapsed();
    println!(
        "system memory: total={} available={} limit={}",
        mem.total, mem.available, mem.limit
    );
    println!("first status() (starts NVML): {first_status:?}");
    println!("first devices() after it: {first_devices:?}");
    println!("first system::memory(): {first_memory:?}");
    report("devices()", || drop(black_box(devices::devices(visible))));
    report("status()", || drop(black_box(devices::status(visible))));
    report("system::memory()", || {
        black_box(system::memory());
    });
}

/// Median and spread of `RUNS` calls of `f`.
fn report(what: &str, mut f: impl FnMut()) {
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort_unstable();
    let at = |q: usize| times[(times.len() - 1) * q / 100];
    println!(
        "{what} x{RUNS} after the first: median {:?} p10 {:?} p90 {:?} max {:?}",
        at(50),
        at(10),
        at(90),
        at(100)
    );
}
