//! What a model file says about itself: GGUF and safetensors headers read
//! exactly and defensively, without touching the weights.
//!
//! Every length and count in a header is checked against the bytes really
//! left in the file before anything is read or allocated, offsets and sizes
//! use checked arithmetic, and tensor regions must be in bounds and must not
//! overlap. A malformed file is an [`Error::InvalidModel`] naming the byte
//! where the problem was found; nothing panics.

mod arch;
mod config;
pub mod ftype;
pub mod ggml_type;
pub mod gguf;
mod json;
pub mod safetensors;
mod source;
mod tally;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use ggml_type::GgmlType;
pub(crate) use source::{invalid, io_error};

/// The most repeating blocks a model may declare. Real models have a few
/// hundred; the cap bounds what a hostile count can make us allocate.
pub const MAX_LAYERS: u64 = 1 << 16;

/// The container a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gguf,
    Safetensors,
}

/// A count that is either the same for every layer or given per layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerLayer {
    Uniform(u64),
    /// One entry per repeating block, in order; never all equal.
    Layers(Vec<u64>),
}

impl PerLayer {
    /// A per-layer list, collapsed to `Uniform` when every entry is equal.
    pub fn from_list(values: Vec<u64>) -> PerLayer {
        match values.first() {
            Some(&first) if values.iter().all(|&v| v == first) => PerLayer::Uniform(first),
            _ => PerLayer::Layers(values),
        }
    }

    /// The value for layer `il` (the first entry for a uniform count).
    pub fn layer(&self, il: usize) -> Option<u64> {
        match self {
            PerLayer::Uniform(n) => Some(*n),
            PerLayer::Layers(v) => v.get(il).copied(),
        }
    }
}

/// Tensors of one element type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TypeStats {
    pub n_tensors: u64,
    pub n_params: u64,
    pub bytes: u64,
}

/// A model as its header describes it. Byte counts are exact: each tensor's
/// bytes follow from its shape and its type's block layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub format: Format,
    /// `general.architecture` (GGUF) or `model_type` (config.json).
    pub architecture: Option<String>,
    /// `general.name` (GGUF) or `_name_or_path` (config.json).
    pub name: Option<String>,
    /// What the weights mostly are, by llama.cpp's name for the GGUF
    /// header's `general.file_type` (`"Q4_K_M"`, see [`ftype`]); `None`
    /// when the header does not say, names a type llama.cpp does not
    /// define, or the model is not GGUF.
    pub file_type: Option<String>,
    /// Size of the model's weight files (all shards), headers included.
    pub file_bytes: u64,
    /// Bytes of all tensors as stored, each counted once.
    pub weight_bytes: u64,
    pub n_params: u64,
    pub n_tensors: u64,
    /// Repeating blocks (`block_count`, `num_hidden_layers`).
    pub n_layers: u64,
    pub n_head: Option<PerLayer>,
    pub n_head_kv: Option<PerLayer>,
    pub head_dim_k: Option<u64>,
    pub head_dim_v: Option<u64>,
    pub n_embd: Option<u64>,
    pub n_vocab: Option<u64>,
    /// The context length the model was trained for.
    pub context_length: Option<u64>,
    /// Tokens a sliding-window layer attends to.
    pub sliding_window: Option<u64>,
    /// One flag per layer: whether it uses the sliding window. Empty when
    /// there is no window.
    pub sliding_window_layers: Vec<bool>,
    pub n_experts: Option<u64>,
    pub n_experts_used: Option<u64>,
    /// Bytes of each repeating block, in order; `n_layers` entries.
    pub layer_bytes: Vec<u64>,
    /// Token (and position) embeddings: what llama.cpp keeps on the CPU.
    pub input_bytes: u64,
    /// Output head and final norm. With tied embeddings the head is the
    /// token embedding matrix, which is not counted here again: llama.cpp
    /// maps it once while the head stays on the host, and copies it only to
    /// a GPU that runs the head (the layout adds that copy).
    pub output_bytes: u64,
    /// The token embedding matrix (part of `input_bytes`).
    pub embedding_bytes: u64,
    /// Tensors outside the blocks, the embeddings and the head (rope
    /// tables, vision towers, blocks past `n_layers`, ...).
    pub other_bytes: u64,
    /// Whether the output head reuses the token embeddings.
    pub tied_embeddings: bool,
    /// Tensor statistics by type name (`"Q4_K"`, `"BF16"`, ...).
    pub types: BTreeMap<String, TypeStats>,
    /// The widest dense feed-forward block (its down projection's input), if any.
    pub n_ff: Option<u64>,
    /// The width of one expert's feed-forward block in a MoE block, if any.
    pub n_ff_exp: Option<u64>,
    /// Per block, bytes of its weight matrices by class: what an extra CPU
    /// buffer type may take into its own buffer. Empty for safetensors.
    pub layer_matrices: Vec<MatrixBytes>,
    /// The same for the output head (empty when it is tied).
    pub head_matrices: MatrixBytes,
    /// With a tied head, the token embeddings' class as the head's matrix:
    /// an extra CPU buffer may take a copy of it for the head.
    pub embedding_matrix: Option<MatrixClass>,
    /// Per block, bytes of its largest weight matrix: what llama.cpp's op
    /// offload copies to a GPU at a time (0 where no tensor is known to be
    /// a matrix, as in safetensors).
    pub layer_largest_matrix: Vec<u64>,
    /// The tensors' bytes in the order of the tensor table (a GGUF file's
    /// data order), consecutive tensors of one part merged: a memory map
    /// spans whatever lies between the first and the last tensor the host
    /// keeps.
    pub file_order: Vec<Run>,
}

