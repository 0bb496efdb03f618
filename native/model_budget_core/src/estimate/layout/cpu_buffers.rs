//! Extra CPU buffer types: llama.cpp's CPU backend copies some weight
//! matrices into buffers of its own, in layouts its fastest kernels read.
//! Which buffers a runtime has is a property of its build on a CPU (the
//! runtime profile, [`CpuBuffers`]): a native build on a Sapphire Rapids
//! Xeon packs for AMX, a generic x86-64 wheel on the same machine only
//! repacks, `--no-repack` does neither.
//!
//! The rules follow llama.cpp build 11434:
//!
//! * The order: `ggml_backend_cpu_get_extra_buffer_types` (ggml-cpu.cpp)
//!   offers AMX, then KleidiAI, then CPU_REPACK; `make_cpu_buft_list`
//!   (llama-model.cpp) puts them before the plain CPU buffer, and a weight
//!   goes to the first whose `supports_op` accepts its op
//!   (`weight_buft_supported`): `MUL_MAT` for a 2-D matrix, `MUL_MAT_ID`
//!   for stacked experts, `GET_ROWS` for the token embeddings.
//! * What each takes and how large its copy is: [`KERNELS`], one row per
//!   buffer and type, each citing its function.
//! * With mmap the file stays mapped and the copies come on top, except
//!   where the copied tensors lie at an end of the host's range (see
//!   `mapping`); without mmap the copy replaces the loaded tensor.

use crate::model::{MatrixBytes, MatrixClass};

/// An extra CPU buffer type, as llama.cpp names it in its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExtraBuffer {
    /// `AMX`: Intel AMX tiles (ggml-cpu/amx/).
    Amx,
    /// `KLEIDIAI`: Arm's KleidiAI micro-kernels (ggml-cpu/kleidiai/).
    Kleidiai,
    /// `CPU_REPACK`: interleaved rows for the AVX2/AVX-512/NEON kernels
    /// (ggml-cpu/repack.cpp).
    Repack,
}

impl ExtraBuffer {
    /// The buffer's name in llama.cpp's `model buffer size` log lines.
    pub fn name(self) -> &'static str {
        match self {
            ExtraBuffer::Amx => "AMX",
            ExtraBuffer::Kleidiai => "KLEIDIAI",
            ExtraBuffer::Repack => "CPU_REPACK",
        }
    }

    /// The buffer a log line's name stands for.
    pub fn from_name(name: &str) -> Option<ExtraBuffer> {
        [ExtraBuffer::Amx, ExtraBuffer::Kleidiai, ExtraBuffer::Repack]
            .into_iter()
            .find(|b| b.name() == name)
    }
}

/// The CPU features that choose CPU_REPACK's kernels
/// (`ggml_repack_get_optimal_repack_type`, repack.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Isa {
    X86Avx2,
    /// AVX-512 adds the Q2_K kernel.
    X86Avx512,
    /// NEON with the dot-product extension.
    ArmDotprod,
}

/// A runtime profile's extra CPU buffers: what a llama.cpp build does on
/// the machine it runs on. Each variant lists its buffers in llama.cpp's
/// order of precedence ([`CpuBuffers::chain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CpuBuffers {
    /// None: `--no-repack`, or a build without extra buffers.
    #[default]
    None,
    /// CPU_REPACK with the AVX2 kernels.
    X86Avx2,
    /// CPU_REPACK with the AVX-512 kernels.
    X86Avx512,
    /// AMX first, CPU_REPACK (AVX-512 kernels) for what AMX refuses: a
    /// native build on a CPU with AMX-INT8 and AVX512-VNNI.
    X86Amx,
    /// CPU_REPACK with the NEON dot-product kernels.
    ArmDotprod,
    /// KleidiAI first (a build with `GGML_CPU_KLEIDIAI`), then CPU_REPACK.
    ArmKleidiai,
}

/// Every profile, for tables and messages.
pub const PROFILES: [CpuBuffers; 6] = [
    CpuBuffers::None,
    CpuBuffers::X86Avx2,
    CpuBuffers::X86Avx512,
    CpuBuffers::X86Amx,
    CpuBuffers::ArmDotprod,
    CpuBuffers::ArmKleidiai,
];

