//! `distribute/3`: load options in, `placement()` out.

use model_budget_core::estimate::distribute::{distribute_into, TensorSplit, MAX_GPUS};
use model_budget_core::estimate::layout::cpu_buffers::{CpuBuffers, PROFILES};
use model_budget_core::estimate::layout::kv::CacheType;
use model_budget_core::estimate::options::near_miss;
use model_budget_core::{DistributeOptions, OptionSet, Placement};
use std::sync::OnceLock;

use rustler::{Atom, Env, Term, TermType};

use crate::atoms;
use crate::badarg::{bad, reply, BadArg, Decoded};
use crate::codec::{encode_placement, CacheTypeTerm, ModeTerm, SplitModeTerm};
use crate::decode::{atom, bytes, index, optional};

/// Reads the keys `set` knows of a load-option keyword list. Unknown keys
/// are ignored (callers pass their whole load options) unless they are a
/// near miss of an option; keys of the other path are ignored; the first
/// occurrence of a key wins, as with `Keyword.get/2`.
pub fn decode_options(term: Term, set: OptionSet) -> Decoded<DistributeOptions> {
    let mut opts = DistributeOptions::default();
    read_options(term, set, &mut opts)?;
    Ok(opts)
}

/// What `decode_options` reads, set in `opts` in place: the hot path uses
/// it so that the options (large, with a vector) are not moved on their way
/// out.
pub fn read_options<'a>(
    term: Term<'a>,
    set: OptionSet,
    opts: &mut DistributeOptions,
) -> Decoded<'a, ()> {
    let Ok(list) = crate::decode::list(term) else {
        return bad("opts", "a keyword list", term);
    };
    let (atoms, reads) = key_table(set);
    // One bit per known key seen, so that later duplicates are skipped.
    let mut seen = 0u32;
    for item in list {
        let Ok((key, value)) = item.decode::<(Atom, Term)>() else {
            return bad("opts", "a keyword list", term);
        };
        let Some(bit) = atoms.iter().position(|k| *k == key) else {
            reject_near_miss(key, term)?;
            continue;
        };
        if seen & (1 << bit) != 0 || reads & (1 << bit) == 0 {
            continue;
        }
        seen |= 1 << bit;
        (KEYS[bit].2)(opts, value)?;
    }
    Ok(())
}

/// The atoms of `KEYS` in order, and the bits of those `set` reads: worked
/// out once (the core's option tables are by name, and each of rustler's
/// atom functions checks that its atoms were made).
fn key_table(set: OptionSet) -> (&'static [Atom; 20], u32) {
    static TABLE: OnceLock<([Atom; 20], [u32; 2])> = OnceLock::new();
    let (atoms, masks) = TABLE.get_or_init(|| {
        let masks = [OptionSet::Bytes, OptionSet::Model].map(|set| {
            KEYS.iter()
                .enumerate()
                .filter(|(_, (_, name, _))| set.reads(name))
                .fold(0, |mask, (bit, _)| mask | 1 << bit)
        });
        (KEYS.map(|(atom, _, _)| atom()), masks)
    });
    (atoms, masks[usize::from(set == OptionSet::Model)])
}

/// Sets one option from its value, or names what is wrong with the value.
type Setter = for<'a> fn(&mut DistributeOptions, Term<'a>) -> Decoded<'a, ()>;

/// An option's atom (made on first use), name, and setter.
type Key = (fn() -> Atom, &'static str, Setter);

/// The options either path reads; a key's position is its bit in
/// `read_options`'s masks.
const KEYS: [Key; 20] = [
    (atoms::mode, "mode", |o, v| {
        o.mode = v
            .decode::<ModeTerm>()
            .or_else(|_| bad("option :mode", ":server or :direct", v))?
            .into();
        Ok(())
    }),
    (atoms::n_gpu_layers, "n_gpu_layers", |o, v| {
        o.n_gpu_layers = v
            .decode::<i64>()
            .or_else(|_| bad("option :n_gpu_layers", "an integer", v))?;
        Ok(())
    }),
    (atoms::split_mode, "split_mode", |o, v| {
        o.split_mode = v
            .decode::<SplitModeTerm>()
            .or_else(|_| bad("option :split_mode", ":none, :layer or :row", v))?
            .into();
        Ok(())
    }),
    (atoms::tensor_split, "tensor_split", |o, v| {
        o.tensor_split = decode_weights(v)?;
        Ok(())
    }),
    (atoms::main_gpu, "main_gpu", |o, v| {
        o.main_gpu = index(v, "option :main_gpu")?;
        Ok(())
    }),
    (atoms::offload_kqv, "offload_kqv", |o, v| {
        o.offload_kqv = boolean(v, "option :offload_kqv")?;
        Ok(())
    }),
    (atoms::n_ctx, "n_ctx", |o, v| {
        o.n_ctx = Some(positive(v, "option :n_ctx")?);
        Ok(())
    }),
    (atoms::n_parallel, "n_parallel", |o, v| {
        o.n_parallel = positive(v, "option :n_parallel")?;
        Ok(())
    }),
    (atoms::kv_bytes_per_token, "kv_bytes_per_token", |o, v| {
        o.kv_bytes_per_token = optional(v, |t| bytes(t, "option :kv_bytes_per_token"))?;
        Ok(())
    }),
    (cache_type_k, "cache_type_k", |o, v| {
        o.cache_type_k = cache_type(v, "option :cache_type_k")?;
        Ok(())
    }),
    (cache_type_v, "cache_type_v", |o, v| {
        o.cache_type_v = cache_type(v, "option :cache_type_v")?;
        Ok(())
    }),
    (n_ubatch, "n_ubatch", |o, v| {
        o.n_ubatch = positive(v, "option :n_ubatch")?;
        Ok(())
    }),
    (flash_attn, "flash_attn", |o, v| {
        o.flash_attn = boolean(v, "option :flash_attn")?;
        Ok(())
    }),
    (gpu_overhead, "gpu_overhead", |o, v| {
        o.gpu_overhead = bytes(v, "option :gpu_overhead")?;
        Ok(())
    }),
    (n_batch, "n_batch", |o, v| {
        o.n_batch = positive(v, "option :n_batch")?;
        Ok(())
    }),
    (kv_unified, "kv_unified", |o, v| {
        o.kv_unified = boolean(v, "option :kv_unified")?;
        Ok(())
    }),
    (mmap, "mmap", |o, v| {
        o.mmap = boolean(v, "option :mmap")?;
        Ok(())
    }),
    (cpu_buffers, "cpu_buffers", |o, v| {
        o.cpu_buffers = decode_cpu_buffers(v)?;
        Ok(())
    }),
    (repack, "repack", |o, v| {
        o.cpu_buffers = decode_repack(v)?;
        Ok(())
    }),
    (cache_ram, "cache_ram", |o, v| {
        o.cache_ram = bytes(v, "option :cache_ram")?;
        Ok(())
    }),
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

fn boolean<'a>(value: Term<'a>, arg: &str) -> Decoded<'a, bool> {
    value
        .decode::<bool>()
        .or_else(|_| bad(arg, "a boolean", value))
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
    cpu_buffers,
    repack,
    cache_ram,
}

