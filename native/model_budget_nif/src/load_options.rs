//! Load-option keyword lists in, by the core's one table
//! (`LOAD_OPTIONS`): its names are the keys, its kinds the decoders.

use std::sync::OnceLock;

use model_budget_core::estimate::distribute::{Mode, SplitMode, TensorSplit};
use model_budget_core::estimate::layout::cpu_buffers::CpuBuffers;
use model_budget_core::estimate::layout::kv::CacheType;
use model_budget_core::estimate::options::{
    near_miss, repack_profile, Kind, LoadOption, OptionValue, ServerFlag, LOAD_OPTIONS,
};
use model_budget_core::{DistributeOptions, OptionSet};
use rustler::{Atom, Encoder, Env, NifMap, Term, TermType};

use crate::atoms;
use crate::badarg::{bad, reply, BadArg, Decoded};
use crate::codec::{CacheTypeTerm, ModeTerm, SplitModeTerm};
use crate::decode::{atom, bytes, index, optional};

/// The most options the table may hold: a key's position is its bit.
const MAX_OPTIONS: usize = 32;

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
    each_option(term, set, |at, value| (LOAD_OPTIONS[at].set)(opts, value))
}

/// Calls `f` with the table position and the decoded value of each option
/// of `set` given in `term`.
fn each_option<'a>(
    term: Term<'a>,
    set: OptionSet,
    mut f: impl FnMut(usize, OptionValue),
) -> Decoded<'a, ()> {
    let Ok(list) = crate::decode::list(term) else {
        return bad("opts", "a keyword list", term);
    };
    let (keys, reads) = key_table(term.get_env(), set);
    // One bit per known key seen, so that later duplicates are skipped.
    let mut seen = 0u32;
    for item in list {
        let Ok((key, value)) = item.decode::<(Atom, Term)>() else {
            return bad("opts", "a keyword list", term);
        };
        let Some(bit) = keys.iter().position(|k| *k == key) else {
            reject_near_miss(key, term)?;
            continue;
        };
        if seen & (1 << bit) != 0 || reads & (1 << bit) == 0 {
            continue;
        }
        seen |= 1 << bit;
        let option = &LOAD_OPTIONS[bit];
        f(bit, decode_value(option, &arg_names()[bit], value)?);
    }
    Ok(())
}

/// The table's names as atoms, in order, and the bits of those `set`
/// reads: worked out once.
fn key_table(env: Env, set: OptionSet) -> (&'static [Atom], u32) {
    static TABLE: OnceLock<(Vec<Atom>, [u32; 2])> = OnceLock::new();
    let (keys, masks) = TABLE.get_or_init(|| {
        assert!(LOAD_OPTIONS.len() <= MAX_OPTIONS, "one bit per option");
        let masks = [OptionSet::Bytes, OptionSet::Model].map(|set| {
            LOAD_OPTIONS
                .iter()
                .enumerate()
                .filter(|(_, o)| o.read_by(set))
                .fold(0, |mask, (bit, _)| mask | 1 << bit)
        });
        // Atoms are global: made once, they serve every environment.
        let keys = LOAD_OPTIONS
            .iter()
            .map(|o| Atom::from_str(env, o.name).expect("option names are atoms"))
            .collect();
        (keys, masks)
    });
    (keys, masks[usize::from(set == OptionSet::Model)])
}

/// `option :NAME` for each option, as errors name it: made once, so that
/// a good value costs no allocation.
fn arg_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        LOAD_OPTIONS
            .iter()
            .map(|o| format!("option :{}", o.name))
            .collect()
    })
}

/// An option's value, by its kind, or what is wrong with it.
fn decode_value<'a>(option: &LoadOption, arg: &str, value: Term<'a>) -> Decoded<'a, OptionValue> {
    Ok(match option.kind {
        Kind::Mode => OptionValue::Mode(
            value
                .decode::<ModeTerm>()
                .or_else(|_| bad(arg, &choices(option.kind), value))?
                .into(),
        ),
        Kind::Layers => OptionValue::Int(
            value
                .decode::<i64>()
                .or_else(|_| bad(arg, "an integer", value))?,
        ),
        Kind::SplitMode => OptionValue::SplitMode(
            value
                .decode::<SplitModeTerm>()
                .or_else(|_| bad(arg, &choices(option.kind), value))?
                .into(),
        ),
        Kind::Weights => OptionValue::Weights(decode_weights(value)?),
        Kind::Index => OptionValue::Index(index(value, arg)?),
        Kind::Bool => OptionValue::Bool(
            value
                .decode::<bool>()
                .or_else(|_| bad(arg, "a boolean", value))?,
        ),
        Kind::Count => OptionValue::Count(positive(value, arg)?),
        Kind::Context => OptionValue::Context(Some(positive(value, arg)?)),
        Kind::Bytes => OptionValue::Bytes(bytes(value, arg)?),
        Kind::MaybeBytes => OptionValue::MaybeBytes(optional(value, |t| bytes(t, arg))?),
        Kind::CacheType => OptionValue::CacheType(cache_type(value, arg)?),
        Kind::CpuBuffers => match profile(value) {
            Some(p) => OptionValue::CpuBuffers(p),
            None => return bad(arg, &choices(option.kind), value),
        },
        Kind::Repack => match (value.decode::<bool>(), profile(value)) {
            (Ok(yes), _) => OptionValue::CpuBuffers(Some(repack_profile(yes))),
            (_, Some(p)) => OptionValue::CpuBuffers(p),
            _ => {
                let expected = format!(
                    "true, false, {} (or use :cpu_buffers)",
                    choices(Kind::CpuBuffers)
                );
                return bad(arg, &expected, value);
            }
        },
    })
}

