//! GGUF (versions 2 and 3, little-endian): the metadata key/values and the
//! tensor table, read front to back without touching tensor data.
//!
//! Layout: magic, version, tensor count, key/value count, the key/values,
//! the tensor table, padding to `general.alignment`, then the data, in which
//! each tensor's offset is relative to the padded end of the header.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use super::arch::{gguf_default_period, Arch, At, Count, SwaLayers};
use super::ggml_type::GgmlType;
use super::source::Source;
use super::tally::{assemble, Embedding, Ffn, Matrix, Role, Tensor};
use super::{ftype, in_file, invalid, io_error, Format, Model, MAX_LAYERS};
use crate::error::Result;

pub const MAGIC: &[u8; 4] = b"GGUF";

/// Alignment of the data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Dimensions a ggml tensor may have (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Smallest possible tensor table entry: empty name, no dimensions.
const MIN_TENSOR_INFO: u64 = 8 + 4 + 4 + 8;
/// Smallest possible key/value: empty key, a one-byte value.
const MIN_KV: u64 = 8 + 4 + 1;
/// Longest string value we keep (names); longer ones are refused.
const MAX_KEPT_STRING: u64 = 4096;

const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// Keys read under the architecture's prefix (`llama.block_count`, ...).
const ARCH_KEYS: &[&str] = &[
    "block_count",
    "context_length",
    "embedding_length",
    "vocab_size",
    "expert_count",
    "expert_used_count",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.sliding_window",
    "attention.sliding_window_pattern",
];

/// A metadata value we keep.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(i128),
    Bool(bool),
    Str(String),
    Ints(Vec<u32>),
    /// An array we only counted (strings, floats, or too long to keep).
    Counted(u64),
    /// A value we read past.
    Skipped,
}

/// The byte width of a fixed-size value type.
fn fixed_size(ty: u32) -> Option<u64> {
    Some(match ty {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 => 8,
        _ => return None,
    })
}

fn type_name(ty: u32) -> &'static str {
    match ty {
        T_U8 => "uint8",
        T_I8 => "int8",
        T_U16 => "uint16",
        T_I16 => "int16",
        T_U32 => "uint32",
        T_I32 => "int32",
        T_F32 => "float32",
        T_BOOL => "bool",
        T_STRING => "string",
        T_ARRAY => "array",
        T_U64 => "uint64",
        T_I64 => "int64",
        T_F64 => "float64",
        _ => "unknown",
    }
}

struct Reader<R> {
    src: Source<R>,
}

impl<R: Read + Seek> Reader<R> {
    /// A GGUF string: u64 length, then bytes.
    fn string(&mut self, what: &str) -> Result<Vec<u8>> {
        let len = self.src.u64(what)?;
        self.src.take(len, what)
    }

    /// Reads one fixed-size value as an integer (floats and bools aside).
    fn scalar(&mut self, ty: u32, what: &str) -> Result<Value> {
        let s = &mut self.src;
        Ok(match ty {
            T_U8 => Value::Int(s.u8(what)?.into()),
            T_I8 => Value::Int((s.u8(what)? as i8).into()),
            T_U16 => Value::Int(u16::from_le_bytes(s.array(what)?).into()),
            T_I16 => Value::Int(i16::from_le_bytes(s.array(what)?).into()),
            T_U32 => Value::Int(s.u32(what)?.into()),
            T_I32 => Value::Int(i32::from_le_bytes(s.array(what)?).into()),
            T_U64 => Value::Int(s.u64(what)?.into()),
            T_I64 => Value::Int(i64::from_le_bytes(s.array(what)?).into()),
            T_BOOL => Value::Bool(s.u8(what)? != 0),
            T_F32 | T_F64 => {
                s.skip(fixed_size(ty).unwrap_or(0), what)?;
                Value::Skipped
            }
            _ => unreachable_type(s.offset(), ty)?,
        })
    }

