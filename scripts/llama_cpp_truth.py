#!/usr/bin/env python3
"""Records what real llama.cpp allocates, for ModelBudget's calibration test.

For each case below this script writes a sparse GGUF file with the tensor
shapes and type mix of a real model (holes where the weights would be),
loads it in real llama.cpp in a fresh process, and records every buffer
llama.cpp reports, per buffer type, with the options, the llama.cpp version
and the runtime profile of its extra CPU buffers, into a truth set under
test/fixtures/truth/ (one per machine and build). The sets keep each model's
metadata and tensor table (header-only files beside them), so the test can
rebuild the same header without Python or llama.cpp.

Two runtimes load the cases:

  xllamacpp      (default) the PyPI wheel, an in-process llama-server; its
                 CPU backend is generic x86-64 with AVX2, whatever the machine.
                 Writes test/fixtures/truth/xllamacpp_x86_avx2.json, every case
                 (--set full) unless told otherwise.
  llama-server   a llama-server binary (--binary PATH), e.g. the project's own
                 native build (scripts/llama_server.sh), one server per case,
                 killed once it has loaded. Writes
                 test/fixtures/truth/llama_server_b<build>_<profile>.json, the
                 profile read from the system_info line the server logs; the
                 28 cases of the native sets (--set native) unless told
                 otherwise (about 9 minutes on 2 cores).

    python3 scripts/llama_cpp_truth.py [--runtime xllamacpp | --runtime llama-server --binary PATH]
                                       [--set full|native] [--out PATH] [--only SUBSTRING] [--resume]

Run through `make calibrate` (the project's llama-server) or
`make calibrate-xllamacpp` (the wheel, installed into a cache venv).
"""

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One truth set per machine and build: xllamacpp_x86_avx2.json, llama_server_b<build>_<profile>.json.
TRUTH = os.path.join(ROOT, "test", "fixtures", "truth")
# Header-only GGUF files: the recorded files' (beside the sets) and the
# models `mix model_budget.plan` shows by default (in priv/).
HEADERS = os.path.join(ROOT, "test", "fixtures", "llama_cpp_truth")
CATALOG = os.path.join(ROOT, "priv", "catalog")
CATALOG_MODELS = [("Llama-3.1-8B-Instruct", "llama-3.1-8b"), ("Gemma-2-9B-it", "gemma-2-9b"),
                  ("Qwen2.5-32B-Instruct", "qwen2.5-32b"), ("Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
                  ("Llama-3.1-70B-Instruct", "llama-3.1-70b")]

# ---------------------------------------------------------------------------
# Model shapes: the numbers from each model's published config.json.

MODELS = {
    "llama-3.1-8b": dict(arch="llama", n_embd=4096, n_ff=14336, n_head=32, n_kv=8, n_layer=32,
                         n_vocab=128256, ctx=131072, rope_freqs=True),
    "llama-3.2-1b": dict(arch="llama", n_embd=2048, n_ff=8192, n_head=32, n_kv=8, n_layer=16,
                         n_vocab=128256, ctx=131072, rope_freqs=True, tied=True),
    # hf_shard: the published GGUF (bartowski's Qwen2.5-7B-Instruct-Q4_K_M, which the GPU table's
    # logs load) keeps the order convert_hf_to_gguf read the checkpoint's 4 GB shards in, and
    # llama-quantize of its day counted layers in that order (see file_order).
    "qwen2.5-7b": dict(arch="qwen2", n_embd=3584, n_ff=18944, n_head=28, n_kv=4, n_layer=28,
                       n_vocab=152064, ctx=32768, qkv_bias=True, hf_shard=4_000_000_000),
    "qwen3-8b": dict(arch="qwen3", n_embd=4096, n_ff=12288, n_head=32, n_kv=8, n_layer=36,
                     n_vocab=151936, ctx=40960, head_dim=128, qk_norm=True),
    "qwen3-30b-a3b": dict(arch="qwen3moe", n_embd=2048, n_ff=6144, n_head=32, n_kv=4, n_layer=48,
                          n_vocab=151936, ctx=40960, head_dim=128, qk_norm=True,
                          n_expert=128, n_expert_used=8, n_ff_exp=768),
    "phi-3-mini-4k": dict(arch="phi3", n_embd=3072, n_ff=8192, n_head=32, n_kv=32, n_layer=32,
                          n_vocab=32064, ctx=4096, fused_qkv=True),
    "gemma-2-9b": dict(arch="gemma2", n_embd=3584, n_ff=14336, n_head=16, n_kv=8, n_layer=42,
                       n_vocab=256000, ctx=8192, head_dim=256, tied=True, swa=4096, swa_pattern=2,
                       post_norms=True),
    "gemma-3-4b": dict(arch="gemma3", n_embd=2560, n_ff=10240, n_head=8, n_kv=4, n_layer=34,
                       n_vocab=262144, ctx=131072, head_dim=256, tied=True, swa=1024, swa_pattern=6,
                       post_norms=True, qk_norm=True),
    "mixtral-8x7b": dict(arch="llama", n_embd=4096, n_ff=14336, n_head=32, n_kv=8, n_layer=32,
                         n_vocab=32000, ctx=32768, n_expert=8, n_expert_used=2, n_ff_exp=14336),
    "qwen2.5-32b": dict(arch="qwen2", n_embd=5120, n_ff=27648, n_head=40, n_kv=8, n_layer=64,
                        n_vocab=152064, ctx=32768, qkv_bias=True),
    "llama-3.1-70b": dict(arch="llama", n_embd=8192, n_ff=28672, n_head=64, n_kv=8, n_layer=80,
                          n_vocab=128256, ctx=131072, rope_freqs=True),
    # bartowski's SmolLM2-135M-Instruct-Q4_K_M (tobocop2/lilbee's two-A40 log): one checkpoint
    # shard, so the file keeps safetensors' name order (blk.10 before blk.2); n_embd 576 is no
    # multiple of 256, so most matrices fall back to Q5_0 and the head to Q8_0.
    "smollm2-135m": dict(arch="llama", n_embd=576, n_ff=1536, n_head=9, n_kv=3, n_layer=30,
                         n_vocab=49152, ctx=8192, tied=True, hf_shard=1 << 40),
    "qwen2.5-0.5b": dict(arch="qwen2", n_embd=896, n_ff=4864, n_head=14, n_kv=2, n_layer=24,
                         n_vocab=151936, ctx=32768, qkv_bias=True, tied=True),
}


def use_more_bits(i, n):
    # llama-quantize's rule for the layers that get more bits in *_M mixes.
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def quant_type(mix, name, il, n_layer, ne, tied):
    """The type llama-quantize would give tensor `name` in mix `mix`."""
    if len(ne) == 1:
        return T.F32
    if mix == "F16":
        return T.F16
    if mix == "Q8_0":
        return T.Q8_0
    is_head = name == "output.weight" or (tied and name == "token_embd.weight")
    if is_head:
        t = T.Q6_K if mix in ("Q4_K_M", "Q4_0") else T.Q8_0
    elif name.endswith("ffn_gate_inp.weight"):
        return T.F32
    elif mix == "Q4_0":
        t = T.Q4_0
    else:
        t = T.Q4_K
        if (name.endswith("attn_v.weight") or name.endswith("ffn_down.weight")
                or name.endswith("ffn_down_exps.weight")) and use_more_bits(il, n_layer):
            t = T.Q6_K
        if name.endswith("attn_qkv.weight"):
            t = T.Q5_K
    if ne[0] % GGML_QUANT_SIZES[t][0] != 0:
        # As llama-quantize: a row that does not divide into K-quant blocks
        # falls back to a 32-element type.
        return T.Q8_0 if t == T.Q6_K else T.Q5_0
    return t


def tensors(m):
    """(name, ne) in the order convert_hf_to_gguf writes them."""
    e, ff, hd = m["n_embd"], m["n_ff"], m.get("head_dim", m["n_embd"] // m["n_head"])
    q, kv = m["n_head"] * hd, m["n_kv"] * hd
    out = [("token_embd.weight", [e, m["n_vocab"]])]
    if m.get("rope_freqs"):
        out.append(("rope_freqs.weight", [hd // 2]))
    for i in range(m["n_layer"]):
        b = f"blk.{i}."
        out.append((b + "attn_norm.weight", [e]))
        if m.get("fused_qkv"):
            out.append((b + "attn_qkv.weight", [e, q + 2 * kv]))
        else:
            out += [(b + "attn_q.weight", [e, q]), (b + "attn_k.weight", [e, kv]),
                    (b + "attn_v.weight", [e, kv])]
            if m.get("qkv_bias"):
                out += [(b + "attn_q.bias", [q]), (b + "attn_k.bias", [kv]), (b + "attn_v.bias", [kv])]
        if m.get("qk_norm"):
            out += [(b + "attn_q_norm.weight", [hd]), (b + "attn_k_norm.weight", [hd])]
        out.append((b + "attn_output.weight", [q, e]))
        if m.get("post_norms"):
            out.append((b + "post_attention_norm.weight", [e]))
        out.append((b + "ffn_norm.weight", [e]))
        if m.get("n_expert"):
            x, fe = m["n_expert"], m["n_ff_exp"]
            out += [(b + "ffn_gate_inp.weight", [e, x]), (b + "ffn_gate_exps.weight", [e, fe, x]),
                    (b + "ffn_up_exps.weight", [e, fe, x]), (b + "ffn_down_exps.weight", [fe, e, x])]
        elif m.get("fused_qkv"):
            out += [(b + "ffn_up.weight", [e, 2 * ff]), (b + "ffn_down.weight", [ff, e])]
        else:
            out += [(b + "ffn_gate.weight", [e, ff]), (b + "ffn_up.weight", [e, ff]),
                    (b + "ffn_down.weight", [ff, e])]
        if m.get("post_norms"):
            out.append((b + "post_ffw_norm.weight", [e]))
    out.append(("output_norm.weight", [e]))
    if not m.get("tied"):
        out.append(("output.weight", [e, m["n_vocab"]]))
    return out


def metadata(name, m):
    """(key, gguf value type, value) entries, the tokenizer left out."""
    a, V = m["arch"], gguf.GGUFValueType
    hd = m.get("head_dim", m["n_embd"] // m["n_head"])
    # llama.cpp gives Phi-3's special tokens attributes by the model's name;
    # the placeholder vocabulary has none of them.
    name = name.replace("phi-3", "phi 3")
    kv = [("general.architecture", V.STRING, a), ("general.name", V.STRING, name),
          (f"{a}.context_length", V.UINT32, m["ctx"]), (f"{a}.embedding_length", V.UINT32, m["n_embd"]),
          (f"{a}.feed_forward_length", V.UINT32, m["n_ff"]), (f"{a}.block_count", V.UINT32, m["n_layer"]),
          (f"{a}.attention.head_count", V.UINT32, m["n_head"]),
          (f"{a}.attention.head_count_kv", V.UINT32, m["n_kv"]),
          (f"{a}.attention.layer_norm_rms_epsilon", V.FLOAT32, 1e-6),
          (f"{a}.rope.freq_base", V.FLOAT32, 10000.0),
          (f"{a}.vocab_size", V.UINT32, m["n_vocab"])]
    if "head_dim" in m:
        kv += [(f"{a}.attention.key_length", V.UINT32, hd), (f"{a}.attention.value_length", V.UINT32, hd)]
    if m.get("n_expert"):
        kv += [(f"{a}.expert_count", V.UINT32, m["n_expert"]),
               (f"{a}.expert_used_count", V.UINT32, m["n_expert_used"])]
        if a == "qwen3moe":
            kv.append((f"{a}.expert_feed_forward_length", V.UINT32, m["n_ff_exp"]))
    if m.get("swa"):
        kv.append((f"{a}.attention.sliding_window", V.UINT32, m["swa"]))
        if a == "gemma3":
            kv.append((f"{a}.attention.sliding_window_pattern", V.UINT32, m["swa_pattern"]))
    if a == "gemma2":
        kv += [(f"{a}.attn_logit_softcapping", V.FLOAT32, 50.0),
               (f"{a}.final_logit_softcapping", V.FLOAT32, 30.0)]
    return kv


# Hugging Face names of llama.cpp's, in the order a Llama-style checkpoint saves a block's tensors.
HF_BLOCK = [("attn_q.weight", "self_attn.q_proj.weight"), ("attn_q.bias", "self_attn.q_proj.bias"),
            ("attn_k.weight", "self_attn.k_proj.weight"), ("attn_k.bias", "self_attn.k_proj.bias"),
            ("attn_v.weight", "self_attn.v_proj.weight"), ("attn_v.bias", "self_attn.v_proj.bias"),
            ("attn_output.weight", "self_attn.o_proj.weight"), ("ffn_gate.weight", "mlp.gate_proj.weight"),
            ("ffn_up.weight", "mlp.up_proj.weight"), ("ffn_down.weight", "mlp.down_proj.weight"),
            ("attn_norm.weight", "input_layernorm.weight"), ("ffn_norm.weight", "post_attention_layernorm.weight")]
HF_OTHER = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}


def hf_name(name):
    if not name.startswith("blk."):
        return HF_OTHER[name]
    _, il, rest = name.split(".", 2)
    return f"model.layers.{il}." + dict(HF_BLOCK)[rest]


def file_order(m, table):
    """The tensors in the order of the file. convert_hf_to_gguf writes them shard by shard as
    safetensors lists them (sorted by name: blk.10 before blk.6), and the checkpoint was cut into
    shards of at most `hf_shard` bytes of bf16 in save order (embeddings, each block as HF_BLOCK,
    final norm, head). Other models: convert's own order, block by block."""
    if not m.get("hf_shard"):
        return table
    rank = {hf: i for i, (_, hf) in enumerate(HF_BLOCK)}

    def save_key(t):
        name = t[0]
        if name == "token_embd.weight":
            return (-1, 0)
        if name.startswith("blk."):
            return (int(name.split(".")[1]), rank[hf_name(name).split(".", 3)[3]])
        return (m["n_layer"], 0 if name == "output_norm.weight" else 1)

    shards, size = [[]], 0
    for t in sorted(table, key=save_key):
        nbytes = 2 * int(np.prod(t[1]))
        if size + nbytes > m["hf_shard"] and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    return [t for shard in shards for t in sorted(shard, key=lambda t: hf_name(t[0]))]


def file_spec(model, mix):
    m = MODELS[model]
    order = file_order(m, [[name, ne, None] for name, ne in tensors(m)])
    # llama-quantize gives attn_v and ffn_down more bits by their count in the file, not by the
    # block's number (llama-quant.cpp, i_attention_wv and i_ffn_down).
    seen = {"attn_v.weight": 0, "ffn_down.weight": 0}
    table = []
    for name, ne, _ in order:
        kind = name.split(".", 2)[-1] if name.startswith("blk.") else ""
        if kind in seen:
            il = seen[kind]
            seen[kind] += 1
        else:
            il = int(name.split(".")[1]) if name.startswith("blk.") else -1
        t = quant_type(mix, name, il, m["n_layer"], ne, m.get("tied", False))
        table.append([name, ne, t.name])
    return {"name": f"{model}-{mix}", "metadata": [[k, t.name, v] for k, t, v in metadata(model, m)],
            "tensors": table}


def write_gguf(path, spec, header_only=False):
    """Writes the header with a placeholder vocabulary, then a sparse data
    region; or, `header_only`, the header alone without the vocabulary: what
    ModelBudget reads (the test and the catalog use these)."""
    meta = {k: (t, v) for k, t, v in spec["metadata"]}
    arch = meta["general.architecture"][1]
    n_vocab = meta[f"{arch}.vocab_size"][1]
    w = gguf.GGUFWriter(path, arch)
    for key, t, value in spec["metadata"]:
        if key != "general.architecture":
            w.add_key_value(key, value, gguf.GGUFValueType[t])
    if not header_only:
        # llama.cpp sizes the embedding by the token list, so it must be full length.
        w.add_tokenizer_model("llama")
        w.add_token_list([b"<unk>", b"<s>", b"</s>"] + [b"t%d" % i for i in range(n_vocab - 3)])
        w.add_token_scores([0.0] * n_vocab)
        w.add_token_types([2, 3, 3] + [1] * (n_vocab - 3))
    for name, ne, tname in spec["tensors"]:
        t = T[tname]
        block, size = GGML_QUANT_SIZES[t]
        nbytes = int(np.prod(ne)) // block * size
        byte_shape = list(reversed(ne))
        byte_shape[-1] = byte_shape[-1] // block * size
        w.add_tensor_info(name, byte_shape, np.uint8, nbytes, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    if header_only:
        w.close()
        return
    f = w.fout[0]
    start = gguf.GGUFWriter.ggml_pad(f.tell(), w.data_alignment)
    data = sum(gguf.GGUFWriter.ggml_pad(ti.nbytes, w.data_alignment) for ti in w.tensors[0].values())
    f.flush()
    f.truncate(start + data)
    w.close()


# ---------------------------------------------------------------------------
# Cases: a file and llama.cpp options, named as ModelBudget's options are.

BASE = dict(n_ctx=4096, n_batch=2048, n_ubatch=512, n_parallel=1, kv_unified=False, flash_attn=True,
            cache_type_k="f16", cache_type_v="f16", repack=True, mmap=True)


def case(model, mix, **opts):
    # Repacking happens only where the case says so: on two cores it takes a
    # minute per 8B model, and it changes no buffer but its own (the base
    # case of each model records it, and `repack=False` beside it shows the
    # other buffers unchanged).
    return {"model": model, "mix": mix, "options": {**BASE, "repack": False, **opts}}


def cases():
    out = []
    dense = ["llama-3.1-8b", "llama-3.2-1b", "qwen2.5-7b", "qwen3-8b", "phi-3-mini-4k", "gemma-2-9b",
             "gemma-3-4b", "qwen2.5-0.5b"]
    big = ["qwen3-30b-a3b", "mixtral-8x7b"]
    for m in dense:
        out += [case(m, "Q4_K_M", repack=True), case(m, "Q4_K_M"), case(m, "Q4_K_M", flash_attn=False),
                case(m, "Q4_K_M", n_ctx=16384), case(m, "Q4_K_M", n_parallel=4, n_ctx=8192),
                case(m, "Q4_K_M", n_parallel=4, n_ctx=8192, kv_unified=True),
                case(m, "Q4_K_M", cache_type_k="q8_0", cache_type_v="q8_0")]
    for m in big:
        # Repacking these would need their whole size again in RAM.
        out += [case(m, "Q4_K_M"), case(m, "Q4_K_M", flash_attn=False),
                case(m, "Q4_K_M", n_parallel=4, n_ctx=8192), case(m, "Q4_K_M", n_ubatch=128)]
    for m in ["llama-3.1-8b", "qwen3-8b"]:
        out += [case(m, "Q4_0", repack=True), case(m, "Q8_0", repack=True), case(m, "F16"),
                case(m, "Q4_0", repack=True, mmap=False), case(m, "Q4_K_M", mmap=False),
                case(m, "Q4_K_M", n_ubatch=256), case(m, "Q4_K_M", n_ubatch=1024, n_batch=1024),
                case(m, "Q4_K_M", n_batch=512), case(m, "Q4_K_M", cache_type_k="q8_0", cache_type_v="f16"),
                case(m, "Q4_K_M", cache_type_k="q4_0", cache_type_v="q4_0", n_ctx=32768),
                case(m, "Q4_K_M", n_parallel=8, n_ctx=32768),
                case(m, "Q4_K_M", n_parallel=2, flash_attn=False), case(m, "Q4_K_M", n_ctx=512)]
    for m in ["gemma-2-9b", "gemma-3-4b"]:
        out += [case(m, "Q4_K_M", n_parallel=8, n_ctx=16384),
                case(m, "Q4_K_M", n_parallel=8, n_ctx=16384, kv_unified=True),
                case(m, "Q4_K_M", n_parallel=2, n_ctx=2048), case(m, "Q4_K_M", n_ctx=32768),
                case(m, "Q4_K_M", n_parallel=4, n_ctx=8192, flash_attn=False),
                case(m, "Q8_0", n_parallel=4, n_ctx=8192, kv_unified=True)]
    return out


def native_cases():
    """The shorter set of the native llama-server sets (28 cases, a few minutes on 2 cores):
    every dense model with its extra CPU buffers on, alone and with four unified slots without
    flash attention, each weight type with them, and without them mapped or read; the MoE
    models, whose repacking would need their whole size again in RAM, left out."""
    out = []
    dense = ["llama-3.1-8b", "llama-3.2-1b", "qwen2.5-7b", "qwen3-8b", "phi-3-mini-4k", "gemma-2-9b",
             "gemma-3-4b", "qwen2.5-0.5b"]
    for m in dense:
        out += [case(m, "Q4_K_M", repack=True),
                case(m, "Q4_K_M", repack=True, flash_attn=False, n_parallel=4, n_ctx=8192, kv_unified=True)]
    for m in ["llama-3.1-8b", "qwen3-8b"]:
        out += [case(m, "Q4_0", repack=True), case(m, "Q8_0", repack=True), case(m, "F16", repack=True),
                case(m, "Q4_K_M"), case(m, "Q4_K_M", repack=True, mmap=False)]
    for m in ["gemma-2-9b", "gemma-3-4b"]:
        out.append(case(m, "Q8_0", repack=True, n_parallel=4, n_ctx=8192, kv_unified=True))
    return out


CASE_SETS = {"full": cases, "native": native_cases}


# ---------------------------------------------------------------------------
# Loading in llama.cpp, one fresh process per case. A runtime turns a file and a case's options
# into llama.cpp's log; both runtimes' logs are read alike (parse) and saved alike (save).

BUFFER = re.compile(r"(load_tensors|llama_kv_cache|llama_context|sched_reserve):\s+(\S+)\s+"
                    r"(model|KV|output|compute) buffer size =\s+([0-9.]+) MiB")
FIELD = re.compile(r"llama_context: (n_ctx|n_ctx_seq|n_seq_max|n_outputs_max)\s+= (\d+)")
FIELDS = {"n_ctx", "n_ctx_seq", "n_seq_max", "n_outputs_max"}
SYSTEM_INFO = re.compile(r"system_info: [^\n]*")
TERM = {"model": "weights", "KV": "kv_cache", "output": "output", "compute": "compute"}


def parse(log):
    """The buffers llama.cpp logged, in its order (AMX, CPU_REPACK and KleidiAI buffers are
    model buffers: term weights), the llama_context fields, and its system_info line (None when
    it logged none). The whole log is searched, not line by line: llama.cpp's log sometimes
    glues a line to the one before."""
    # llama.cpp prints MiB with two decimals: bytes to within 5.3 KB.
    buffers = [{"buffer": b.group(2), "term": TERM[b.group(3)], "mib": float(b.group(4))}
               for b in BUFFER.finditer(log)]
    fields = {f.group(1): int(f.group(2)) for f in FIELD.finditer(log)}
    info = SYSTEM_INFO.search(log)
    return buffers, fields, info.group(0).strip() if info else None


def profile_from_system_info(line):
    """The runtime profile of llama.cpp's extra CPU buffers that its system_info line shows, by
    the Rust core's rule (CpuBuffers::from_system_info), which the calibration test checks each
    set's `cpu_buffers` against."""
    def on(feature):
        for field in line.split("|"):
            kv = field.split("=")
            if kv[0].rsplit(":", 1)[-1].strip() == feature and len(kv) > 1 and kv[1].strip() == "1":
                return True
        return False

    if on("AMX_INT8"):
        return "x86_amx"
    if on("KLEIDIAI"):
        return "arm_kleidiai"
    if not on("REPACK"):
        return "none"
    for feature, profile in [("AVX512", "x86_avx512"), ("AVX2", "x86_avx2"), ("DOTPROD", "arm_dotprod")]:
        if on(feature):
            return profile
    return "none"


class Runtime:
    """What the two runtimes share: the system_info line, seen once and the same in every case."""
    system_info = None

    def saw(self, line):
        if line is None:
            return
        if self.system_info is None:
            self.system_info = line
        elif line != self.system_info:
            raise RuntimeError(f"another system_info line than before:\n  {line}\n  {self.system_info}")

    def profile(self):
        return profile_from_system_info(self.system_info) if self.system_info else "none"

    def check(self):
        pass


LOADER = r"""
import json, os, sys
import xllamacpp as x
o = json.loads(sys.argv[2])
p = x.CommonParams()
p.model.path = sys.argv[1]
p.n_ctx = o["n_ctx"]; p.n_batch = o["n_batch"]; p.n_ubatch = o["n_ubatch"]
p.n_parallel = o["n_parallel"]; p.kv_unified = o["kv_unified"]
F = x.llama_flash_attn_type
p.flash_attn_type = F.LLAMA_FLASH_ATTN_TYPE_ENABLED if o["flash_attn"] else F.LLAMA_FLASH_ATTN_TYPE_DISABLED
p.cache_type_k = getattr(x.ggml_type, "GGML_TYPE_" + o["cache_type_k"].upper())
p.cache_type_v = getattr(x.ggml_type, "GGML_TYPE_" + o["cache_type_v"].upper())
p.no_extra_bufts = not o["repack"]
M = x.llama_load_mode
p.load_mode = M.LLAMA_LOAD_MODE_MMAP if o["mmap"] else M.LLAMA_LOAD_MODE_NONE
p.fit_params = False
p.warmup = False
p.verbosity = 4
p.cpuparams.n_threads = 2
p.cpuparams_batch.n_threads = 2
server = x.Server(p)
sys.stderr.write("TRUTH-LOADED\n"); sys.stderr.flush()
os._exit(0)  # keeps the server referenced: its destructor would wait
"""


class Xllamacpp(Runtime):
    """The PyPI wheel (an in-process llama-server), in a fresh Python per case."""
    PROFILE = "x86_avx2"
    PROFILE_WHY = ("the wheel's CPU backend is built for generic x86-64 with AVX2 and without AVX-512 "
                   "kernels, whatever the recording CPU had")

    def __init__(self, timeout):
        self.timeout = timeout

    def check(self):
        import xllamacpp  # noqa: F401  (fails here, not in every case)

    def default_out(self):
        return os.path.join(TRUTH, f"xllamacpp_{self.PROFILE}.json")

    def saw(self, line):
        if line is not None and profile_from_system_info(line) != self.PROFILE:
            raise RuntimeError(f"xllamacpp's system_info reads as {profile_from_system_info(line)}, "
                               f"not {self.PROFILE}: {line}")
        super().saw(line)

    def profile(self):
        return self.PROFILE

    def load(self, path, options):
        proc = subprocess.run([sys.executable, "-c", LOADER, path, json.dumps(options)],
                              capture_output=True, text=True, timeout=self.timeout)
        log = proc.stdout + proc.stderr
        if "TRUTH-LOADED" not in log:
            tail = "\n".join(log.splitlines()[-15:])
            raise RuntimeError(f"llama.cpp did not load {path} with {options}:\n{tail}")
        return log

    def about(self):
        return ("Buffers real llama.cpp reported loading sparse GGUF files of real model shapes "
                "(CPU build). Written by scripts/llama_cpp_truth.py; do not edit by hand.")

    def describe(self):
        import xllamacpp
        return {"source": "PyPI xllamacpp " + xllamacpp.__version__, "build_info": xllamacpp.BUILD_INFO,
                "cpu_buffers_why": self.PROFILE_WHY}


class LlamaServer(Runtime):
    """A llama-server binary, one server per case: started with the case's options, read until it
    has loaded (it says so once every buffer is allocated), then killed."""
    # Every case: CPU only, nothing fitted, no prompt cache, no warmup (llama.cpp #20824), two
    # threads, the buffer sizes logged, an ephemeral loopback port.
    FLAGS = ["-ngl", "0", "--device", "none", "--fit", "off", "--cache-ram", "0", "--no-warmup",
             "-t", "2", "--verbosity", "4", "--host", "127.0.0.1", "--port", "0"]
    READY = re.compile(rb"model loaded|listening on")

    def __init__(self, binary, timeout):
        self.binary, self.timeout = os.path.abspath(binary), timeout
        if not os.access(self.binary, os.X_OK):
            sys.exit(f"no llama-server at {binary} (bash scripts/llama_server.sh builds the project's)")
        v = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=60)
        self.version = [line.strip() for line in (v.stdout + v.stderr).splitlines()
                        if line.strip().startswith(("version:", "built with"))]
        text = "\n".join(self.version)
        build = re.search(r"\(build (\d+)(?:, commit (\S+?))?\)", text)
        if not build:
            sys.exit(f"{binary} --version names no build:\n{v.stdout}{v.stderr}")
        self.build_info = {"build_number": int(build.group(1))}
        if build.group(2):
            self.build_info["commit"] = build.group(2)
        if (built := re.search(r"built with (.+?) for (.+)", text)):
            self.build_info.update(compiler=built.group(1), build_target=built.group(2))
        # The system_info line comes before the model loads: a server pointed at no file logs it
        # with the same flags as the cases, then exits.
        with tempfile.TemporaryDirectory(prefix="model_budget_truth_") as tmp:
            log, _ = self.serve(["--model", os.path.join(tmp, "none.gguf")])
        line = parse(log)[2]
        if line is None:
            tail = "\n".join(log.splitlines()[-15:])
            sys.exit(f"{binary} logged no system_info line:\n{tail}")
        self.saw(line)

    def default_out(self):
        return os.path.join(TRUTH, f"llama_server_b{self.build_info['build_number']}_{self.profile()}.json")

    def serve(self, args):
        """Runs the server with `args` until it says it has loaded (True) or exits (False); raises
        TimeoutError past the timeout. Kills it and waits for it whatever happens (Ctrl-C, an
        error): it runs in a session of its own, so a Ctrl-C reaches this script alone."""
        proc = subprocess.Popen([self.binary, *args, *self.FLAGS], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        log, deadline = bytearray(), time.monotonic() + self.timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"llama-server not loaded after {self.timeout:.0f} s:\n"
                                       + "\n".join(log.decode(errors="replace").splitlines()[-15:]))
                if not select.select([proc.stdout], [], [], min(left, 1.0))[0]:
                    continue
                data = os.read(proc.stdout.fileno(), 1 << 16)
                if not data:
                    return log.decode(errors="replace"), False
                seen = max(0, len(log) - 64)
                log += data
                if self.READY.search(log, seen):
                    return log.decode(errors="replace"), True
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
            proc.stdout.close()

    def load(self, path, o):
        args = ["--model", path, "--ctx-size", str(o["n_ctx"]), "--parallel", str(o["n_parallel"]),
                "--kv-unified" if o["kv_unified"] else "--no-kv-unified",
                "--batch-size", str(o["n_batch"]), "--ubatch-size", str(o["n_ubatch"]),
                "--flash-attn", "on" if o["flash_attn"] else "off",
                "--cache-type-k", o["cache_type_k"], "--cache-type-v", o["cache_type_v"],
                "--repack" if o["repack"] else "--no-repack",
                "--load-mode", "mmap" if o["mmap"] else "none"]
        log, loaded = self.serve(args)
        if not loaded:
            tail = "\n".join(log.splitlines()[-15:])
            raise RuntimeError(f"llama-server did not load {path} with {o}:\n{tail}")
        return log

    def about(self):
        b = self.build_info["build_number"]
        return (f"Buffers llama-server b{b} logged loading sparse GGUF files of real model shapes, one "
                f"server per case, started with the case's options and {' '.join(self.FLAGS)}, killed "
                f"once loaded; runtime profile {self.profile()} (from its system_info line). Extra CPU "
                "buffers (AMX, CPU_REPACK, KleidiAI) are recorded with term weights. Written by "
                "scripts/llama_cpp_truth.py --runtime llama-server; do not edit by hand.")

    def describe(self):
        b = self.build_info["build_number"]
        return {"source": f"llama-server b{b} ({', '.join(self.version)})", "build_info": self.build_info}


GPU_TABLE = os.path.join(ROOT, "test", "fixtures", "llama_cpp_gpu_truth.json")


def write_header(path, spec):
    """A header-only file, replaced only when its bytes change."""
    write_gguf(path + ".tmp", spec, header_only=True)
    with open(path + ".tmp", "rb") as new:
        same = False
        if os.path.exists(path):
            with open(path, "rb") as old:
                same = old.read() == new.read()
    if same:
        os.remove(path + ".tmp")
    else:
        os.replace(path + ".tmp", path)


def write_headers(keys):
    """The header-only files of the recorded files, of the GPU table's (transcribed public logs)
    and of the catalog."""
    os.makedirs(HEADERS, exist_ok=True)
    if os.path.exists(GPU_TABLE):
        keys = set(keys) | set(json.load(open(GPU_TABLE))["files"])
    for key in sorted(keys):
        model, mix = key.rsplit("-", 1) if not key.endswith("Q4_K_M") else (key[:-7], "Q4_K_M")
        write_header(os.path.join(HEADERS, key + ".gguf"), file_spec(model, mix))
    os.makedirs(CATALOG, exist_ok=True)
    for name, model in CATALOG_MODELS:
        spec = file_spec(model, "Q4_K_M")
        spec["metadata"] = [[k, t, f"{name}-Q4_K_M" if k == "general.name" else v]
                            for k, t, v in spec["metadata"]]
        write_header(os.path.join(CATALOG, f"{model}-Q4_K_M.gguf"), spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", choices=["xllamacpp", "llama-server"], default="xllamacpp",
                    help="what loads the cases (default: xllamacpp, the PyPI wheel)")
    ap.add_argument("--binary", help="the llama-server binary (--runtime llama-server); "
                    "`bash scripts/llama_server.sh` builds and prints the project's")
    ap.add_argument("--set", choices=sorted(CASE_SETS),
                    help="full: every case (102; xllamacpp's default); native: the 28 of the native "
                    "llama-server sets (llama-server's default)")
    ap.add_argument("--out", help="default: test/fixtures/truth/xllamacpp_x86_avx2.json, or "
                    "test/fixtures/truth/llama_server_b<build>_<profile>.json for llama-server")
    ap.add_argument("--only", default="", help="only the files whose name holds this")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a case may take to load")
    ap.add_argument("--resume", action="store_true",
                    help="keep the cases already in the set (same file and options)")
    ap.add_argument("--headers", action="store_true",
                    help="only rewrite the header-only files of the recorded set and the catalog")
    args = ap.parse_args()
    if (args.runtime == "llama-server") != bool(args.binary):
        ap.error("--binary PATH goes with --runtime llama-server, and only there")
    # A kill ends this script as a Ctrl-C does: the running case's server is killed too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.runtime == "llama-server":
        runtime = LlamaServer(args.binary, args.timeout)
    else:
        runtime = Xllamacpp(args.timeout)
    out = args.out or runtime.default_out()
    if args.headers:
        write_headers(json.load(open(out))["files"])
        return
    runtime.check()
    recorded, failed = [], []
    if args.resume and os.path.exists(out):
        recorded = json.load(open(out)).get("cases", [])
    done = {(r["file"], json.dumps(r["options"], sort_keys=True)) for r in recorded}
    args.set = args.set or ("native" if args.runtime == "llama-server" else "full")
    all_cases = [c for c in CASE_SETS[args.set]() if args.only in f"{c['model']}-{c['mix']}"]
    print(f"{len(all_cases)} cases ({args.set} set) in {runtime.describe()['source']}, runtime profile "
          f"{runtime.profile()}, into {os.path.relpath(out)}", flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="model_budget_truth_") as tmp:
        for n, c in enumerate(all_cases, 1):
            key = f"{c['model']}-{c['mix']}"
            if (key, json.dumps(c["options"], sort_keys=True)) in done:
                continue
            if not os.path.exists(os.path.join(tmp, key + ".gguf")):
                write_gguf(os.path.join(tmp, key + ".gguf"), file_spec(c["model"], c["mix"]))
            t0 = time.time()
            try:
                buffers, fields, info = parse(runtime.load(os.path.join(tmp, key + ".gguf"), c["options"]))
                missing = ({"weights", "kv_cache", "output", "compute"} - {b["term"] for b in buffers}
                           | FIELDS - set(fields))
                if missing:
                    raise RuntimeError(f"llama.cpp logged no {', '.join(sorted(missing))}")
                runtime.saw(info)
            except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as e:
                failed.append(f"{key} {c['options']}: {e}")
                print(f"[{n}/{len(all_cases)}] FAILED {key}: {e}", flush=True)
                continue
            recorded.append({"file": key, "options": c["options"], "llama_cpp": fields,
                             "buffers": buffers})
            save(out, recorded, runtime)
            summary = ", ".join(f"{b['buffer']} {b['term']} {b['mib']}" for b in buffers)
            print(f"[{n}/{len(all_cases)}] {key} {c['options']} ({time.time() - t0:.1f} s): {summary}",
                  flush=True)
    save(out, recorded, runtime)
    write_headers({r["file"] for r in recorded})
    print(f"wrote {len(recorded)} cases over {len({r['file'] for r in recorded})} files to {out} "
          f"in {time.time() - started:.0f} s")
    if failed:
        sys.exit("llama.cpp failed on:\n" + "\n".join(failed))


def save(out, recorded, runtime):
    llama_cpp = {**runtime.describe(), "cpu": cpu_flags(), "cpu_buffers": runtime.profile()}
    if runtime.system_info:
        llama_cpp["system_info"] = runtime.system_info
    table = {
        "about": runtime.about(),
        "llama_cpp": llama_cpp,
        "files": {k: {"header": f"llama_cpp_truth/{k}.gguf"} for k in sorted({r["file"] for r in recorded})},
        "cases": recorded,
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(out + ".tmp", out)


def cpu_flags():
    try:
        flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return []
    return sorted({f for f in flags.split() if f in ("avx2", "avx512f", "avx512vnni", "fma", "f16c")})


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: the cases recorded so far are saved (--resume goes on from them)")