/// The runtime profiles' names, for messages: `:auto, :none, ...`.
fn profile_names() -> String {
    let names: Vec<String> = PROFILES.iter().map(|p| format!(":{}", p.name())).collect();
    format!(":auto, {}", names.join(", "))
}

/// A profile by its atom's name, `:auto` for this machine's CPU.
fn profile(term: Term) -> Option<CpuBuffers> {
    let name = atom(term)?.to_term(term.get_env()).atom_to_string().ok()?;
    if name == "auto" {
        return Some(CpuBuffers::detect());
    }
    CpuBuffers::from_name(&name)
}

/// `:cpu_buffers`: a runtime profile's name, or `:auto`.
fn decode_cpu_buffers(term: Term) -> Decoded<CpuBuffers> {
    match profile(term) {
        Some(p) => Ok(p),
        None => bad("option :cpu_buffers", &profile_names(), term),
    }
}

/// `:repack`, the older name: `true` (x86-64 with AVX2), `false`, or what
/// `:cpu_buffers` takes.
fn decode_repack(term: Term) -> Decoded<CpuBuffers> {
    if let Ok(yes) = term.decode::<bool>() {
        return Ok(if yes {
            CpuBuffers::X86Avx2
        } else {
            CpuBuffers::None
        });
    }
    match profile(term) {
        Some(p) => Ok(p),
        None => bad(
            "option :repack",
            &format!("true, false, {} (or use :cpu_buffers)", profile_names()),
            term,
        ),
    }
}

/// A KV cache type atom such as `:q8_0`.
pub fn cache_type<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, CacheType> {
    match term.decode::<CacheTypeTerm>() {
        Ok(t) => Ok(t.0),
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
fn decode_weights(term: Term) -> Decoded<TensorSplit> {
    const ARG: &str = "option :tensor_split";
    const EXPECTED: &str = "a list of non-negative numbers";
    // The length refuses improper lists, which the iterator would cut short.
    let (Ok(list), Ok(len)) = (crate::decode::list(term), term.list_length()) else {
        return bad(ARG, EXPECTED, term);
    };
    // Inline up to `INLINE_GPUS` weights: no allocation for a usual split.
    let mut weights = TensorSplit::with_capacity(len);
    for w in list {
        // By type, so that each weight is decoded once.
        let weight = match w.get_type() {
            TermType::Integer => w.decode::<u64>().ok().map(|n| n as f64),
            TermType::Float => w.decode::<f64>().ok(),
            _ => None,
        };
        match weight {
            Some(x) if x.is_finite() && x >= 0.0 => weights.push(x),
            _ => return bad(ARG, EXPECTED, term),
        }
    }
    Ok(weights)
}

/// The `n_gpus` argument.
pub fn gpu_count(term: Term) -> Decoded<u32> {
    match term.decode::<u32>() {
        Ok(n) if n <= MAX_GPUS => Ok(n),
        _ => bad("n_gpus", &format!("an integer in 0..{MAX_GPUS}"), term),
    }
}

/// The placement of a model of `file_bytes`.
#[rustler::nif]
fn distribute<'a>(
    env: Env<'a>,
    file_bytes: Term<'a>,
    opts: Term<'a>,
    n_gpus: Term<'a>,
) -> Term<'a> {
    let result = (|| {
        let file_bytes = bytes(file_bytes, "file_bytes")?;
        let mut options = DistributeOptions::default();
        read_options(opts, OptionSet::Bytes, &mut options)?;
        let n_gpus = gpu_count(n_gpus)?;
        // Written in place: a placement's GPU map is inline, a move copies it.
        let mut placement = Placement::empty();
        distribute_into(file_bytes, &options, n_gpus, &mut placement)?;
        Ok(encode_placement(env, &placement))
    })();
    reply(env, result)
}