    /// Reads a value of type `ty`; `keep` says whether to keep its contents
    /// (only for the keys the model description needs).
    fn value(&mut self, ty: u32, keep: bool, key: &str) -> Result<Value> {
        if let Some(size) = fixed_size(ty) {
            return if keep {
                self.scalar(ty, key)
            } else {
                self.src.skip(size, key).map(|_| Value::Skipped)
            };
        }
        match ty {
            T_STRING => {
                let at = self.src.offset();
                let len = self.src.u64(key)?;
                if !keep {
                    self.src.skip(len, key)?;
                    return Ok(Value::Counted(len));
                }
                if len > MAX_KEPT_STRING {
                    return Err(invalid(
                        at,
                        format!("{key} is {len} bytes long, more than {MAX_KEPT_STRING}"),
                    ));
                }
                let bytes = self.src.take(len, key)?;
                String::from_utf8(bytes)
                    .map(Value::Str)
                    .map_err(|_| invalid(at + 8, format!("{key} is not valid UTF-8")))
            }
            T_ARRAY => self.array(keep, key),
            _ => unreachable_type(self.src.offset(), ty),
        }
    }

    fn array(&mut self, keep: bool, key: &str) -> Result<Value> {
        let at = self.src.offset();
        let ty = self.src.u32(key)?;
        let count = self.src.u64(key)?;
        if ty == T_ARRAY {
            // llama.cpp refuses nested arrays too.
            return Err(invalid(at, format!("{key} is an array of arrays")));
        }
        if let Some(size) = fixed_size(ty) {
            let bytes = count.checked_mul(size).ok_or_else(|| {
                invalid(
                    at + 4,
                    format!("{key} declares {count} elements, past 2^64 bytes"),
                )
            })?;
            self.src.need(bytes, key)?;
            let integral = !matches!(ty, T_F32 | T_F64);
            if !keep || !integral || count > MAX_LAYERS {
                self.src.skip(bytes, key)?;
                return Ok(Value::Counted(count));
            }
            // Kept arrays are per-layer counts and flags: at most MAX_LAYERS
            // entries of 4 bytes, never more than 4x the bytes they occupy.
            let mut values = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let element_at = self.src.offset();
                values.push(match self.scalar(ty, key)? {
                    Value::Int(v) => u32::try_from(v).map_err(|_| {
                        invalid(
                            element_at,
                            format!("{key} holds {v}, expected a count below 2^32"),
                        )
                    })?,
                    Value::Bool(b) => b.into(),
                    _ => 0,
                });
            }
            return Ok(Value::Ints(values));
        }
        if ty != T_STRING {
            return unreachable_type(at, ty);
        }
        // Each string takes at least its 8-byte length.
        let min = count.checked_mul(8).ok_or_else(|| {
            invalid(
                at + 4,
                format!("{key} declares {count} strings, past 2^64 bytes"),
            )
        })?;
        self.src.need(min, key)?;
        for _ in 0..count {
            let len = self.src.u64(key)?;
            self.src.skip(len, key)?;
        }
        Ok(Value::Counted(count))
    }
}

fn unreachable_type<T>(offset: u64, ty: u32) -> Result<T> {
    Err(invalid(offset, format!("unknown metadata value type {ty}")))
}

/// Metadata kept for the model description.
#[derive(Default)]
struct Kept {
    entries: Vec<(String, At<Value>)>,
    alignment: Option<At<Value>>,
    n_tokens: Option<u64>,
}

