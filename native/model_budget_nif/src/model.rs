//! `ModelBudget.Model.read/1`: a model file's header as a `%ModelBudget.Model{}`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use model_budget_core::{model, Error, Format, PerLayer, TypeStats};
use rustler::{Atom, Binary, Encoder, Env, NifMap, NifStruct, NifUnitEnum, NifUntaggedEnum, Term};

use crate::atoms;
use crate::badarg::{bad, reply, Decoded};
use crate::matrix::{encode_matrices, ClassTerm, RunTerm};

rustler::atoms! {
    invalid_model,
}

#[derive(NifUnitEnum)]
enum FormatTerm {
    Gguf,
    Safetensors,
}

/// An integer, or a list of one per layer.
#[derive(NifUntaggedEnum)]
enum CountTerm {
    Uniform(u64),
    Layers(Vec<u64>),
}

/// A part of the model in the file's order: `:input`, `:output` or a
/// block's index.
#[derive(NifUnitEnum, Clone, Copy)]
pub(crate) enum NamedPart {
    Input,
    Output,
}

#[derive(NifUntaggedEnum, Clone, Copy)]
pub(crate) enum PartTerm {
    Named(NamedPart),
    Layer(u32),
}

impl From<model::Part> for PartTerm {
    fn from(p: model::Part) -> Self {
        match p {
            model::Part::Input => PartTerm::Named(NamedPart::Input),
            model::Part::Output => PartTerm::Named(NamedPart::Output),
            model::Part::Layer(il) => PartTerm::Layer(il),
        }
    }
}

impl From<PartTerm> for model::Part {
    fn from(p: PartTerm) -> Self {
        match p {
            PartTerm::Named(NamedPart::Input) => model::Part::Input,
            PartTerm::Named(NamedPart::Output) => model::Part::Output,
            PartTerm::Layer(il) => model::Part::Layer(il),
        }
    }
}

#[derive(NifMap)]
struct TypeTerm {
    n_tensors: u64,
    n_params: u64,
    bytes: u64,
}

#[derive(NifStruct)]
#[module = "ModelBudget.Model"]
struct ModelTerm {
    format: FormatTerm,
    architecture: Option<String>,
    name: Option<String>,
    file_type: Option<String>,
    file_bytes: u64,
    weight_bytes: u64,
    n_params: u64,
    n_tensors: u64,
    n_layers: u64,
    n_head: Option<CountTerm>,
    n_head_kv: Option<CountTerm>,
    head_dim_k: Option<u64>,
    head_dim_v: Option<u64>,
    n_embd: Option<u64>,
    n_vocab: Option<u64>,
    context_length: Option<u64>,
    sliding_window: Option<u64>,
    sliding_window_layers: Vec<bool>,
    n_experts: Option<u64>,
    n_experts_used: Option<u64>,
    layer_bytes: Vec<u64>,
    input_bytes: u64,
    output_bytes: u64,
    other_bytes: u64,
    embedding_bytes: u64,
    tied_embeddings: bool,
    types: HashMap<String, TypeTerm>,
    n_ff: Option<u64>,
    n_ff_exp: Option<u64>,
    layer_matrices: Vec<HashMap<ClassTerm, u64>>,
    head_matrices: HashMap<ClassTerm, u64>,
    embedding_matrix: Option<ClassTerm>,
    layer_largest_matrix: Vec<u64>,
    file_order: Vec<RunTerm>,
}

fn count(c: PerLayer) -> CountTerm {
    match c {
        PerLayer::Uniform(n) => CountTerm::Uniform(n),
        PerLayer::Layers(v) => CountTerm::Layers(v),
    }
}

