//! `distribute/3`: load options in, `placement()` out.

use model_budget_core::layout::kv::CacheType;
use model_budget_core::layout::repack::Repack;
use model_budget_core::options::near_miss;
use model_budget_core::{distribute::MAX_GPUS, DistributeOptions, OptionSet};
use rustler::{Atom, Env, ListIterator, Term};

use crate::atoms;
use crate::badarg::{bad, reply, BadArg, Decoded};
use crate::codec::{encode_placement, CacheTypeTerm, ModeTerm, SplitModeTerm};
use crate::decode::{atom, bytes, index, optional};

/// Reads the keys `set` knows of a load-option keyword list. Unknown keys
/// are ignored (callers pass their whole load options) unless they are a
/// near miss of an option; keys of the other path are ignored; the first
/// occurrence of a key wins, as with `Keyword.get/2`.
pub fn decode_options(term: Term, set: OptionSet) -> Decoded<DistributeOptions> {
    let Ok(list) = term.decode::<ListIterator>() else {
        return bad("opts", "a keyword list", term);
    };
    let mut opts = DistributeOptions::default();
    // One bit per known key seen, so that later duplicates are skipped.
    let mut seen = 0u32;
    for item in list {
        let Ok((key, value)) = item.decode::<(Atom, Term)>() else {
            return bad("opts", "a keyword list", term);
        };
        let Some(bit) = KEYS.iter().position(|(k, _)| k() == key) else {
            reject_near_miss(key, term)?;
            continue;
        };
        let (_, name) = KEYS[bit];
        if seen & (1 << bit) != 0 || !set.reads(name) {
            continue;
        }
        seen |= 1 << bit;
        set_option(&mut opts, bit, value)?;
    }
    Ok(opts)
}

/// An option's atom (made on first use) and name.
type Key = (fn() -> Atom, &'static str);

/// The options either path reads, by atom and name; a key's position is
/// its bit in `decode_options`'s `seen`.
const KEYS: [Key; 19] = [
    (atoms::mode, "mode"),
    (atoms::n_gpu_layers, "n_gpu_layers"),
    (atoms::split_mode, "split_mode"),
    (atoms::tensor_split, "tensor_split"),
    (atoms::main_gpu, "main_gpu"),
    (atoms::offload_kqv, "offload_kqv"),
    (atoms::n_ctx, "n_ctx"),
    (atoms::n_parallel, "n_parallel"),
    (atoms::kv_bytes_per_token, "kv_bytes_per_token"),
    (cache_type_k, "cache_type_k"),
    (cache_type_v, "cache_type_v"),
    (n_ubatch, "n_ubatch"),
    (flash_attn, "flash_attn"),
    (gpu_overhead, "gpu_overhead"),
    (n_batch, "n_batch"),
    (kv_unified, "kv_unified"),
    (mmap, "mmap"),
    (repack, "repack"),
    (cache_ram, "cache_ram"),
];

/// An unknown key one or two edits from an option is refused.
fn reject_near_miss<'a>(key: Atom, opts: Term<'a>) -> Decoded<'a, ()> {
    let Ok(name) = key.to_term(opts.get_env()).atom_to_string() else {
        return Ok(());
    };
    match near_miss(&name) {
        Some(known) => Err(Box::new(BadArg {
            arg: format!("option :{name}"),
            message: format!("no such option; did you mean :{known}?"),
            value: None,
        })),
        None => Ok(()),
    }
}

fn set_option<'a>(opts: &mut DistributeOptions, bit: usize, value: Term<'a>) -> Decoded<'a, ()> {
    let boolean = |name: &str| {
        value
            .decode::<bool>()
            .or_else(|_| bad(&format!("option :{name}"), "a boolean", value))
    };
    match KEYS[bit].1 {
        "mode" => {
            opts.mode = value
                .decode::<ModeTerm>()
                .or_else(|_| bad("option :mode", ":server or :direct", value))?
                .into();
        }
        "n_gpu_layers" => {
            opts.n_gpu_layers = value
                .decode::<i64>()
                .or_else(|_| bad("option :n_gpu_layers", "an integer", value))?;
        }
        "split_mode" => {
            opts.split_mode = value
                .decode::<SplitModeTerm>()
                .or_else(|_| bad("option :split_mode", ":none, :layer or :row", value))?
                .into();
        }
        "tensor_split" => opts.tensor_split = decode_weights(value)?,
        "main_gpu" => opts.main_gpu = index(value, "option :main_gpu")?,
        "offload_kqv" => opts.offload_kqv = boolean("offload_kqv")?,
        "n_ctx" => opts.n_ctx = Some(positive(value, "option :n_ctx")?),
        "n_parallel" => opts.n_parallel = positive(value, "option :n_parallel")?,
        "kv_bytes_per_token" => {
            opts.kv_bytes_per_token = optional(value, |t| bytes(t, "option :kv_bytes_per_token"))?;
        }
        "cache_type_k" => opts.cache_type_k = cache_type(value, "option :cache_type_k")?,
        "cache_type_v" => opts.cache_type_v = cache_type(value, "option :cache_type_v")?,
        "n_ubatch" => opts.n_ubatch = positive(value, "option :n_ubatch")?,
        "flash_attn" => opts.flash_attn = boolean("flash_attn")?,
        "n_batch" => opts.n_batch = positive(value, "option :n_batch")?,
        "kv_unified" => opts.kv_unified = boolean("kv_unified")?,
        "mmap" => opts.mmap = boolean("mmap")?,
        "repack" => opts.repack = decode_repack(value)?,
        "cache_ram" => opts.cache_ram = bytes(value, "option :cache_ram")?,
        _ => opts.gpu_overhead = bytes(value, "option :gpu_overhead")?,
    }
    Ok(())
}

rustler::atoms! {
    cache_type_k,
    cache_type_v,
    n_ubatch,
    flash_attn,
    gpu_overhead,
    n_batch,
    kv_unified,
    mmap,
    repack,
    cache_ram,
    auto,
    x86_avx2,
    x86_avx512,
    arm_dotprod,
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
    match term.decode::<CacheTypeTerm>() {
        Ok(t) => Ok(t.into()),
        Err(_) => {
            // The names come from the core's one table of cache types.
            let names: Vec<String> = CacheType::ALL
                .iter()
                .map(|t| format!(":{}", t.name()))
                .collect();
            let (last, rest) = names.split_last().expect("cache types exist");
            bad(arg, &format!("{} or {last}", rest.join(", ")), term)
        }
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
        let opts = decode_options(opts, OptionSet::Bytes)?;
        let n_gpus = gpu_count(n_gpus)?;
        let placement = model_budget_core::distribute(file_bytes, &opts, n_gpus)?;
        Ok(encode_placement(env, &placement))
    })();
    reply(env, result)
}
