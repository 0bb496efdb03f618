//! `distribute/3`: load options in, `placement()` out.

use model_budget_core::layout::kv::CacheType;
use model_budget_core::layout::repack::Repack;
use model_budget_core::{distribute::MAX_GPUS, DistributeOptions, Mode, SplitMode};
use rustler::{Atom, Encoder, Env, ListIterator, Term};

use crate::atoms;
use crate::badarg::{bad, reply, Decoded};
use crate::decode::{atom, bytes, index, optional};
use crate::placement::Encoded;

/// Reads the known keys of a load-option keyword list; unknown keys are
/// ignored (callers pass their whole load options), and the first occurrence
/// of a key wins, as with `Keyword.get/2`.
pub fn decode_options(term: Term) -> Decoded<DistributeOptions> {
    let Ok(list) = term.decode::<ListIterator>() else {
        return bad("opts", "a keyword list", term);
    };
    let mut opts = DistributeOptions::default();
    let mut seen: Vec<Atom> = Vec::new();
    for item in list {
        let Ok((key, value)) = item.decode::<(Atom, Term)>() else {
            return bad("opts", "a keyword list", term);
        };
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        set_option(&mut opts, key, value)?;
    }
    Ok(opts)
}

fn set_option<'a>(opts: &mut DistributeOptions, key: Atom, value: Term<'a>) -> Decoded<'a, ()> {
    let choice = |choices: &[Atom]| atom(value).filter(|a| choices.contains(a));
    if key == atoms::mode() {
        opts.mode = match choice(&[atoms::server(), atoms::direct()]) {
            Some(a) if a == atoms::server() => Mode::Server,
            Some(_) => Mode::Direct,
            None => return bad("option :mode", ":server or :direct", value),
        };
    } else if key == atoms::n_gpu_layers() {
        opts.n_gpu_layers = value
            .decode::<i64>()
            .or_else(|_| bad("option :n_gpu_layers", "an integer", value))?;
    } else if key == atoms::split_mode() {
        opts.split_mode = match choice(&[atoms::none(), atoms::layer(), atoms::row()]) {
            Some(a) if a == atoms::none() => SplitMode::None,
            Some(a) if a == atoms::layer() => SplitMode::Layer,
            Some(_) => SplitMode::Row,
            None => return bad("option :split_mode", ":none, :layer or :row", value),
        };
    } else if key == atoms::tensor_split() {
        opts.tensor_split = decode_weights(value)?;
    } else if key == atoms::main_gpu() {
        opts.main_gpu = index(value, "option :main_gpu")?;
    } else if key == atoms::offload_kqv() {
        opts.offload_kqv = boolean(value, "option :offload_kqv")?;
    } else if key == atoms::n_ctx() {
        opts.n_ctx = Some(positive(value, "option :n_ctx")?);
    } else if key == atoms::n_parallel() {
        opts.n_parallel = positive(value, "option :n_parallel")?;
    } else if key == cache_type_k() {
        opts.cache_type_k = cache_type(value, "option :cache_type_k")?;
    } else if key == cache_type_v() {
        opts.cache_type_v = cache_type(value, "option :cache_type_v")?;
    } else if key == n_ubatch() {
        opts.n_ubatch = positive(value, "option :n_ubatch")?;
    } else if key == flash_attn() {
        opts.flash_attn = boolean(value, "option :flash_attn")?;
    } else if key == n_batch() {
        opts.n_batch = positive(value, "option :n_batch")?;
    } else if key == kv_unified() {
        opts.kv_unified = boolean(value, "option :kv_unified")?;
    } else if key == mmap() {
        opts.mmap = boolean(value, "option :mmap")?;
    } else if key == repack() {
        opts.repack = decode_repack(value)?;
    } else if key == cache_ram() {
        opts.cache_ram = bytes(value, "option :cache_ram")?;
    } else if key == gpu_overhead() {
        opts.gpu_overhead = bytes(value, "option :gpu_overhead")?;
    } else if key == atoms::kv_bytes_per_token() {
        opts.kv_bytes_per_token = optional(value, |t| bytes(t, "option :kv_bytes_per_token"))?;
    }
    Ok(())
}

rustler::atoms! {
    cache_type_k,
    cache_type_v,
    n_ubatch,
    n_batch,
    kv_unified,
    mmap,
    repack,
    cache_ram,
    flash_attn,
    gpu_overhead,
    auto,
    x86_avx2,
    x86_avx512,
    arm_dotprod,
}

fn boolean<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, bool> {
    term.decode::<bool>()
        .or_else(|_| bad(arg, "a boolean", term))
}

/// `:repack`: `:auto` (this machine's CPU), `true` (x86-64 with AVX2, the
/// common server), `false`, or a named CPU's rules.
fn decode_repack(term: Term) -> Decoded<Repack> {
    if let Ok(yes) = term.decode::<bool>() {
        return Ok(if yes { Repack::X86Avx2 } else { Repack::None });
    }
    match atom(term) {
        Some(a) if a == auto() => Ok(Repack::detect()),
        Some(a) if a == atoms::none() => Ok(Repack::None),
        Some(a) if a == x86_avx2() => Ok(Repack::X86Avx2),
        Some(a) if a == x86_avx512() => Ok(Repack::X86Avx512),
        Some(a) if a == arm_dotprod() => Ok(Repack::ArmDotprod),
        _ => bad(
            "option :repack",
            ":auto, true, false, :none, :x86_avx2, :x86_avx512 or :arm_dotprod",
            term,
        ),
    }
}

/// A KV cache type atom such as `:q8_0`.
pub fn cache_type<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, CacheType> {
    let name = atom(term).and_then(|a| a.to_term(term.get_env()).atom_to_string().ok());
    match name.as_deref().and_then(CacheType::from_name) {
        Some(t) => Ok(t),
        None => bad(
            arg,
            ":f32, :f16, :bf16, :q8_0, :q4_0, :q4_1, :q5_0, :q5_1 or :iq4_nl",
            term,
        ),
    }
}

pub fn positive<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, u64> {
    match term.decode::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bad(arg, "a positive integer below 2^64", term),
    }
}

/// `:tensor_split`: a list of finite, non-negative numbers.
fn decode_weights(term: Term) -> Decoded<Vec<f64>> {
    const ARG: &str = "option :tensor_split";
    const EXPECTED: &str = "a list of non-negative numbers";
    let Ok(list) = term.decode::<ListIterator>() else {
        return bad(ARG, EXPECTED, term);
    };
    list.map(|w| {
        let weight = w
            .decode::<f64>()
            .ok()
            .or_else(|| w.decode::<u64>().ok().map(|n| n as f64));
        match weight {
            Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => bad(ARG, EXPECTED, term),
        }
    })
    .collect()
}

/// The `n_gpus` argument.
pub fn gpu_count(term: Term) -> Decoded<u32> {
    match term.decode::<u32>() {
        Ok(n) if n <= MAX_GPUS => Ok(n),
        _ => bad("n_gpus", &format!("an integer in 0..{MAX_GPUS}"), term),
    }
}

#[rustler::nif]
fn distribute<'a>(
    env: Env<'a>,
    file_bytes: Term<'a>,
    opts: Term<'a>,
    n_gpus: Term<'a>,
) -> Term<'a> {
    let result = (|| {
        let file_bytes = bytes(file_bytes, "file_bytes")?;
        let opts = decode_options(opts)?;
        let n_gpus = gpu_count(n_gpus)?;
        Ok(Encoded(model_budget_core::distribute(file_bytes, &opts, n_gpus)?).encode(env))
    })();
    reply(env, result)
}