impl Kept {
    fn get(&self, key: &str) -> Option<&At<Value>> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

fn wanted(key: &str) -> bool {
    matches!(
        key,
        "general.architecture"
            | "general.name"
            | "general.file_type"
            | "general.alignment"
            | "split.no"
            | "split.count"
    ) || key
        .split_once('.')
        .is_some_and(|(_, rest)| ARCH_KEYS.contains(&rest))
}

fn int(v: &At<Value>) -> Result<u64> {
    match &v.value {
        Value::Int(n) => u64::try_from(*n).map_err(|_| {
            invalid(
                v.offset,
                format!("{} is {n}, expected a non-negative integer", v.key),
            )
        }),
        _ => Err(invalid(
            v.offset,
            format!("{} has the wrong type, expected an integer", v.key),
        )),
    }
}

fn ints(v: &At<Value>) -> Result<Vec<u64>> {
    match &v.value {
        Value::Ints(values) => Ok(values.iter().map(|&n| n.into()).collect()),
        Value::Counted(n) => Err(invalid(
            v.offset,
            format!("{} holds {n} non-integer or too many entries", v.key),
        )),
        _ => Err(invalid(v.offset, format!("{} has the wrong type", v.key))),
    }
}

fn count(v: &At<Value>) -> Result<At<Count>> {
    let value = match &v.value {
        Value::Ints(_) | Value::Counted(_) => Count::List(ints(v)?),
        _ => Count::One(int(v)?),
    };
    Ok(At {
        value,
        offset: v.offset,
        key: v.key.clone(),
    })
}

fn string(v: &At<Value>) -> Result<String> {
    match &v.value {
        Value::Str(s) => Ok(s.clone()),
        _ => Err(invalid(v.offset, format!("{} is not a string", v.key))),
    }
}

/// The architecture numbers, from the metadata under `{arch}.`.
fn describe(kept: &Kept) -> Result<Arch> {
    let architecture = kept.get("general.architecture").map(string).transpose()?;
    let name = kept.get("general.name").map(string).transpose()?;
    let prefix = architecture.clone().unwrap_or_default();
    let key = |suffix: &str| kept.get(&format!("{prefix}.{suffix}"));
    let number = |suffix: &str| key(suffix).map(int).transpose();
    let n_layers = match key("block_count") {
        Some(v) => Some(Arch::layers(int(v)?, v.offset, &v.key)?),
        None => None,
    };
    let swa_layers = match key("attention.sliding_window_pattern") {
        Some(v) => Some(At {
            value: match &v.value {
                Value::Ints(_) => SwaLayers::Flags(ints(v)?.into_iter().map(|f| f != 0).collect()),
                Value::Bool(true) => SwaLayers::Period(0),
                _ => SwaLayers::Period(int(v)?),
            },
            offset: v.offset,
            key: v.key.clone(),
        }),
        None => gguf_default_period(&prefix).map(|p| At {
            value: SwaLayers::Period(p),
            offset: 0,
            key: String::new(),
        }),
    };
    Ok(Arch {
        architecture,
        name,
        n_layers,
        n_head: key("attention.head_count").map(count).transpose()?,
        n_head_kv: key("attention.head_count_kv").map(count).transpose()?,
        head_dim_k: number("attention.key_length")?,
        head_dim_v: number("attention.value_length")?,
        n_embd: number("embedding_length")?,
        n_vocab: number("vocab_size")?.or(kept.n_tokens),
        context_length: number("context_length")?,
        sliding_window: number("attention.sliding_window")?,
        swa_layers,
        n_experts: number("expert_count")?,
        n_experts_used: number("expert_used_count")?,
    })
}

fn version(src: &mut Source<impl Read + Seek>) -> Result<u32> {
    let version = src.u32("version")?;
    match version {
        2 | 3 => Ok(version),
        1 => Err(invalid(
            4,
            "GGUF version 1 is not supported (versions 2 and 3 are)",
        )),
        v if v.swap_bytes() <= 3 => Err(invalid(4, "big-endian GGUF files are not supported")),
        v => Err(invalid(
            4,
            format!("GGUF version {v} is not supported (versions 2 and 3 are)"),
        )),
    }
}

/// One tensor table entry, kept until the data section's start is known.
struct Entry {
    at: u64,
    name: (usize, usize),
    offset: u64,
    bytes: u64,
}

/// Names stored back to back with the byte where each was read, for the
/// duplicate check; memory stays proportional to the header.
#[derive(Default)]
struct Names {
    bytes: Vec<u8>,
    spans: Vec<((usize, usize), u64)>,
}

impl Names {
    fn push(&mut self, name: &[u8], at: u64) -> (usize, usize) {
        let span = (self.bytes.len(), self.bytes.len() + name.len());
        self.bytes.extend_from_slice(name);
        self.spans.push((span, at));
        span
    }

    fn get(&self, (start, end): (usize, usize)) -> &[u8] {
        &self.bytes[start..end]
    }