/// One row of the table: a buffer takes matrices of type `ggml` whose row
/// count (`ne[1]`) and row length (`ne[0]`) are multiples of the numbers
/// given, 2-D only or stacked experts too, and its copy is `num / den` of
/// the original's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    pub buffer: ExtraBuffer,
    /// `None` for a rule every ISA of the buffer has.
    isa: Option<Isa>,
    pub ggml: &'static str,
    pub rows_multiple: u32,
    pub cols_multiple: u32,
    /// Whether `MUL_MAT_ID` (stacked experts) may use it too.
    pub stacked: bool,
    pub num: u64,
    pub den: u64,
}

const fn k(
    buffer: ExtraBuffer,
    isa: Option<Isa>,
    ggml: &'static str,
    (rows_multiple, cols_multiple): (u32, u32),
    stacked: bool,
    (num, den): (u64, u64),
) -> Kernel {
    Kernel {
        buffer,
        isa,
        ggml,
        rows_multiple,
        cols_multiple,
        stacked,
        num,
        den,
    }
}

use ExtraBuffer::{Amx, Kleidiai, Repack};

const AVX2: Option<Isa> = Some(Isa::X86Avx2);
const AVX512: Option<Isa> = Some(Isa::X86Avx512);
const ARM: Option<Isa> = Some(Isa::ArmDotprod);

/// What each extra buffer takes, and the size of its copy.
///
/// * AMX (amx/amx.cpp, `extra_buffer_type::supports_op`): `MUL_MAT` only,
///   32 output rows at a time (`TILE_N * 2`), rows of whole `TILE_K` (32)
///   blocks for Q4_0/Q4_1/Q8_0, of `QK_K` (256) for the K-quants and
///   IQ4_XS, of 16 for F16. Its copy (amx/mmq.cpp,
///   `ggml_backend_amx_get_alloc_size` and `get_row_size`) adds an `int32`
///   per block to Q8_0 (34 -> 38 bytes), 4 bytes per super-block to Q4_K
///   and Q5_K (144 -> 148, 176 -> 180) and 2 to IQ4_XS (136 -> 138); F16
///   and the others keep their size. Measured on Sapphire Rapids
///   (test/fixtures/llama_cpp_truth_b11434_amx.json): Q4_0, Q4_K, Q6_K,
///   Q8_0 and F16. Not measured: Q4_1, Q5_K, IQ4_XS.
/// * CPU_REPACK (repack.cpp, `ggml_repack_get_optimal_repack_type`): by
///   ISA and type, 8 output rows at a time, `MUL_MAT` and `MUL_MAT_ID`
///   alike; the copy keeps the size. Some ARM kernels take rows in fours:
///   taken as eights here, which errs towards the mapped file. Measured
///   with AVX2 (test/fixtures/llama_cpp_truth.json); not measured: the
///   AVX-512 Q2_K kernel, ARM.
/// * KLEIDIAI (kleidiai/kleidiai.cpp, `supports_op`): Q4_0 and Q8_0
///   matrices, 2-D only. Its packed size depends on the kernels the CPU
///   selects (`ggml_backend_cpu_kleidiai_buffer_type_get_alloc_size`): it
///   is taken as the original's, and it also takes a Q4_0/Q8_0 token
///   embedding for `GET_ROWS`, which is not modelled. Not measured: no ARM
///   machine here.
pub const KERNELS: &[Kernel] = &[
    k(Amx, None, "Q4_0", (32, 32), false, (1, 1)),
    k(Amx, None, "Q4_1", (32, 32), false, (1, 1)),
    k(Amx, None, "Q8_0", (32, 32), false, (38, 34)),
    k(Amx, None, "Q4_K", (32, 256), false, (148, 144)),
    k(Amx, None, "Q5_K", (32, 256), false, (180, 176)),
    k(Amx, None, "Q6_K", (32, 256), false, (1, 1)),
    k(Amx, None, "IQ4_XS", (32, 256), false, (138, 136)),
    k(Amx, None, "F16", (32, 16), false, (1, 1)),
    k(Kleidiai, None, "Q4_0", (1, 1), false, (1, 1)),
    k(Kleidiai, None, "Q8_0", (1, 1), false, (1, 1)),
    k(Repack, AVX2, "Q4_0", (8, 1), true, (1, 1)),
    k(Repack, AVX2, "Q4_K", (8, 1), true, (1, 1)),
    k(Repack, AVX2, "IQ4_NL", (8, 1), true, (1, 1)),
    k(Repack, AVX2, "MXFP4", (8, 1), true, (1, 1)),
    k(Repack, AVX512, "Q4_0", (8, 1), true, (1, 1)),
    k(Repack, AVX512, "Q4_K", (8, 1), true, (1, 1)),
    k(Repack, AVX512, "IQ4_NL", (8, 1), true, (1, 1)),
    k(Repack, AVX512, "MXFP4", (8, 1), true, (1, 1)),
    k(Repack, AVX512, "Q2_K", (8, 1), true, (1, 1)),
    k(Repack, ARM, "Q4_0", (8, 1), true, (1, 1)),
    k(Repack, ARM, "Q4_K", (8, 1), true, (1, 1)),
    k(Repack, ARM, "Q5_K", (8, 1), true, (1, 1)),
    k(Repack, ARM, "Q6_K", (8, 1), true, (1, 1)),
    k(Repack, ARM, "Q8_0", (8, 1), true, (1, 1)),
    k(Repack, ARM, "IQ4_NL", (8, 1), true, (1, 1)),
    k(Repack, ARM, "MXFP4", (8, 1), true, (1, 1)),
    k(Repack, ARM, "Q1_0", (8, 1), true, (1, 1)),
];