/// What part of a model a tensor belongs to, for placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// Token embeddings and anything else llama.cpp keeps with them.
    Input,
    /// Repeating block `n`.
    Layer(u32),
    /// The output head and the final norm.
    Output,
}

/// Bytes of consecutive tensors of one part, in the file's order, all
/// weight matrices of one class or all something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub part: Part,
    pub bytes: u64,
    /// The class of the run's matrices: an extra CPU buffer may take them
    /// out of the memory map (`None`: norms, biases, embeddings, or not
    /// known).
    pub matrix: Option<MatrixClass>,
}

/// Appends `bytes` of `part` (matrices of class `matrix`, if any) to
/// `order`, merging it with the run before when both agree.
pub fn push_run(
    order: &mut Vec<Run>,
    part: Part,
    matrix: Option<MatrixClass>,
    bytes: u64,
) -> Result<()> {
    match order.last_mut() {
        Some(run) if run.part == part && run.matrix == matrix => {
            run.bytes = run
                .bytes
                .checked_add(bytes)
                .ok_or_else(|| invalid(0, "the tensors' sizes add up past 2^64"))?;
        }
        _ => order.push(Run {
            part,
            bytes,
            matrix,
        }),
    }
    Ok(())
}

/// What decides whether an extra CPU buffer type takes a weight matrix:
/// its ggml type, how its dimensions divide, and whether it stacks experts
/// (3-D, multiplied by `MUL_MAT_ID`). See `layout::cpu_buffers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MatrixClass {
    /// The ggml type's name (`"Q4_K"`), from [`ggml_type::TYPES`].
    pub ggml: &'static str,
    /// The largest power of two up to 32 dividing the row count
    /// (`ne[1]`, the output features).
    pub rows_multiple: u32,
    /// The largest power of two up to 256 dividing the row length
    /// (`ne[0]`, the input features).
    pub cols_multiple: u32,
    /// A MoE block's stacked experts (3-D).
    pub stacked: bool,
}

impl MatrixClass {
    /// The most any rule asks of a row count and a row length.
    pub const ROWS_MULTIPLE: u32 = 32;
    pub const COLS_MULTIPLE: u32 = 256;

    /// The class of a `ggml` matrix with `rows` rows of `cols` elements.
    pub fn of(ggml: &'static str, rows: u64, cols: u64, stacked: bool) -> MatrixClass {
        let multiple = |n: u64, max: u32| {
            // 1 << trailing zeros, capped: 0 counts as divisible by anything.
            let tz = n.trailing_zeros().min(max.trailing_zeros());
            1u32 << tz
        };
        MatrixClass {
            ggml,
            rows_multiple: multiple(rows, Self::ROWS_MULTIPLE),
            cols_multiple: multiple(cols, Self::COLS_MULTIPLE),
            stacked,
        }
    }