    /// Fails on the second occurrence of any name.
    fn check_unique(&self, what: &str) -> Result<()> {
        let mut sorted: Vec<(&[u8], u64)> = self
            .spans
            .iter()
            .map(|&(span, at)| (self.get(span), at))
            .collect();
        sorted.sort_unstable();
        match sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            Some(w) => Err(invalid(
                w[1].1,
                format!("duplicate {what} {}", lossy(w[1].0)),
            )),
            None => Ok(()),
        }
    }
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Where a tensor named in llama.cpp's scheme belongs.
fn role(name: &[u8]) -> Role {
    if let Some(rest) = name.strip_prefix(b"blk.") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let index = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse::<u64>().ok());
        return match (index, rest.get(digits)) {
            (Some(il), Some(b'.')) => Role::Layer(il),
            _ => Role::Other,
        };
    }
    match name {
        b"token_embd.weight" => Role::Embedding,
        b"output.weight" => Role::Head,
        _ if name.starts_with(b"output_norm.") => Role::OutputNorm,
        _ if name.starts_with(b"output.") => Role::Output,
        _ if [
            &b"token_embd."[..],
            b"token_embd_norm.",
            b"position_embd.",
            b"token_types.",
        ]
        .iter()
        .any(|p| name.starts_with(p)) =>
        {
            Role::Input
        }
        _ => Role::Other,
    }
}

/// One file's header, checked.
struct Header {
    kept: Kept,
    tensors: Vec<Tensor>,
    embedding: Option<Embedding>,
    names: Names,
}

impl Header {
    /// `split.no` and `split.count` (llama.cpp's gguf-split), if present.
    fn split(&self) -> Result<(u64, u64)> {
        let get = |key| self.kept.get(key).map(int).transpose();
        Ok((
            get("split.no")?.unwrap_or(0),
            get("split.count")?.unwrap_or(1),
        ))
    }
}

/// Parses the header of a GGUF file of `len` bytes.
pub fn parse<R: Read + Seek>(reader: R, len: u64) -> Result<Model> {
    let h = header(reader, len)?;
    model(len, &h.kept, &h.tensors, h.embedding)
}

/// The model a header (the first split's, for a split model) describes.
fn model(
    file_bytes: u64,
    kept: &Kept,
    tensors: &[Tensor],
    embedding: Option<Embedding>,
) -> Result<Model> {
    let mut model = assemble(
        Format::Gguf,
        file_bytes,
        describe(kept)?,
        tensors,
        embedding,
    )?;
    model.file_type = match kept.get("general.file_type") {
        Some(v) => u32::try_from(int(v)?)
            .ok()
            .and_then(ftype::name)
            .map(str::to_owned),
        None => None,
    };
    Ok(model)
}

fn open(path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).map_err(|e| io_error(&e))?;
    let len = file.metadata().map_err(|e| io_error(&e))?.len();
    Ok((file, len))
}

/// The files of a model split `count` ways, from one of their names
/// (`NAME-00002-of-00003.gguf`, as llama.cpp's gguf-split writes them).
fn split_paths(path: &Path, count: u64) -> Option<Vec<PathBuf>> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (prefix, of) = stem.rsplit_once("-of-")?;
    let (prefix, _) = prefix.rsplit_once('-')?;
    if of.parse::<u64>().ok()? != count {
        return None;
    }
    Some(
        (1..=count)
            .map(|i| path.with_file_name(format!("{prefix}-{i:05}-of-{count:05}.gguf")))
            .collect(),
    )
}

