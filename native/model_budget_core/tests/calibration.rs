//! The estimator against real llama.cpp: every case of the recorded tables
//! placed with the same file and options, term by term, within the bounds
//! of the calibration issues. The CPU sets (test/fixtures/truth/*.json,
//! one per machine and build) are written by scripts/llama_cpp_truth.py
//! through `make calibrate`, each with the runtime profile it was recorded
//! with, and each is checked with that profile, whatever CPU runs this
//! test. The GPU table (test/fixtures/llama_cpp_gpu_truth.json) is
//! transcribed from public CUDA logs, each case with its source. Run with
//! `--nocapture` (as `make calibrate` does) for the tables.

use std::path::PathBuf;

use model_budget_core::estimate::layout::cpu_buffers::{CpuBuffers, ExtraBuffer};
use model_budget_core::estimate::layout::kv::CacheType;
use model_budget_core::estimate::layout::{breakdown, ModelShape, Share};
use model_budget_core::model::read_gguf_header;
use model_budget_core::{DistributeOptions, Mode, SplitMode};
use serde_json::Value;

const MIB: f64 = 1048576.0;
/// llama.cpp prints MiB with two decimals: each figure is within this.
const ROUNDING: f64 = 0.005 * MIB;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test/fixtures")
}

/// Bytes of the buffers of one term on `device` ("host" or "gpuN"; CPU
/// cases name none: all host) in the extra CPU buffer `extra`, or outside
/// every extra buffer for `None`.
fn truth(case: &Value, device: &str, term: &str, extra: Option<ExtraBuffer>) -> f64 {
    case["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["device"].as_str().unwrap_or("host") == device)
        .filter(|b| {
            b["term"] == term && ExtraBuffer::from_name(b["buffer"].as_str().unwrap()) == extra
        })
        .map(|b| b["mib"].as_f64().unwrap() * MIB)
        .sum()
}

/// The options of a case recorded with the runtime profile `cpu`.
fn options(o: &Value, cpu: CpuBuffers) -> DistributeOptions {
    let int = |k: &str| o[k].as_u64().unwrap();
    let flag = |k: &str| o[k].as_bool().unwrap();
    let cache = |k: &str| CacheType::from_name(o[k].as_str().unwrap()).unwrap();
    DistributeOptions {
        mode: Mode::Server,
        // GPU cases name these; CPU cases offload nothing.
        n_gpu_layers: o["n_gpu_layers"].as_i64().unwrap_or(0),
        offload_kqv: o["offload_kqv"].as_bool().unwrap_or(true),
        split_mode: match o["split_mode"].as_str() {
            Some("row") => SplitMode::Row,
            Some("none") => SplitMode::None,
            _ => SplitMode::Layer,
        },
        tensor_split: o["tensor_split"]
            .as_array()
            .map(|a| a.iter().map(|w| w.as_f64().unwrap()).collect())
            .unwrap_or_default(),
        // llama.cpp's buffers leave out the driver's context: compared apart.
        gpu_overhead: 0,
        n_ctx: Some(int("n_ctx")),
        n_batch: int("n_batch"),
        n_ubatch: int("n_ubatch"),
        n_parallel: int("n_parallel"),
        kv_unified: flag("kv_unified"),
        flash_attn: flag("flash_attn"),
        cache_type_k: cache("cache_type_k"),
        cache_type_v: cache("cache_type_v"),
        // `--no-repack` turns every extra CPU buffer off.
        cpu_buffers: if flag("repack") {
            cpu
        } else {
            CpuBuffers::None
        },
        mmap: flag("mmap"),
        // Nothing was served: the prompt cache is empty at load.
        cache_ram: 0,
        ..DistributeOptions::default()
    }
}

/// A term's error: (estimate - truth) / truth, with llama.cpp's rounding
/// forgiven; 0 when both are 0.
fn error(estimate: f64, truth: f64) -> f64 {
    let off = estimate - truth;
    let off = if off.abs() <= ROUNDING {
        0.0
    } else {
        off - ROUNDING * off.signum()
    };
    if truth == 0.0 {
        if off == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        off / truth
    }
}

struct Row {
    name: String,
    errors: [f64; 8],
    failures: Vec<String>,
}

const TERMS: [&str; 8] = [
    "weights", "amx", "kleidiai", "repack", "kv_cache", "compute", "output", "total",
];

fn compare(case: &Value, device: &str, share: &Share) -> Row {
    let estimates = [
        share.weights,
        share.amx,
        share.kleidiai,
        share.repack,
        share.kv_cache,
        share.compute,
        share.output,
        share.total().unwrap(),
    ]
    .map(|b| b as f64);
    let mut truths = [
        truth(case, device, "weights", None),
        truth(case, device, "weights", Some(ExtraBuffer::Amx)),
        truth(case, device, "weights", Some(ExtraBuffer::Kleidiai)),
        truth(case, device, "weights", Some(ExtraBuffer::Repack)),
        truth(case, device, "kv_cache", None),
        truth(case, device, "compute", None),
        truth(case, device, "output", None),
        0.0,
    ];
    truths[7] = truths[..7].iter().sum();
    let errors: [f64; 8] = std::array::from_fn(|i| error(estimates[i], truths[i]));
    let mut failures = Vec::new();
    // (term, lowest, highest) relative error allowed: weights, extra CPU
    // buffers, KV and output within 1%, compute within 10%, the total
    // never more than 2% low nor 5% high.
    for (i, (lo, hi)) in [
        (-0.01, 0.01),
        (-0.01, 0.01),
        (-0.01, 0.01),
        (-0.01, 0.01),
        (-0.01, 0.01),
        (-0.10, 0.10),
        (-0.01, 0.01),
        (-0.02, 0.05),
    ]
    .into_iter()
    .enumerate()
    {
        if !(lo..=hi).contains(&errors[i]) {
            failures.push(format!(
                "{} {:.2} MiB vs llama.cpp's {:.2} MiB",
                TERMS[i],
                estimates[i] / MIB,
                truths[i] / MIB
            ));
        }
    }
    let o = &case["options"];
    let gpu = if o["n_gpus"].is_null() {
        String::new()
    } else {
        format!(
            " ngl={}{} {}",
            o["n_gpu_layers"],
            if o["offload_kqv"] == false {
                " nkvo"
            } else {
                ""
            },
            device
        )
    };
    Row {
        name: format!(
            "{} ctx={} ub={} b={} np={}{} fa={} k={} v={} repack={} mmap={}{gpu}",
            case["file"].as_str().unwrap(),
            o["n_ctx"],
            o["n_ubatch"],
            o["n_batch"],
            o["n_parallel"],
            if o["kv_unified"] == true { "u" } else { "" },
            o["flash_attn"],
            o["cache_type_k"].as_str().unwrap(),
            o["cache_type_v"].as_str().unwrap(),
            o["repack"],
            o["mmap"]
        ),
        errors,
        failures,
    }
}

/// A recorded truth table in the fixtures.
fn read_table(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(name)).unwrap()).unwrap()
}