impl Kernel {
    fn takes(&self, class: &MatrixClass) -> bool {
        self.ggml == class.ggml
            && class.rows_multiple.is_multiple_of(self.rows_multiple)
            && class.cols_multiple.is_multiple_of(self.cols_multiple)
            && (self.stacked || !class.stacked)
    }

    /// The copy's bytes for `bytes` of the original, rounded up.
    fn packed(&self, bytes: u64) -> u64 {
        let packed = (u128::from(bytes) * u128::from(self.num)).div_ceil(u128::from(self.den));
        u64::try_from(packed).unwrap_or(u64::MAX)
    }
}

/// Bytes per extra buffer, and the original bytes they took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtraBytes {
    pub amx: u64,
    pub kleidiai: u64,
    pub repack: u64,
    /// Of the originals, the bytes copied: without mmap they leave the
    /// plain CPU buffer.
    pub taken: u64,
}

impl ExtraBytes {
    fn slot(&mut self, buffer: ExtraBuffer) -> &mut u64 {
        match buffer {
            ExtraBuffer::Amx => &mut self.amx,
            ExtraBuffer::Kleidiai => &mut self.kleidiai,
            ExtraBuffer::Repack => &mut self.repack,
        }
    }
}

impl CpuBuffers {
    /// The extra buffers in llama.cpp's order of precedence.
    pub fn chain(self) -> &'static [ExtraBuffer] {
        match self {
            CpuBuffers::None => &[],
            CpuBuffers::X86Avx2 | CpuBuffers::X86Avx512 | CpuBuffers::ArmDotprod => &[Repack],
            CpuBuffers::X86Amx => &[Amx, Repack],
            CpuBuffers::ArmKleidiai => &[Kleidiai, Repack],
        }
    }

    fn isa(self) -> Option<Isa> {
        match self {
            CpuBuffers::None => None,
            CpuBuffers::X86Avx2 => Some(Isa::X86Avx2),
            CpuBuffers::X86Avx512 | CpuBuffers::X86Amx => Some(Isa::X86Avx512),
            CpuBuffers::ArmDotprod | CpuBuffers::ArmKleidiai => Some(Isa::ArmDotprod),
        }
    }

    /// The kernel that takes a matrix of `class`, if any: the first buffer
    /// of the chain that accepts it.
    pub fn kernel(self, class: &MatrixClass) -> Option<&'static Kernel> {
        let isa = self.isa();
        self.chain().iter().find_map(|buffer| {
            KERNELS.iter().find(|k| {
                k.buffer == *buffer && (k.isa.is_none() || k.isa == isa) && k.takes(class)
            })
        })
    }

    /// Whether some extra buffer takes a matrix of `class`.
    pub fn takes(self, class: &MatrixClass) -> bool {
        self.kernel(class).is_some()
    }

    /// What the extra buffers take of `matrices`, and their copies' sizes.
    pub fn split(self, matrices: &MatrixBytes) -> ExtraBytes {
        let mut out = ExtraBytes::default();
        if self == CpuBuffers::None {
            return out;
        }
        for (class, &bytes) in matrices {
            if let Some(kernel) = self.kernel(class) {
                let slot = out.slot(kernel.buffer);
                *slot = slot.saturating_add(kernel.packed(bytes));
                out.taken = out.taken.saturating_add(bytes);
            }
        }
        out
    }

    /// The profile's name: the atom the Elixir side uses.
    pub fn name(self) -> &'static str {
        match self {
            CpuBuffers::None => "none",
            CpuBuffers::X86Avx2 => "x86_avx2",
            CpuBuffers::X86Avx512 => "x86_avx512",
            CpuBuffers::X86Amx => "x86_amx",
            CpuBuffers::ArmDotprod => "arm_dotprod",
            CpuBuffers::ArmKleidiai => "arm_kleidiai",
        }
    }

    pub fn from_name(name: &str) -> Option<CpuBuffers> {
        PROFILES.into_iter().find(|p| p.name() == name)
    }

    /// The profile a llama.cpp build reports in its `system_info:` line
    /// (`llama_print_system_info`: the CPU backend's features, each `NAME =
    /// 1`, and `REPACK = 1` when it was built with CPU_REPACK), as it runs
    /// on this machine: `AMX_INT8` appears only when the build has AMX and
    /// the CPU too (ggml-cpu.cpp, `ggml_backend_cpu_get_features`).
    pub fn from_system_info(line: &str) -> CpuBuffers {
        // Fields are `NAME = 1`; the first of a backend's reads `CPU : NAME = 1`.
        let on = |feature: &str| {
            line.split('|').any(|field| {
                let mut kv = field.split('=');
                let name = kv.next().and_then(|k| k.rsplit(':').next()).map(str::trim);
                name == Some(feature) && kv.next().map(str::trim) == Some("1")
            })
        };
        let repack = on("REPACK");
        if on("AMX_INT8") {
            // A build with AMX but without CPU_REPACK differs only in the
            // matrices AMX refuses and CPU_REPACK would take: taken as
            // X86Amx, the estimate errs high.
            return CpuBuffers::X86Amx;
        }
        if on("KLEIDIAI") {
            return CpuBuffers::ArmKleidiai;
        }
        if !repack {
            return CpuBuffers::None;
        }
        if on("AVX512") {
            CpuBuffers::X86Avx512
        } else if on("AVX2") {
            CpuBuffers::X86Avx2
        } else if on("DOTPROD") {
            CpuBuffers::ArmDotprod
        } else {
            CpuBuffers::None
        }
    }

    /// The profile of a llama.cpp built for this machine's CPU
    /// (`GGML_NATIVE`, as `scripts/llama_server.sh` builds it), with
    /// CPU_REPACK. Asked once: every default option set reads it, and
    /// CPUID costs a VM exit under a hypervisor (microseconds a call).
    pub fn detect() -> CpuBuffers {
        static DETECTED: std::sync::OnceLock<CpuBuffers> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(Self::detect_now)
    }

    fn detect_now() -> CpuBuffers {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has_amx_int8() && has!("avx512vnni") {
                return CpuBuffers::X86Amx;
            }
            if has!("avx512f") {
                return CpuBuffers::X86Avx512;
            }
            if has!("avx2") {
                return CpuBuffers::X86Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                return CpuBuffers::ArmDotprod;
            }
        }
        CpuBuffers::None
    }
}