/// Reads the GGUF file at `path`, and, for a split model, every split.
pub(crate) fn read_path(path: &Path) -> Result<Model> {
    let (file, len) = open(path)?;
    let given = header(file, len)?;
    let (_, count) = given.split()?;
    if count <= 1 {
        return model(len, &given.kept, &given.tensors, given.embedding);
    }
    let paths = split_paths(path, count).ok_or_else(|| {
        invalid(
            0,
            format!(
                "split.count is {count} but the file name is not NAME-0000N-of-{count:05}.gguf"
            ),
        )
    })?;
    let mut given = Some((given, len));
    let mut splits = Vec::with_capacity(paths.len());
    let mut file_bytes = 0u64;
    for (i, split_path) in paths.iter().enumerate() {
        let name = split_path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let (h, len) = match given.take_if(|_| split_path == path) {
            Some(read) => read,
            None => {
                let (file, len) = open(split_path)?;
                (header(file, len).map_err(|e| in_file(e, &name))?, len)
            }
        };
        let (no, of) = h.split().map_err(|e| in_file(e, &name))?;
        if (no, of) != (i as u64, count) {
            return Err(in_file(
                invalid(
                    0,
                    format!("is split {no} of {of}, expected split {i} of {count}"),
                ),
                &name,
            ));
        }
        file_bytes = file_bytes
            .checked_add(len)
            .ok_or_else(|| invalid(0, "the splits add up past 2^64 bytes"))?;
        splits.push((name, h));
    }
    // A name may appear once across all splits.
    let mut all: Vec<(&[u8], usize, u64)> = splits
        .iter()
        .enumerate()
        .flat_map(|(i, (_, h))| {
            h.names
                .spans
                .iter()
                .map(move |&(span, at)| (h.names.get(span), i, at))
        })
        .collect();
    all.sort_unstable();
    if let Some(w) = all.windows(2).find(|w| w[0].0 == w[1].0) {
        let (name, i, at) = w[1];
        return Err(in_file(
            invalid(
                at,
                format!("tensor {} is also in another split", lossy(name)),
            ),
            &splits[i].0,
        ));
    }
    let tensors: Vec<Tensor> = splits
        .iter()
        .flat_map(|(_, h)| h.tensors.iter().copied())
        .collect();
    let embedding = splits.iter().find_map(|(_, h)| h.embedding);
    // llama.cpp's gguf-split keeps the model's metadata in the first split.
    model(file_bytes, &splits[0].1.kept, &tensors, embedding)
}