/// The runtime profile a CPU set was recorded with: the one it names,
/// which its `system_info` line (when recorded) must agree with.
fn profile(table: &Value, name: &str) -> CpuBuffers {
    let llama = &table["llama_cpp"];
    let named = llama["cpu_buffers"]
        .as_str()
        .and_then(CpuBuffers::from_name)
        .unwrap_or_else(|| panic!("{name}: llama_cpp.cpu_buffers names no runtime profile"));
    if let Some(line) = llama["system_info"].as_str() {
        assert_eq!(
            CpuBuffers::from_system_info(line),
            named,
            "{name}: the system_info line reads as another profile"
        );
    }
    named
}

/// Every CPU truth set: test/fixtures/truth/*.json, by name.
fn cpu_sets() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("truth"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .map(|n| format!("truth/{n}"))
        .collect();
    names.sort();
    names
}

/// The shape of a case's model, read from its header-only GGUF copy.
fn shape(table: &Value, case: &Value) -> ModelShape {
    let file = &table["files"][case["file"].as_str().unwrap()]["header"];
    let header = std::fs::read(fixtures().join(file.as_str().unwrap())).unwrap();
    ModelShape::try_from(&read_gguf_header(&header).unwrap()).unwrap()
}

#[test]
fn the_estimate_matches_llama_cpp_on_every_recorded_cpu_case() {
    let sets = cpu_sets();
    // The xllamacpp wheel's AVX2 set and a native build's AMX set at least.
    assert!(sets.len() >= 2, "recorded CPU sets: {sets:?}");
    let mut failed = Vec::new();
    for name in &sets {
        let table = read_table(name);
        let cpu = profile(&table, name);
        let cases = table["cases"].as_array().unwrap();
        assert!(cases.len() >= 20, "{name} holds {} cases", cases.len());
        let mut rows = Vec::new();
        for case in cases {
            let opts = options(&case["options"], cpu);
            let b = breakdown(&shape(&table, case), &opts, 0).unwrap();
            rows.push(compare(case, "host", &b.ram));
        }
        println!("{name} (runtime profile {})", cpu.name());
        if let Err(report) = check(&table, &rows) {
            failed.push(format!("{name}: {report}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// Prints the table; says why on any case outside the bounds.
fn check(table: &Value, rows: &[Row]) -> Result<(), String> {
    let mut report = format!(
        "llama.cpp: {}\n{:<100}{}\n",
        table["llama_cpp"]["source"],
        "case",
        TERMS.map(|t| format!("{t:>10}")).join("")
    );
    for r in rows {
        report += &format!(
            "{:<100}{}{}\n",
            r.name,
            r.errors.map(|e| format!("{:>+9.2}%", e * 100.0)).join(""),
            if r.failures.is_empty() { "" } else { "  FAIL" }
        );
    }
    let worst: [(f64, f64); 8] = std::array::from_fn(|i| {
        rows.iter().fold((0.0f64, 0.0f64), |(lo, hi), r| {
            (lo.min(r.errors[i]), hi.max(r.errors[i]))
        })
    });
    report += &format!(
        "{:<100} {}\n",
        "largest error below / above",
        worst
            .map(|(lo, hi)| format!(" {:+.1}/{:+.1}%", lo * 100.0, hi * 100.0))
            .join("")
    );
    println!("{report}");
    let failures: Vec<String> = rows
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| format!("{}: {}", r.name, r.failures.join("; ")))
        .collect();
    if failures.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} of {} cases outside the bounds:\n{}\n\n{report}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    ))
}

/// Whether a GPU case's source shows every buffer line of `device`: a
/// case that names the devices it checks (`checked`, where the source kept
/// only some devices' lines) is compared on those alone.
fn checked(case: &Value, device: &str) -> bool {
    match case["checked"].as_array() {
        Some(devices) => devices.iter().any(|d| d == device),
        None => true,
    }
}

#[test]
fn the_estimate_matches_llama_cpp_on_every_recorded_gpu_case() {
    let table = read_table("llama_cpp_gpu_truth.json");
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() >= 39, "the table holds {} cases", cases.len());
    let mut rows = Vec::new();
    for case in cases {
        let o = &case["options"];
        let n_gpus = o["n_gpus"].as_u64().unwrap() as u32;
        // With a GPU backend the host's weights go to its pinned buffer
        // (CUDA_Host): every case says `repack: false`.
        let b = breakdown(&shape(&table, case), &options(o, CpuBuffers::None), n_gpus).unwrap();
        if checked(case, "host") {
            rows.push(compare(case, "host", &b.ram));
        }
        for gpu in 0..n_gpus {
            let device = format!("gpu{gpu}");
            let recorded = case["buffers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["device"] == device.as_str());
            let share = b.gpus.get(&gpu).copied().unwrap_or_default();
            if checked(case, &device) && (recorded || share != Share::default()) {
                rows.push(compare(case, &device, &share));
            }
        }
    }
    check(&table, &rows).unwrap_or_else(|report| panic!("{report}"));
}