/// Whether the CPU has AMX-INT8 (CPUID leaf 7, EDX bit 25): the standard
/// library's detection of it is not stable yet. llama.cpp also asks the
/// kernel for the tiles' state (`ggml_amx_init`); Linux grants it on every
/// CPU that has them.
#[cfg(target_arch = "x86_64")]
fn has_amx_int8() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaf 0 gives the highest leaf; both calls only read CPU registers.
    #[allow(unused_unsafe)]
    let (max_leaf, leaf7) = unsafe { (__cpuid(0).eax, __cpuid_count(7, 0)) };
    max_leaf >= 7 && leaf7.edx & (1 << 25) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ggml_type::TYPES;

    fn plain(pairs: &[(&'static str, u64)]) -> MatrixBytes {
        pairs
            .iter()
            .map(|(t, b)| (MatrixClass::plain(t), *b))
            .collect()
    }

    #[test]
    fn avx2_repacks_q4_but_not_q6_k_or_q8_0() {
        let m = plain(&[("Q4_K", 100), ("Q6_K", 10), ("Q8_0", 1), ("Q4_0", 1000)]);
        let avx2 = CpuBuffers::X86Avx2.split(&m);
        assert_eq!((avx2.repack, avx2.taken, avx2.amx), (1100, 1100, 0));
        assert_eq!(CpuBuffers::None.split(&m), ExtraBytes::default());
        assert_eq!(CpuBuffers::ArmDotprod.split(&m).repack, 1111);
    }

    #[test]
    fn avx512_adds_q2_k() {
        let m = plain(&[("Q2_K", 7), ("Q4_K", 1)]);
        assert_eq!(
            (
                CpuBuffers::X86Avx2.split(&m).repack,
                CpuBuffers::X86Avx512.split(&m).repack
            ),
            (1, 8)
        );
    }

    #[test]
    fn amx_takes_q4_k_to_f16_and_grows_q4_k_q5_k_and_q8_0() {
        let m = plain(&[
            ("Q4_0", 18 * 10),
            ("Q4_K", 144 * 10),
            ("Q5_K", 176 * 10),
            ("Q6_K", 210 * 10),
            ("Q8_0", 34 * 10),
            ("F16", 2 * 10),
            ("IQ4_XS", 136 * 10),
            ("Q3_K", 110 * 10),
        ]);
        let e = CpuBuffers::X86Amx.split(&m);
        assert_eq!(
            e.amx,
            18 * 10 + 148 * 10 + 180 * 10 + 210 * 10 + 38 * 10 + 2 * 10 + 138 * 10
        );
        // Q3_K has neither AMX nor AVX-512 repack kernels: it stays.
        assert_eq!((e.repack, e.taken), (0, 720 * 10));
    }

    #[test]
    fn what_amx_refuses_falls_to_cpu_repack_in_order() {
        // 3-D experts (MUL_MAT_ID), and 8 but not 32 rows: AMX refuses
        // both, CPU_REPACK takes Q4_K; Q6_K stays with either.
        let experts = MatrixClass {
            stacked: true,
            ..MatrixClass::plain("Q4_K")
        };
        let eight_rows = MatrixClass::of("Q4_K", 8 * 3, 4096, false);
        let q6_experts = MatrixClass {
            stacked: true,
            ..MatrixClass::plain("Q6_K")
        };
        let m: MatrixBytes = [(experts, 1440), (eight_rows, 144), (q6_experts, 210)].into();
        let e = CpuBuffers::X86Amx.split(&m);
        assert_eq!((e.amx, e.repack, e.taken), (0, 1584, 1584));
        assert_eq!(
            CpuBuffers::X86Amx
                .kernel(&MatrixClass::plain("Q4_K"))
                .map(|k| k.buffer),
            Some(ExtraBuffer::Amx)
        );
    }

    #[test]
    fn amx_needs_whole_tiles_of_rows_and_blocks() {
        let amx = |ggml, rows, cols| {
            CpuBuffers::X86Amx
                .kernel(&MatrixClass::of(ggml, rows, cols, false))
                .map(|k| k.buffer)
        };
        // Qwen2.5's odd widths: 3584 and 896 rows are multiples of 32.
        assert_eq!(amx("Q4_K", 3584, 18944), Some(ExtraBuffer::Amx));
        assert_eq!(amx("Q4_0", 896, 4864), Some(ExtraBuffer::Amx));
        assert_eq!(amx("Q6_K", 16 * 3, 4096), None);
        assert_eq!(amx("F16", 64, 8), None);
        assert_eq!(amx("F16", 64, 48), Some(ExtraBuffer::Amx));
    }

    #[test]
    fn kleidiai_comes_before_cpu_repack() {
        let m = plain(&[("Q4_0", 18), ("Q4_K", 144)]);
        let e = CpuBuffers::ArmKleidiai.split(&m);
        assert_eq!((e.kleidiai, e.repack), (18, 144));
    }

    #[test]
    fn every_named_type_is_a_ggml_type() {
        for kernel in KERNELS {
            assert!(
                TYPES.iter().any(|t| t.name == kernel.ggml),
                "{}",
                kernel.ggml
            );
            // Every AMX size ratio is block for block.
            let ty = TYPES.iter().find(|t| t.name == kernel.ggml).unwrap();
            assert_eq!(ty.type_size % kernel.den, 0, "{}", kernel.ggml);
        }
    }

    #[test]
    fn profiles_round_trip_their_names() {
        for p in PROFILES {
            assert_eq!(CpuBuffers::from_name(p.name()), Some(p));
        }
        assert_eq!(CpuBuffers::from_name("amx"), None);
        for b in [ExtraBuffer::Amx, ExtraBuffer::Kleidiai, ExtraBuffer::Repack] {
            assert_eq!(ExtraBuffer::from_name(b.name()), Some(b));
        }
    }

    #[test]
    fn a_system_info_line_names_the_profile() {
        let amx = "system_info: n_threads = 2 (n_threads_batch = 2) / 2 | CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |";
        assert_eq!(CpuBuffers::from_system_info(amx), CpuBuffers::X86Amx);
        let avx512 = amx.replace("AMX_INT8 = 1 | ", "");
        assert_eq!(CpuBuffers::from_system_info(&avx512), CpuBuffers::X86Avx512);
        let avx2 = "system_info: n_threads = 2 / 2 | CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | REPACK = 1 |";
        assert_eq!(CpuBuffers::from_system_info(avx2), CpuBuffers::X86Avx2);
        assert_eq!(
            CpuBuffers::from_system_info(&avx2.replace("REPACK = 1 |", "")),
            CpuBuffers::None
        );
        let arm = "system_info: n_threads = 4 | CPU : NEON = 1 | ARM_FMA = 1 | DOTPROD = 1 | REPACK = 1 |";
        assert_eq!(CpuBuffers::from_system_info(arm), CpuBuffers::ArmDotprod);
        let kleidi = "system_info: CPU : NEON = 1 | DOTPROD = 1 | KLEIDIAI = 1 | REPACK = 1 |";
        assert_eq!(
            CpuBuffers::from_system_info(kleidi),
            CpuBuffers::ArmKleidiai
        );
        // AVX512_VNNI alone does not read as AVX512.
        assert_eq!(
            CpuBuffers::from_system_info("CPU : AVX2 = 1 | AVX512_VNNI = 1 | REPACK = 1"),
            CpuBuffers::X86Avx2
        );
        assert_eq!(CpuBuffers::from_system_info(""), CpuBuffers::None);
    }

    proptest::proptest! {
        #[test]
        fn the_copy_never_shrinks_and_takes_at_most_what_there_is(
            bytes in proptest::collection::vec(0u64..1 << 40, 8),
            rows in proptest::collection::vec(1u64..100_000, 8),
            stacked in proptest::collection::vec(proptest::bool::ANY, 8),
        ) {
            let types = ["Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16", "IQ4_XS", "Q2_K"];
            let mut m = MatrixBytes::new();
            for i in 0..8 {
                *m.entry(MatrixClass::of(types[i], rows[i], 4096, stacked[i])).or_default() += bytes[i];
            }
            let total: u64 = m.values().sum();
            for p in PROFILES {
                let e = p.split(&m);
                proptest::prop_assert!(e.taken <= total);
                proptest::prop_assert!(e.amx + e.kleidiai + e.repack >= e.taken);
            }
        }
    }
}