fn header<R: Read + Seek>(reader: R, len: u64) -> Result<Header> {
    let mut r = Reader {
        src: Source::new(reader, len)?,
    };
    let magic: [u8; 4] = r.src.array("magic")?;
    if &magic != MAGIC {
        return Err(invalid(0, "not a GGUF file (no GGUF magic)"));
    }
    version(&mut r.src)?;
    let n_tensors = r.src.u64("tensor count")?;
    let n_kv = r.src.u64("metadata count")?;
    // Each entry takes a minimum number of bytes, so neither count can
    // exceed what the rest of the file could hold.
    let room = r.src.remaining();
    if n_tensors > room / MIN_TENSOR_INFO {
        return Err(invalid(
            8,
            format!("declares {n_tensors} tensors, more than the {room} remaining bytes can hold"),
        ));
    }
    if n_kv > room / MIN_KV {
        return Err(invalid(
            16,
            format!(
                "declares {n_kv} metadata entries, more than the {room} remaining bytes can hold"
            ),
        ));
    }

    let mut kept = Kept::default();
    let mut keys = Names::default();
    for _ in 0..n_kv {
        let at = r.src.offset();
        let key_bytes = r.string("metadata key")?;
        let key = lossy(&key_bytes);
        let ty = r.src.u32(&key)?;
        if fixed_size(ty).is_none() && ty != T_STRING && ty != T_ARRAY {
            return Err(invalid(
                r.src.offset() - 4,
                format!("{key} has unknown value type {ty}"),
            ));
        }
        let value_at = r.src.offset();
        let keep = wanted(&key);
        let value = r.value(ty, keep, &key)?;
        if key == "tokenizer.ggml.tokens" {
            if let Value::Counted(n) = value {
                kept.n_tokens = Some(n);
            }
        }
        keys.push(&key_bytes, at);
        let value = At {
            value,
            offset: value_at,
            key: key.clone(),
        };
        if key == "general.alignment" {
            if ty != T_U32 {
                return Err(invalid(
                    value_at,
                    format!(
                        "general.alignment has type {}, expected uint32",
                        type_name(ty)
                    ),
                ));
            }
            kept.alignment = Some(value);
        } else if keep {
            kept.entries.push((key, value));
        }
    }
    keys.check_unique("metadata key")?;

    let alignment = match &kept.alignment {
        Some(v) => {
            let a = int(v)?;
            if a == 0 || !a.is_power_of_two() {
                return Err(invalid(
                    v.offset,
                    format!("general.alignment is {a}, not a power of two"),
                ));
            }
            a
        }
        None => DEFAULT_ALIGNMENT,
    };

    let mut names = Names::default();
    let mut entries = Vec::new();
    let mut tensors = Vec::new();
    let mut embedding = None;
    for _ in 0..n_tensors {
        let at = r.src.offset();
        let name = r.string("tensor name")?;
        let shown = lossy(&name);
        let n_dims = r.src.u32(&shown)?;
        if n_dims > MAX_DIMS {
            return Err(invalid(
                r.src.offset() - 4,
                format!("tensor {shown} has {n_dims} dimensions, more than {MAX_DIMS}"),
            ));
        }
        let mut dims = [1u64; MAX_DIMS as usize];
        for dim in dims.iter_mut().take(n_dims as usize) {
            *dim = r.src.u64(&shown)?;
            if *dim > i64::MAX as u64 {
                return Err(invalid(
                    r.src.offset() - 8,
                    format!("tensor {shown} has a dimension of {dim}"),
                ));
            }
        }
        let type_at = r.src.offset();
        let ty = GgmlType::from_id(r.src.u32(&shown)?)
            .map_err(|reason| invalid(type_at, format!("tensor {shown}: {reason}")))?;
        let offset = r.src.u64(&shown)?;
        let elements = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| invalid(at, format!("tensor {shown} has more than 2^63 elements")))?;
        let bytes = ty.bytes(dims[0], elements).ok_or_else(|| {
            invalid(at, format!(
                "tensor {shown} of type {} has rows of {} elements, not a multiple of its block size {}",
                ty.name, dims[0], ty.block_size
            ))
        })?;
        if !offset.is_multiple_of(alignment) {
            return Err(invalid(type_at + 4, format!("tensor {shown} has offset {offset}, not a multiple of the alignment {alignment}")));
        }
        let role = role(&name);
        if role == Role::Embedding && n_dims == 2 {
            embedding = Some(Embedding {
                n_embd: dims[0],
                n_vocab: dims[1],
            });
        }
        entries.push(Entry {
            at,
            name: names.push(&name, at),
            offset,
            bytes,
        });
        let shape = &dims[..n_dims as usize];
        tensors.push(Tensor {
            role,
            type_name: ty.name,
            elements,
            bytes,
            matrix: Matrix::of_gguf(&name, ty, shape),
            ffn: Ffn::of_gguf(&name, shape),
        });
    }

    let header_end = r.src.offset();
    let data_start = header_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| invalid(header_end, "the data section starts past 2^64"))?;
    names.check_unique("tensor name")?;
    check_regions(&entries, &names, data_start, len)?;
    Ok(Header {
        kept,
        tensors,
        embedding,
        names,
    })
}

/// Every tensor lies inside the file and no two overlap.
fn check_regions(entries: &[Entry], names: &Names, data_start: u64, len: u64) -> Result<()> {
    let mut regions = Vec::with_capacity(entries.len());
    for e in entries {
        let name = lossy(names.get(e.name));
        let start = data_start
            .checked_add(e.offset)
            .ok_or_else(|| invalid(e.at, format!("tensor {name} starts past 2^64")))?;
        let end = start
            .checked_add(e.bytes)
            .ok_or_else(|| invalid(e.at, format!("tensor {name} ends past 2^64")))?;
        if end > len {
            return Err(invalid(e.at, format!(
                "tensor {name} occupies bytes {start}..{end}, past the end of the file ({len} bytes)"
            )));
        }
        regions.push((start, end, e));
    }
    regions.sort_unstable_by_key(|&(start, end, _)| (start, end));
    for pair in regions.windows(2) {
        let ((_, prev_end, prev), (start, _, e)) = (pair[0], pair[1]);
        if start < prev_end {
            return Err(invalid(
                e.at,
                format!(
                    "tensor {} overlaps tensor {}",
                    lossy(names.get(e.name)),
                    lossy(names.get(prev.name))
                ),
            ));
        }
    }
    Ok(())
}
