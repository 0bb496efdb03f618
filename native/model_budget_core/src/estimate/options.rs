//! The load options each placement path reads, and the near-miss rule for
//! the keys it does not.
//!
//! Callers pass their whole load options (llama.cpp's, a runtime's, the
//! manager's), so unknown keys are allowed. A key one or two edits from one
//! of ours is almost always a typo (`n_gpu_layer: 0` would otherwise
//! silently offload everything), so it is refused, naming the key it
//! resembles.

use crate::estimate::distribute::{DistributeOptions, Mode, SplitMode, TensorSplit};
use crate::estimate::layout::cpu_buffers::CpuBuffers;
use crate::estimate::layout::kv::CacheType;

/// Which placement an option list feeds: the byte-count estimate or the
/// layer-by-layer placement of a read model. Each reads its own set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionSet {
    Bytes,
    Model,
}

/// Which paths read an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    Both,
    Bytes,
    Model,
}

/// The values an option takes, and the variant of [`OptionValue`] it sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `:server` or `:direct`.
    Mode,
    /// Any integer; a negative count means every layer.
    Layers,
    /// `:none`, `:layer` or `:row`.
    SplitMode,
    /// A list of non-negative numbers.
    Weights,
    /// A GPU index.
    Index,
    Bool,
    /// A positive integer.
    Count,
    /// A positive integer, the model's trained length when left out.
    Context,
    /// A byte count.
    Bytes,
    /// A byte count, or `nil` for the estimator's own.
    MaybeBytes,
    /// One of [`CacheType::ALL`].
    CacheType,
    /// A runtime profile of [`crate::estimate::layout::cpu_buffers::PROFILES`],
    /// or `:auto` for this machine's.
    CpuBuffers,
    /// `true`, `false` or a profile: the older name of `cpu_buffers`.
    Repack,
}

impl Kind {
    /// The names a choice takes, in order (empty for other kinds).
    pub fn choices(self) -> Vec<&'static str> {
        match self {
            Kind::Mode => Mode::NAMES.to_vec(),
            Kind::SplitMode => SplitMode::NAMES.to_vec(),
            Kind::CacheType => CacheType::ALL.iter().map(|t| t.name()).collect(),
            Kind::CpuBuffers => std::iter::once("auto")
                .chain(crate::estimate::layout::cpu_buffers::PROFILES.map(CpuBuffers::name))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// An option's value, of the variant its [`Kind`] names.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    Mode(Mode),
    Int(i64),
    SplitMode(SplitMode),
    Weights(TensorSplit),
    Index(u32),
    Bool(bool),
    Count(u64),
    Context(Option<u64>),
    Bytes(u64),
    MaybeBytes(Option<u64>),
    CacheType(CacheType),
    /// `None` is `:auto`: this machine's profile.
    CpuBuffers(Option<CpuBuffers>),
}

/// How llama-server takes an option on its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFlag {
    /// The estimator's alone.
    None,
    /// `FLAG VALUE`; with `gpu`, only when the load has GPUs.
    Value { flag: &'static str, gpu: bool },
    /// One set of arguments when on, another when off (a profile is on
    /// unless it is `:none`).
    Switch {
        on: &'static [&'static str],
        off: &'static [&'static str],
    },
    /// `FLAG MIB`, bytes rounded up to whole MiB.
    Mib(&'static str),
}

/// One load option: its name, which paths read it, its values, its
/// llama-server flag, its `mix model_budget.plan` switch (`aliases`: other
/// spellings, llama.cpp's, each with the switch it stands for), one line of documentation, and how it sits in
/// [`DistributeOptions`], whose `Default` holds its default.
pub struct LoadOption {
    pub name: &'static str,
    pub reads: Reads,
    pub kind: Kind,
    pub server: ServerFlag,
    pub switch: Option<&'static str>,
    pub aliases: &'static [(&'static str, &'static str)],
    pub doc: &'static str,
    pub set: fn(&mut DistributeOptions, OptionValue),
    pub get: fn(&DistributeOptions) -> OptionValue,
}