/// A kind's choices for messages: `:a, :b or :c`.
fn choices(kind: Kind) -> String {
    let names: Vec<String> = kind.choices().iter().map(|n| format!(":{n}")).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

/// A profile by its atom's name: `Some(None)` for `:auto` (this machine's).
fn profile(term: Term) -> Option<Option<CpuBuffers>> {
    let name = atom(term)?.to_term(term.get_env()).atom_to_string().ok()?;
    if name == "auto" {
        return Some(None);
    }
    CpuBuffers::from_name(&name).map(Some)
}

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

/// A KV cache type atom such as `:q8_0`.
pub fn cache_type<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, CacheType> {
    match term.decode::<CacheTypeTerm>() {
        Ok(t) => Ok(t.0),
        Err(_) => bad(arg, &choices(Kind::CacheType), term),
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

/// An option's value as Elixir writes it.
fn encode_value<'a>(env: Env<'a>, value: &OptionValue) -> Term<'a> {
    let name = |n: &str| {
        Atom::from_str(env, n).map_or_else(|_| atoms::nil().encode(env), |a| a.encode(env))
    };
    match value {
        OptionValue::Mode(Mode::Server) => atoms::server().encode(env),
        OptionValue::Mode(Mode::Direct) => atoms::direct().encode(env),
        OptionValue::SplitMode(SplitMode::None) => atoms::none().encode(env),
        OptionValue::SplitMode(SplitMode::Layer) => atoms::layer().encode(env),
        OptionValue::SplitMode(SplitMode::Row) => atoms::row().encode(env),
        OptionValue::Int(n) => n.encode(env),
        OptionValue::Weights(w) => w.as_slice().encode(env),
        OptionValue::Index(i) => i.encode(env),
        OptionValue::Bool(b) => b.encode(env),
        OptionValue::Count(n) | OptionValue::Bytes(n) => n.encode(env),
        OptionValue::Context(n) | OptionValue::MaybeBytes(n) => n.encode(env),
        OptionValue::CacheType(t) => CacheTypeTerm(*t).encode(env),
        OptionValue::CpuBuffers(None) => atoms::auto().encode(env),
        OptionValue::CpuBuffers(Some(p)) => name(p.name()),
    }
}

/// One option of the table, as `ModelBudget.LoadOptions` reads it.
#[derive(NifMap)]
struct OptionTerm<'a> {
    name: Atom,
    /// `:both`, `:bytes` or `:model`.
    reads: Atom,
    kind: Atom,
    choices: Vec<Atom>,
    default: Term<'a>,
    /// `nil`, `{:value, flag, gpu_only?}`, `{:switch, on_args, off_args}`
    /// or `{:mib, flag}`.
    server: Term<'a>,
    switch: Option<&'a str>,
    aliases: Vec<(&'a str, &'a str)>,
    doc: &'a str,
}

/// The whole table, one map per option.
#[rustler::nif]
fn load_options(env: Env) -> Vec<OptionTerm> {
    // The table's words are fixed identifiers: always valid atoms.
    let atom = |n: &str| Atom::from_str(env, n).unwrap_or_else(|_| atoms::nil());
    LOAD_OPTIONS
        .iter()
        .map(|o| OptionTerm {
            name: atom(o.name),
            reads: atom(&snake_case(&format!("{:?}", o.reads))),
            kind: atom(&snake_case(&format!("{:?}", o.kind))),
            choices: o.kind.choices().into_iter().map(atom).collect(),
            default: encode_value(env, &o.default_value()),
            server: match o.server {
                ServerFlag::None => atoms::nil().encode(env),
                ServerFlag::Value { flag, gpu } => (atom("value"), flag, gpu).encode(env),
                ServerFlag::Switch { on, off } => (atom("switch"), on, off).encode(env),
                ServerFlag::Mib(flag) => (atom("mib"), flag).encode(env),
            },
            switch: o.switch,
            aliases: o.aliases.to_vec(),
            doc: o.doc,
        })
        .collect()
}

/// `SplitMode` as `split_mode`: the core's variant names as Elixir atoms.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    for (i, c) in name.char_indices() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The model path's options in `opts`, checked as every estimate checks
/// them, as a map of every option the path reads: defaults filled in,
/// `:auto` kept, and the older `:repack` read into `:cpu_buffers` (where
/// `:cpu_buffers` itself is not given).
#[rustler::nif]
fn load_options_read<'a>(env: Env<'a>, opts: Term<'a>) -> Term<'a> {
    let result = (|| {
        let mut given: [Option<OptionValue>; MAX_OPTIONS] = std::array::from_fn(|_| None);
        each_option(opts, OptionSet::Model, |at, value| given[at] = Some(value))?;
        let at = |name: &str| LOAD_OPTIONS.iter().position(|o| o.name == name);
        if let (Some(cpu), Some(repack)) = (at("cpu_buffers"), at("repack")) {
            if given[cpu].is_none() {
                given[cpu] = given[repack].take();
            }
        }
        let (names, _) = key_table(env, OptionSet::Model);
        let (keys, values): (Vec<Term>, Vec<Term>) = LOAD_OPTIONS
            .iter()
            .zip(names)
            .zip(given)
            .filter(|((o, _), _)| o.read_by(OptionSet::Model) && o.kind != Kind::Repack)
            .map(|((o, key), v)| {
                let value = v.unwrap_or_else(|| o.default_value());
                (key.encode(env), encode_value(env, &value))
            })
            .unzip();
        Ok(Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys"))
    })();
    reply(env, result)
}