impl From<model::Model> for ModelTerm {
    fn from(m: model::Model) -> Self {
        let types = m
            .types
            .into_iter()
            .map(
                |(
                    name,
                    TypeStats {
                        n_tensors,
                        n_params,
                        bytes,
                    },
                )| {
                    (
                        name,
                        TypeTerm {
                            n_tensors,
                            n_params,
                            bytes,
                        },
                    )
                },
            )
            .collect();
        ModelTerm {
            format: match m.format {
                Format::Gguf => FormatTerm::Gguf,
                Format::Safetensors => FormatTerm::Safetensors,
            },
            architecture: m.architecture,
            name: m.name,
            file_type: m.file_type,
            file_bytes: m.file_bytes,
            weight_bytes: m.weight_bytes,
            n_params: m.n_params,
            n_tensors: m.n_tensors,
            n_layers: m.n_layers,
            n_head: m.n_head.map(count),
            n_head_kv: m.n_head_kv.map(count),
            head_dim_k: m.head_dim_k,
            head_dim_v: m.head_dim_v,
            n_embd: m.n_embd,
            n_vocab: m.n_vocab,
            context_length: m.context_length,
            sliding_window: m.sliding_window,
            sliding_window_layers: m.sliding_window_layers,
            n_experts: m.n_experts,
            n_experts_used: m.n_experts_used,
            layer_bytes: m.layer_bytes,
            input_bytes: m.input_bytes,
            output_bytes: m.output_bytes,
            other_bytes: m.other_bytes,
            embedding_bytes: m.embedding_bytes,
            tied_embeddings: m.tied_embeddings,
            types,
            n_ff: m.n_ff,
            n_ff_exp: m.n_ff_exp,
            layer_matrices: m.layer_matrices.into_iter().map(encode_matrices).collect(),
            head_matrices: encode_matrices(m.head_matrices),
            embedding_matrix: m.embedding_matrix.map(ClassTerm::from),
            layer_largest_matrix: m.layer_largest_matrix,
            file_order: m.file_order.into_iter().map(RunTerm::from).collect(),
        }
    }
}

/// `{:error, reason}` for a model that cannot be read: `{:invalid_model,
/// message}` or a `File`-style POSIX atom.
fn error_reason<'a>(env: Env<'a>, err: Error) -> Decoded<'a, Term<'a>> {
    let reason = match err {
        Error::InvalidModel { .. } => (invalid_model(), err.to_string()).encode(env),
        // `code` comes from a fixed set of names, never from the file.
        Error::Io { code, .. } => Atom::from_str(env, code)
            .map_err(|_| Error::InvalidArgument {
                arg: "path",
                message: code.to_owned(),
            })?
            .encode(env),
        other => return Err(other.into()),
    };
    Ok((atoms::error(), reason).encode(env))
}

/// `ModelBudget.Model.from_gguf_header/1`: a GGUF header held in memory.
#[rustler::nif(schedule = "DirtyCpu")]
fn model_from_gguf_header<'a>(env: Env<'a>, header: Term<'a>) -> Term<'a> {
    let result = (|| {
        let Ok(bytes) = header.decode::<Binary>() else {
            return bad("header", "a binary", header);
        };
        match model::read_gguf_header(bytes.as_slice()) {
            Ok(m) => Ok((atoms::ok(), ModelTerm::from(m)).encode(env)),
            Err(err) => error_reason(env, err),
        }
    })();
    reply(env, result)
}

#[rustler::nif(schedule = "DirtyIo")]
fn model_read<'a>(env: Env<'a>, path: Term<'a>) -> Term<'a> {
    let result = (|| {
        let Ok(bytes) = path.decode::<Binary>() else {
            return bad("path", "a path (a string)", path);
        };
        if bytes.as_slice().contains(&0) {
            return bad("path", "a path without NUL bytes", path);
        }
        let path = Path::new(OsStr::from_bytes(bytes.as_slice()));
        match model::read(path) {
            Ok(m) => Ok((atoms::ok(), ModelTerm::from(m)).encode(env)),
            Err(err) => error_reason(env, err),
        }
    })();
    reply(env, result)
}