impl LoadOption {
    /// Whether the path `set` reads this option.
    pub fn read_by(&self, set: OptionSet) -> bool {
        matches!(
            (self.reads, set),
            (Reads::Both, _) | (Reads::Bytes, OptionSet::Bytes) | (Reads::Model, OptionSet::Model)
        )
    }

    /// The option's default, as the estimator takes it when the option is
    /// left out.
    pub fn default_value(&self) -> OptionValue {
        match self.kind {
            // The default profile is the machine's: `:auto`.
            Kind::CpuBuffers | Kind::Repack => OptionValue::CpuBuffers(None),
            _ => (self.get)(&DistributeOptions::default()),
        }
    }
}

/// The option named `name`.
pub fn option(name: &str) -> Option<&'static LoadOption> {
    LOAD_OPTIONS.iter().find(|o| o.name == name)
}

/// Sets one field from a value of its kind; a value of another kind is
/// a caller's bug, and leaves the field as it was.
macro_rules! set {
    ($field:ident, $variant:ident) => {
        |o, v| {
            if let OptionValue::$variant(x) = v {
                o.$field = x;
            }
        }
    };
}

/// Every load option, once: the NIF's keys, the llama-server backend's
/// options and command line, and the plan's switches derive from it.
/// Defaults are llama-server's (build 11434) unless said.
pub const LOAD_OPTIONS: &[LoadOption] = &[
    LoadOption {
        name: "mode",
        reads: Reads::Both,
        kind: Kind::Mode,
        server: ServerFlag::None,
        switch: None,
        aliases: &[],
        doc: "`:server` adds a KV cache; `:direct` is weights only",
        set: set!(mode, Mode),
        get: |o| OptionValue::Mode(o.mode),
    },
    LoadOption {
        name: "n_gpu_layers",
        reads: Reads::Both,
        kind: Kind::Layers,
        server: ServerFlag::Value {
            flag: "--n-gpu-layers",
            gpu: true,
        },
        switch: Some("--n-gpu-layers"),
        aliases: &[
            ("-ngl", "--n-gpu-layers"),
            ("--gpu-layers", "--n-gpu-layers"),
        ],
        doc: "layers offloaded to GPUs; 0 keeps all in RAM, a negative count offloads all",
        set: set!(n_gpu_layers, Int),
        get: |o| OptionValue::Int(o.n_gpu_layers),
    },
    LoadOption {
        name: "split_mode",
        reads: Reads::Both,
        kind: Kind::SplitMode,
        server: ServerFlag::Value {
            flag: "--split-mode",
            gpu: true,
        },
        switch: Some("--split-mode"),
        aliases: &[("-sm", "--split-mode")],
        doc: "`:none` (all on main_gpu), `:layer` or `:row` over tensor_split",
        set: set!(split_mode, SplitMode),
        get: |o| OptionValue::SplitMode(o.split_mode),
    },
    LoadOption {
        name: "tensor_split",
        reads: Reads::Both,
        kind: Kind::Weights,
        server: ServerFlag::Value {
            flag: "--tensor-split",
            gpu: true,
        },
        switch: Some("--tensor-split"),
        aliases: &[("-ts", "--tensor-split")],
        doc: "weights per GPU; empty splits equally",
        set: set!(tensor_split, Weights),
        get: |o| OptionValue::Weights(o.tensor_split.clone()),
    },
    LoadOption {
        name: "main_gpu",
        reads: Reads::Both,
        kind: Kind::Index,
        server: ServerFlag::Value {
            flag: "--main-gpu",
            gpu: true,
        },
        switch: Some("--main-gpu"),
        aliases: &[("-mg", "--main-gpu")],
        doc: "the GPU of split_mode :none",
        set: set!(main_gpu, Index),
        get: |o| OptionValue::Index(o.main_gpu),
    },
    LoadOption {
        name: "offload_kqv",
        reads: Reads::Both,
        kind: Kind::Bool,
        server: ServerFlag::Switch {
            on: &["--kv-offload"],
            off: &["--no-kv-offload"],
        },
        switch: Some("--kv-offload"),
        aliases: &[("-nkvo", "--no-kv-offload")],
        doc: "whether the KV cache sits on the GPUs",
        set: set!(offload_kqv, Bool),
        get: |o| OptionValue::Bool(o.offload_kqv),
    },
    LoadOption {
        name: "n_ctx",
        reads: Reads::Both,
        kind: Kind::Context,
        server: ServerFlag::Value {
            flag: "--ctx-size",
            gpu: false,
        },
        switch: Some("--ctx-size"),
        aliases: &[("-c", "--ctx-size"), ("--ctx", "--ctx-size")],
        doc: "context tokens, shared by the slots",
        set: set!(n_ctx, Context),
        get: |o| OptionValue::Context(o.n_ctx),
    },
    LoadOption {
        name: "n_parallel",
        reads: Reads::Both,
        kind: Kind::Count,
        server: ServerFlag::Value {
            flag: "--parallel",
            gpu: false,
        },
        switch: Some("--parallel"),
        aliases: &[("-np", "--parallel")],
        doc: "slots serving at once",
        set: set!(n_parallel, Count),
        get: |o| OptionValue::Count(o.n_parallel),
    },
    LoadOption {
        name: "kv_bytes_per_token",
        reads: Reads::Bytes,
        kind: Kind::MaybeBytes,
        server: ServerFlag::None,
        switch: None,
        aliases: &[],
        doc: "the byte-count path's KV bytes per token (default 2048)",
        set: set!(kv_bytes_per_token, MaybeBytes),
        get: |o| OptionValue::MaybeBytes(o.kv_bytes_per_token),
    },
    LoadOption {
        name: "cache_type_k",
        reads: Reads::Model,
        kind: Kind::CacheType,
        server: ServerFlag::Value {
            flag: "--cache-type-k",
            gpu: false,
        },
        switch: Some("--cache-type-k"),
        aliases: &[("-ctk", "--cache-type-k")],
        doc: "the KV cache's K type",
        set: set!(cache_type_k, CacheType),
        get: |o| OptionValue::CacheType(o.cache_type_k),
    },
    LoadOption {
        name: "cache_type_v",
        reads: Reads::Model,
        kind: Kind::CacheType,
        server: ServerFlag::Value {
            flag: "--cache-type-v",
            gpu: false,
        },
        switch: Some("--cache-type-v"),
        aliases: &[("-ctv", "--cache-type-v")],
        doc: "the KV cache's V type",
        set: set!(cache_type_v, CacheType),
        get: |o| OptionValue::CacheType(o.cache_type_v),
    },
    LoadOption {
        name: "n_ubatch",
        reads: Reads::Model,
        kind: Kind::Count,
        server: ServerFlag::Value {
            flag: "--ubatch-size",
            gpu: false,
        },
        switch: Some("--ubatch-size"),
        aliases: &[("-ub", "--ubatch-size")],
        doc: "the micro-batch, which sizes the compute buffers",
        set: set!(n_ubatch, Count),
        get: |o| OptionValue::Count(o.n_ubatch),
    },
    LoadOption {
        name: "flash_attn",
        reads: Reads::Model,
        kind: Kind::Bool,
        server: ServerFlag::Switch {
            on: &["--flash-attn", "on"],
            off: &["--flash-attn", "off"],
        },
        switch: Some("--flash-attn"),
        aliases: &[("-fa", "--flash-attn")],
        doc: "flash attention",
        set: set!(flash_attn, Bool),
        get: |o| OptionValue::Bool(o.flash_attn),
    },
    LoadOption {
        name: "gpu_overhead",
        reads: Reads::Model,
        kind: Kind::Bytes,
        server: ServerFlag::None,
        switch: None,
        aliases: &[],
        doc: "bytes each used GPU loses outside llama.cpp's buffers (CUDA context)",
        set: set!(gpu_overhead, Bytes),
        get: |o| OptionValue::Bytes(o.gpu_overhead),
    },
    LoadOption {
        name: "n_batch",
        reads: Reads::Model,
        kind: Kind::Count,
        server: ServerFlag::Value {
            flag: "--batch-size",
            gpu: false,
        },
        switch: Some("--batch-size"),
        aliases: &[("-b", "--batch-size")],
        doc: "the logical batch",
        set: set!(n_batch, Count),
        get: |o| OptionValue::Count(o.n_batch),
    },
    LoadOption {
        name: "kv_unified",
        reads: Reads::Model,
        kind: Kind::Bool,
        server: ServerFlag::Switch {
            on: &["--kv-unified"],
            off: &["--no-kv-unified"],
        },
        switch: Some("--kv-unified"),
        aliases: &[("-kvu", "--kv-unified")],
        doc: "whether the slots share one KV cache",
        set: set!(kv_unified, Bool),
        get: |o| OptionValue::Bool(o.kv_unified),
    },
    LoadOption {
        name: "mmap",
        reads: Reads::Model,
        kind: Kind::Bool,
        server: ServerFlag::Switch {
            on: &["--load-mode", "mmap"],
            off: &["--load-mode", "none"],
        },
        switch: Some("--mmap"),
        aliases: &[],
        doc: "whether the file is memory-mapped",
        set: set!(mmap, Bool),
        get: |o| OptionValue::Bool(o.mmap),
    },
    LoadOption {
        name: "cpu_buffers",
        reads: Reads::Model,
        kind: Kind::CpuBuffers,
        server: ServerFlag::Switch {
            on: &["--repack"],
            off: &["--no-repack"],
        },
        switch: Some("--cpu-buffers"),
        aliases: &[],
        doc: "the runtime profile: which extra CPU buffers llama.cpp copies weights into",
        set: set_cpu_buffers,
        get: |o| OptionValue::CpuBuffers(Some(o.cpu_buffers)),
    },
    LoadOption {
        name: "repack",
        reads: Reads::Model,
        kind: Kind::Repack,
        server: ServerFlag::None,
        switch: Some("--repack"),
        aliases: &[],
        doc: "the older name of cpu_buffers: true is :x86_avx2, false is :none",
        set: set_cpu_buffers,
        get: |o| OptionValue::CpuBuffers(Some(o.cpu_buffers)),
    },
    LoadOption {
        name: "cache_ram",
        reads: Reads::Model,
        kind: Kind::Bytes,
        server: ServerFlag::Mib("--cache-ram"),
        switch: Some("--cache-ram"),
        aliases: &[("-cram", "--cache-ram")],
        doc: "the server's prompt cache in RAM, in bytes (the switch takes MiB)",
        set: set!(cache_ram, Bytes),
        get: |o| OptionValue::Bytes(o.cache_ram),
    },
];