    /// A 2-D matrix of `ggml` whose dimensions satisfy every rule: what a
    /// type name alone stands for in a model given by hand.
    pub fn plain(ggml: &'static str) -> MatrixClass {
        MatrixClass {
            ggml,
            rows_multiple: Self::ROWS_MULTIPLE,
            cols_multiple: Self::COLS_MULTIPLE,
            stacked: false,
        }
    }
}

/// Bytes of weight matrices by class.
pub type MatrixBytes = BTreeMap<MatrixClass, u64>;

/// Reads the model at `path`: a GGUF file (with its other splits, for a
/// model split by llama.cpp's gguf-split), a `.safetensors` file, a
/// `model.safetensors.index.json`, or a folder holding one of the latter.
/// For safetensors, a `config.json` in the same folder supplies the
/// architecture numbers.
///
/// A file is told by its first bytes, whatever its name: the GGUF magic, or
/// a safetensors header length followed by the header's `{`. A file with
/// neither is refused as such (naming what it starts with) rather than
/// read as a malformed safetensors file; an index is told by its `.json`
/// name.
pub fn read(path: &Path) -> Result<Model> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(&e))?;
    if meta.is_dir() {
        return safetensors::read_path(&find_in_folder(path)?, path);
    }
    let start = first_bytes(path)?;
    if start.starts_with(gguf::MAGIC) {
        return gguf::read_path(path);
    }
    if path.extension().is_none_or(|e| e != "json") {
        safetensors_start(&start)?;
    }
    let folder = path.parent().unwrap_or(Path::new("."));
    safetensors::read_path(path, folder)
}

/// How many bytes tell a container: a safetensors header length and the
/// header's first byte (the GGUF magic is shorter).
const SNIFF: usize = 9;

/// The first [`SNIFF`] bytes of the file at `path` (fewer for a shorter file).
fn first_bytes(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = File::open(path).map_err(|e| io_error(&e))?;
    let mut start = Vec::with_capacity(SNIFF);
    file.take(SNIFF as u64)
        .read_to_end(&mut start)
        .map_err(|e| io_error(&e))?;
    Ok(start)
}

/// Fails, naming what the file starts with, unless `start` (a file's first
/// [`SNIFF`] bytes, without the GGUF magic) can begin a safetensors file:
/// an 8-byte little-endian header length no larger than the format allows,
/// then the JSON header, which "MUST begin with a `{`" and holds at least
/// `{}`. What follows is the safetensors reader's to check.
fn safetensors_start(start: &[u8]) -> Result<()> {
    if let Some((length, rest)) = start.split_first_chunk::<8>() {
        let n = u64::from_le_bytes(*length);
        if rest.first() == Some(&b'{') && (2..=safetensors::MAX_HEADER).contains(&n) {
            return Ok(());
        }
    }
    let what = if start.is_empty() {
        // "... it ends at byte 0".
        "it ends".to_owned()
    } else {
        let shown = &start[..start.len().min(8)];
        format!("it starts with \"{}\"", shown.escape_ascii())
    };
    Err(invalid(
        0,
        format!("not a GGUF or safetensors file: {what}"),
    ))
}

/// Reads a GGUF header held in memory, without the tensor data after it
/// (the header-only files of `priv/catalog` and the calibration table).
/// `file_bytes` counts the header and the tensors it describes.
pub fn read_gguf_header(bytes: &[u8]) -> Result<Model> {
    let mut model = gguf::parse(std::io::Cursor::new(bytes), u64::MAX)?;
    model.file_bytes = (bytes.len() as u64).saturating_add(model.weight_bytes);
    Ok(model)
}

