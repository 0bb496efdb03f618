//! Writers for small, valid GGUF and safetensors files, for tests, property
//! tests and fuzz seeds. Tensor data is zeros.
#![allow(dead_code)]

/// A GGUF metadata value.
#[derive(Debug, Clone)]
pub enum Kv {
    U8(u8),
    U16(u16),
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    U32s(Vec<u32>),
    I32s(Vec<i32>),
    Bools(Vec<bool>),
    F32s(Vec<f32>),
    Strs(Vec<String>),
}

impl Kv {
    fn type_id(&self) -> u32 {
        match self {
            Kv::U8(_) => 0,
            Kv::U16(_) => 2,
            Kv::U32(_) => 4,
            Kv::I32(_) => 5,
            Kv::F32(_) => 6,
            Kv::Bool(_) => 7,
            Kv::Str(_) => 8,
            Kv::U64(_) => 10,
            _ => 9,
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Kv) {
    fn array<T>(out: &mut Vec<u8>, ty: u32, items: &[T], put: impl Fn(&mut Vec<u8>, &T)) {
        out.extend(ty.to_le_bytes());
        out.extend((items.len() as u64).to_le_bytes());
        items.iter().for_each(|i| put(out, i));
    }
    match v {
        Kv::U8(x) => out.push(*x),
        Kv::U16(x) => out.extend(x.to_le_bytes()),
        Kv::U32(x) => out.extend(x.to_le_bytes()),
        Kv::I32(x) => out.extend(x.to_le_bytes()),
        Kv::U64(x) => out.extend(x.to_le_bytes()),
        Kv::F32(x) => out.extend(x.to_le_bytes()),
        Kv::Bool(x) => out.push(*x as u8),
        Kv::Str(s) => put_str(out, s),
        Kv::U32s(xs) => array(out, 4, xs, |o, x| o.extend(x.to_le_bytes())),
        Kv::I32s(xs) => array(out, 5, xs, |o, x| o.extend(x.to_le_bytes())),
        Kv::Bools(xs) => array(out, 7, xs, |o, x| o.push(*x as u8)),
        Kv::F32s(xs) => array(out, 6, xs, |o, x| o.extend(x.to_le_bytes())),
        Kv::Strs(xs) => array(out, 8, xs, |o, x| put_str(o, x)),
    }
}

/// (block size, bytes per block) of the ggml types the writer uses.
pub fn ggml_layout(ty: u32) -> (u64, u64) {
    match ty {
        0 => (1, 4),
        1 | 30 => (1, 2),
        2 => (32, 18),
        8 => (32, 34),
        10 => (256, 84),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        16 => (256, 66),
        23 => (256, 136),
        _ => panic!("writer does not know ggml type {ty}"),
    }
}

pub fn ggml_bytes(ty: u32, dims: &[u64]) -> u64 {
    let (block, size) = ggml_layout(ty);
    dims.iter().product::<u64>() / block * size
}

/// A GGUF file to write.
#[derive(Debug, Clone)]
pub struct Gguf {
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<(String, Kv)>,
    /// name, dims (ggml order), ggml type id
    pub tensors: Vec<(String, Vec<u64>, u32)>,
}

pub struct Layout {
    /// Offset of each tensor table entry.
    pub entries: Vec<u64>,
    /// Where the data section starts.
    pub data_start: u64,
    /// Each tensor's offset relative to the data section.
    pub offsets: Vec<u64>,
}

fn pad(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

impl Gguf {
    pub fn new() -> Self {
        Gguf {
            version: 3,
            alignment: 32,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn kv(mut self, key: &str, v: Kv) -> Self {
        self.kvs.push((key.to_owned(), v));
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], ty: u32) -> Self {
        self.tensors.push((name.to_owned(), dims.to_vec(), ty));
        self
    }

    /// The header, the padding and the zeroed data.
    pub fn bytes(&self) -> Vec<u8> {
        let (mut out, layout) = self.header();
        let end = layout.data_start
            + self
                .tensors
                .iter()
                .zip(&layout.offsets)
                .map(|((_, dims, ty), off)| off + ggml_bytes(*ty, dims))
                .max()
                .unwrap_or(0);
        out.resize(end as usize, 0);
        out
    }

    /// The header alone and where everything lies.
    pub fn header(&self) -> (Vec<u8>, Layout) {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (key, v) in &self.kvs {
            put_str(&mut out, key);
            out.extend(v.type_id().to_le_bytes());
            put_value(&mut out, v);
        }
        let mut entries = Vec::new();
        let mut offsets = Vec::new();
        let mut next = 0u64;
        for (name, dims, ty) in &self.tensors {
            entries.push(out.len() as u64);
            offsets.push(next);
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.to_le_bytes());
            out.extend(next.to_le_bytes());
            next = pad(next + ggml_bytes(*ty, dims), self.alignment);
        }
        let data_start = pad(out.len() as u64, self.alignment);
        out.resize(data_start as usize, 0);
        (
            out,
            Layout {
                entries,
                data_start,
                offsets,
            },
        )
    }
}

/// A Llama-style GGUF: `n_layers` blocks of grouped-query attention and a
/// gated MLP, with a separate output head unless `tied`.
pub fn llama(
    n_layers: u64,
    n_embd: u64,
    n_ff: u64,
    n_vocab: u64,
    n_head_kv: u64,
    ty: u32,
    tied: bool,
) -> Gguf {
    let n_head = n_embd / 64;
    let kv_dim = n_head_kv * 64;
    let mut g = Gguf::new()
        .kv("general.architecture", Kv::Str("llama".into()))
        .kv("general.name", Kv::Str("tiny llama".into()))
        .kv("llama.block_count", Kv::U32(n_layers as u32))
        .kv("llama.context_length", Kv::U32(8192))
        .kv("llama.embedding_length", Kv::U32(n_embd as u32))
        .kv("llama.feed_forward_length", Kv::U32(n_ff as u32))
        .kv("llama.attention.head_count", Kv::U32(n_head as u32))
        .kv("llama.attention.head_count_kv", Kv::U32(n_head_kv as u32))
        .kv("llama.rope.freq_base", Kv::F32(500000.0))
        .kv(
            "tokenizer.ggml.tokens",
            Kv::Strs((0..n_vocab).map(|i| format!("t{i}")).collect()),
        )
        .tensor("token_embd.weight", &[n_embd, n_vocab], ty);
    for il in 0..n_layers {
        let b = |t: &str| format!("blk.{il}.{t}");
        g = g
            .tensor(&b("attn_norm.weight"), &[n_embd], 0)
            .tensor(&b("attn_q.weight"), &[n_embd, n_embd], ty)
            .tensor(&b("attn_k.weight"), &[n_embd, kv_dim], ty)
            .tensor(&b("attn_v.weight"), &[n_embd, kv_dim], ty)
            .tensor(&b("attn_output.weight"), &[n_embd, n_embd], ty)
            .tensor(&b("ffn_norm.weight"), &[n_embd], 0)
            .tensor(&b("ffn_gate.weight"), &[n_embd, n_ff], ty)
            .tensor(&b("ffn_up.weight"), &[n_embd, n_ff], ty)
            .tensor(&b("ffn_down.weight"), &[n_ff, n_embd], ty);
    }
    g = g.tensor("output_norm.weight", &[n_embd], 0);
    if !tied {
        g = g.tensor("output.weight", &[n_embd, n_vocab], ty);
    }
    g
}

/// (name, dtype, shape) to a safetensors file with zeroed data, tensors in
/// the given order; the header is padded with spaces to 8 bytes like the
/// reference writer does.
pub fn safetensors(tensors: &[(&str, &str, Vec<u64>)]) -> Vec<u8> {
    let width = |dtype: &str| match dtype {
        "F32" | "I32" | "U32" => 32,
        "F16" | "BF16" | "I16" | "U16" => 16,
        "F4" => 4,
        "F64" | "I64" | "U64" | "C64" => 64,
        _ => 8,
    };
    let mut entries = Vec::new();
    let mut next = 0u64;
    for (name, dtype, shape) in tensors {
        let bytes = shape.iter().product::<u64>() * width(dtype) / 8;
        let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
        entries.push(format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{next},{}]}}",
            dims.join(","),
            next + bytes
        ));
        next += bytes;
    }
    let mut header = format!(
        "{{\"__metadata__\":{{\"format\":\"pt\"}},{}}}",
        entries.join(",")
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.resize(out.len() + next as usize, 0);
    out
}