fn set_cpu_buffers(o: &mut DistributeOptions, v: OptionValue) {
    if let OptionValue::CpuBuffers(profile) = v {
        o.cpu_buffers = profile.unwrap_or_else(CpuBuffers::detect);
    }
}

/// `:repack`'s booleans as profiles: `true` is x86-64 with AVX2, `false`
/// none.
pub fn repack_profile(yes: bool) -> CpuBuffers {
    if yes {
        CpuBuffers::X86Avx2
    } else {
        CpuBuffers::None
    }
}

/// Options of other programs that sit within a typo of ours and mean
/// something else there: never refused.
pub const FOREIGN: &[&str] = &[
    // llama.cpp / LlamaCppEx
    "model",
    "n_seq_max",
    "use_mmap",
    "use_mlock",
    // Elixir / distribution
    "node",
    "name",
];

impl OptionSet {
    /// Whether this path reads `key`.
    pub fn reads(self, key: &str) -> bool {
        option(key).is_some_and(|o| o.read_by(self))
    }
}

/// The option an unknown `key` looks like a misspelling of: one or two
/// edits (insertions, deletions, substitutions, swaps of neighbours) from
/// any option of either path, at most one edit per four characters of that
/// option (so `node` is not taken for `mode`'s typo twice over), and not a
/// known option of another program. Exact names of either path are never
/// near misses.
pub fn near_miss(key: &str) -> Option<&'static str> {
    let ours = || LOAD_OPTIONS.iter().map(|o| &o.name);
    if ours().any(|k| *k == key) || FOREIGN.contains(&key) {
        return None;
    }
    let letters = letter_set(key);
    ours()
        // Two edits change at most four letters of the set: most keys are
        // ruled out by one XOR before the edit distance is worked out.
        .filter(|k| (letter_set(k) ^ letters).count_ones() <= 4)
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| (1..=2).contains(d) && *d * 4 <= k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The bytes of `s` as a set, folded into 64 bits (a superset test: two
/// strings one edit apart differ in at most two bits).
fn letter_set(s: &str) -> u64 {
    s.bytes().fold(0, |set, b| set | 1 << (b % 64))
}

/// Optimal string alignment distance (Levenshtein plus adjacent swaps),
/// capped at 3: only distances up to 2 matter, so a row whose every cell is
/// past 2 ends the walk (most keys differ within a few letters), and three
/// rows on the stack stand for the table. Callers pass every unknown key of
/// a whole load-options list, so this runs dozens of times per call.
fn edit_distance(a: &str, b: &str) -> usize {
    const CAP: u8 = 3;
    const MAX: usize = 64;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    // Far apart in length: more than two edits whatever the letters.
    if a.len().abs_diff(b.len()) > 2 || b.len() >= MAX {
        return CAP.into();
    }
    let mut before = [0u8; MAX + 1];
    let mut prev: [u8; MAX + 1] = std::array::from_fn(|j| (j as u8).min(CAP));
    let mut cur = [0u8; MAX + 1];
    for i in 1..=a.len() {
        cur[0] = (i as u8).min(CAP);
        let mut row_min = cur[0];
        for j in 1..=b.len() {
            let cost = u8::from(a[i - 1] != b[j - 1]);
            let mut best = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            cur[j] = best.min(CAP);
            row_min = row_min.min(cur[j]);
        }
        if row_min >= CAP {
            return CAP.into();
        }
        (before, prev, cur) = (prev, cur, before);
    }
    prev[b.len()].into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_name_the_option_they_resemble() {
        assert_eq!(near_miss("n_gpu_layer"), Some("n_gpu_layers"));
        assert_eq!(near_miss("n_gpu_lyaers"), Some("n_gpu_layers"));
        assert_eq!(near_miss("tensor_splitt"), Some("tensor_split"));
        assert_eq!(near_miss("cache_typek"), Some("cache_type_k"));
        assert_eq!(near_miss("flash_atn"), Some("flash_attn"));
        assert_eq!(near_miss("mdoe"), Some("mode"));
    }

    #[test]
    fn options_and_other_programs_keys_are_not_typos() {
        for key in LOAD_OPTIONS.iter().map(|o| &o.name).chain(FOREIGN) {
            assert_eq!(near_miss(key), None, "{key}");
        }
        for key in [
            "keep_alive",
            "pinned",
            "backend",
            "timeout",
            "n_threads",
            "ctx",
            "seed",
        ] {
            assert_eq!(near_miss(key), None, "{key}");
        }
    }

    #[test]
    fn short_options_allow_one_edit_only() {
        assert_eq!(near_miss("modes"), Some("mode"));
        assert_eq!(near_miss("mo"), None);
        assert_eq!(near_miss("n_cx"), Some("n_ctx"));
        assert_eq!(near_miss("n_x"), None);
    }

    #[test]
    fn names_switches_and_aliases_are_each_written_once() {
        let mut seen = std::collections::HashSet::new();
        for o in LOAD_OPTIONS {
            assert!(seen.insert(o.name), "{}", o.name);
            for s in o.switch.iter().chain(o.aliases.iter().map(|(a, _)| a)) {
                assert!(seen.insert(s), "{s}");
            }
        }
    }

    #[test]
    fn each_default_is_the_estimators_and_sets_back_unchanged() {
        let defaults = DistributeOptions::default();
        for o in LOAD_OPTIONS {
            let mut opts = DistributeOptions::default();
            (o.set)(&mut opts, (o.get)(&defaults));
            assert_eq!(opts, defaults, "{}", o.name);
        }
        assert_eq!(
            option("n_ctx").unwrap().default_value(),
            OptionValue::Context(None)
        );
        assert_eq!(
            option("cache_ram").unwrap().default_value(),
            OptionValue::Bytes(8192 << 20)
        );
        assert_eq!(
            option("cpu_buffers").unwrap().default_value(),
            OptionValue::CpuBuffers(None)
        );
    }

    #[test]
    fn a_value_sets_its_field_and_the_older_name_sets_the_newer() {
        let mut opts = DistributeOptions::default();
        (option("n_batch").unwrap().set)(&mut opts, OptionValue::Count(77));
        assert_eq!(opts.n_batch, 77);
        (option("repack").unwrap().set)(
            &mut opts,
            OptionValue::CpuBuffers(Some(repack_profile(false))),
        );
        assert_eq!(opts.cpu_buffers, CpuBuffers::None);
        // A value of another kind leaves the field alone.
        (option("n_batch").unwrap().set)(&mut opts, OptionValue::Bool(true));
        assert_eq!(opts.n_batch, 77);
    }

    #[test]
    fn choices_come_from_the_core_tables() {
        assert_eq!(Kind::Mode.choices(), ["server", "direct"]);
        assert_eq!(Kind::CacheType.choices().len(), CacheType::ALL.len());
        assert_eq!(Kind::CpuBuffers.choices()[0], "auto");
        assert!(Kind::Count.choices().is_empty());
    }

    #[test]
    fn each_path_reads_its_own_set() {
        assert!(OptionSet::Bytes.reads("kv_bytes_per_token"));
        assert!(!OptionSet::Model.reads("kv_bytes_per_token"));
        assert!(OptionSet::Model.reads("cache_type_k"));
        assert!(!OptionSet::Bytes.reads("gpu_overhead"));
        assert!(OptionSet::Bytes.reads("n_ctx") && OptionSet::Model.reads("n_ctx"));
    }

    #[test]
    fn edit_distance_counts_swaps_once() {
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", "acb"), 1);
        assert_eq!(edit_distance("abc", "a"), 2);
        assert_eq!(edit_distance("", "abcd"), 3);
        assert_eq!(edit_distance("n_gpu_layer", "n_gpu_layers"), 1);
        assert_eq!(edit_distance("n_ctxx", "n_ctx"), 1);
        assert_eq!(edit_distance("flash_attn", "flsah_atn"), 2);
        assert_eq!(edit_distance("split_mode", "spilt_mdoe"), 2);
        assert_eq!(edit_distance("keep_alive", "tensor_split"), 3);
        assert_eq!(edit_distance("abcdef", "badcfe"), 3);
    }

    proptest::proptest! {
        #[test]
        fn edit_distance_agrees_with_the_full_table_up_to_its_cap(
            a in "[a-d_]{0,8}", b in "[a-d_]{0,8}"
        ) {
            proptest::prop_assert_eq!(edit_distance(&a, &b), full_table(&a, &b).min(3));
        }
    }

    /// The whole optimal-string-alignment table, uncapped: the reference.
    fn full_table(a: &str, b: &str) -> usize {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        let w = b.len() + 1;
        let mut d = vec![0usize; (a.len() + 1) * w];
        for i in 0..=a.len() {
            for j in 0..=b.len() {
                d[i * w + j] = if i == 0 || j == 0 {
                    i + j
                } else {
                    let cost = usize::from(a[i - 1] != b[j - 1]);
                    let mut best = (d[(i - 1) * w + j] + 1)
                        .min(d[i * w + j - 1] + 1)
                        .min(d[(i - 1) * w + j - 1] + cost);
                    if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                        best = best.min(d[(i - 2) * w + j - 2] + 1);
                    }
                    best
                };
            }
        }
        d[a.len() * w + b.len()]
    }
}