/// The index or single file a safetensors folder holds.
fn find_in_folder(folder: &Path) -> Result<PathBuf> {
    for name in [safetensors::INDEX_FILE, safetensors::SINGLE_FILE] {
        let candidate = folder.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    // Otherwise exactly one index, or else exactly one weights file.
    let mut indexes = Vec::new();
    let mut singles = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(|e| io_error(&e))? {
        let entry = entry.map_err(|e| io_error(&e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".safetensors.index.json") {
            indexes.push(entry.path());
        } else if name.ends_with(".safetensors") {
            singles.push(entry.path());
        }
    }
    match (indexes.len(), singles.len()) {
        (1, _) => Ok(indexes.swap_remove(0)),
        (0, 1) => Ok(singles.swap_remove(0)),
        _ => Err(Error::InvalidModel {
            offset: 0,
            reason: format!(
                "{} holds no model.safetensors.index.json or model.safetensors, and not exactly one *.safetensors file to read instead",
                folder.display()
            ),
        }),
    }
}

/// Prefixes an `InvalidModel` reason with the file it concerns, for models
/// spread over several files.
pub(crate) fn in_file(err: Error, file: &str) -> Error {
    match err {
        Error::InvalidModel { offset, reason } => Error::InvalidModel {
            offset,
            reason: format!("{file}: {reason}"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `bytes` named `name` in a folder of its own; the folder
    /// goes when the guard does.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "mb-model-mod-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn reason(err: Error) -> String {
        match err {
            Error::InvalidModel { offset: 0, reason } => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_that_is_neither_gguf_nor_safetensors_says_so_whatever_its_name() {
        let dir = Scratch::new("neither");
        let text = dir.file("x.gguf", b"hello world\n");
        assert_eq!(
            reason(read(&text).unwrap_err()),
            "not a GGUF or safetensors file: it starts with \"hello wo\""
        );
        assert_eq!(
            read(&text).unwrap_err().to_string(),
            "not a GGUF or safetensors file: it starts with \"hello wo\" at byte 0"
        );
        // Bytes that are not printable are escaped; a short file shows all it has.
        let binary = dir.file("x.safetensors", &[0, 1, 0xff, b'"']);
        assert_eq!(
            reason(read(&binary).unwrap_err()),
            "not a GGUF or safetensors file: it starts with \"\\x00\\x01\\xff\\\"\""
        );
        let empty = dir.file("empty.gguf", b"");
        assert_eq!(
            read(&empty).unwrap_err().to_string(),
            "not a GGUF or safetensors file: it ends at byte 0"
        );
        // Less than the GGUF magic is not GGUF.
        let short = dir.file("short.gguf", b"GGU");
        assert_eq!(
            reason(read(&short).unwrap_err()),
            "not a GGUF or safetensors file: it starts with \"GGU\""
        );
        // A header length past what the format allows, or too short to
        // hold `{}`, is no safetensors header, even before a `{`.
        for n in [1u64, safetensors::MAX_HEADER + 1] {
            let mut bytes = n.to_le_bytes().to_vec();
            bytes.extend(b"{}");
            let path = dir.file("length.safetensors", &bytes);
            assert!(reason(read(&path).unwrap_err()).starts_with("not a GGUF or safetensors file"));
        }
    }

    #[test]
    fn a_safetensors_start_keeps_the_safetensors_errors() {
        let dir = Scratch::new("st");
        // A plausible header length and a `{`: a safetensors file, cut short.
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend(b"{}");
        let cut = dir.file("cut.gguf", &bytes);
        assert_eq!(
            reason(read(&cut).unwrap_err()),
            "header length 1000 runs past the end of the file (10 bytes)"
        );
        // GGUF by its magic, whatever its name.
        let mut gguf = gguf::MAGIC.to_vec();
        gguf.extend(1u32.to_le_bytes());
        let old = dir.file("old.safetensors", &gguf);
        assert!(matches!(
            read(&old).unwrap_err(),
            Error::InvalidModel { offset: 4, .. }
        ));
        // An index is told by its name, not its first bytes.
        let index = dir.file("model.safetensors.index.json", b"{\"metadata\": {}}");
        assert_eq!(
            reason(read(&index).unwrap_err()),
            "model.safetensors.index.json: no weight_map"
        );
    }
}
