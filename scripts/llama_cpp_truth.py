#!/usr/bin/env python3
"""Records what real llama.cpp allocates, for ModelBudget's calibration test.

For each case below this script writes a sparse GGUF file with the tensor
shapes and type mix of a real model (holes where the weights would be),
loads it in real llama.cpp in a fresh process (the `xllamacpp` wheel from
PyPI: an in-process llama-server), and records every buffer llama.cpp
reports, per buffer type, with the options and the llama.cpp version, into
test/fixtures/llama_cpp_truth.json. The table also keeps each model's
metadata and tensor table, so the test can rebuild the same header without
Python or llama.cpp.

    python3 scripts/llama_cpp_truth.py [--out PATH] [--only SUBSTRING] [--resume]

Run through `make calibrate`, which installs xllamacpp into a cache venv.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "test", "fixtures", "llama_cpp_truth.json")
# Header-only GGUF files: the recorded files' (beside the table) and the
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


# ---------------------------------------------------------------------------
# Loading in llama.cpp, one fresh process per case.

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

BUFFER = re.compile(r"(load_tensors|llama_kv_cache|llama_context|sched_reserve):\s+(\S+)\s+"
                    r"(model|KV|output|compute) buffer size =\s+([0-9.]+) MiB")
FIELD = re.compile(r"llama_context: (n_ctx|n_ctx_seq|n_seq_max|n_outputs_max)\s+= (\d+)")
TERM = {"model": "weights", "KV": "kv_cache", "output": "output", "compute": "compute"}


def load(python, path, options):
    proc = subprocess.run([python, "-c", LOADER, path, json.dumps(options)], capture_output=True,
                          text=True, timeout=900)
    log = proc.stdout + proc.stderr
    if "TRUTH-LOADED" not in log:
        tail = "\n".join(log.splitlines()[-15:])
        raise RuntimeError(f"llama.cpp did not load {path} with {options}:\n{tail}")
    buffers, fields = [], {}
    for line in log.splitlines():
        if (b := BUFFER.search(line)):
            # llama.cpp prints MiB with two decimals: bytes to within 5.3 KB.
            buffers.append({"buffer": b.group(2), "term": TERM[b.group(3)],
                            "mib": float(b.group(4))})
        elif (f := FIELD.search(line)):
            fields[f.group(1)] = int(f.group(2))
    return buffers, fields


GPU_TABLE = os.path.join(ROOT, "test", "fixtures", "llama_cpp_gpu_truth.json")


def write_headers(keys):
    """The header-only files of the recorded files, of the GPU table's (transcribed public logs)
    and of the catalog."""
    os.makedirs(HEADERS, exist_ok=True)
    if os.path.exists(GPU_TABLE):
        keys = set(keys) | set(json.load(open(GPU_TABLE))["files"])
    for key in sorted(keys):
        model, mix = key.rsplit("-", 1) if not key.endswith("Q4_K_M") else (key[:-7], "Q4_K_M")
        write_gguf(os.path.join(HEADERS, key + ".gguf"), file_spec(model, mix), header_only=True)
    os.makedirs(CATALOG, exist_ok=True)
    for name, model in CATALOG_MODELS:
        spec = file_spec(model, "Q4_K_M")
        spec["metadata"] = [[k, t, f"{name}-Q4_K_M" if k == "general.name" else v]
                            for k, t, v in spec["metadata"]]
        write_gguf(os.path.join(CATALOG, f"{model}-Q4_K_M.gguf"), spec, header_only=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--only", default="")
    ap.add_argument("--resume", action="store_true",
                    help="keep the cases already in the table (same file and options)")
    ap.add_argument("--headers", action="store_true",
                    help="only rewrite the header-only files of the recorded table and the catalog")
    args = ap.parse_args()
    if args.headers:
        write_headers(json.load(open(args.out))["files"])
        return
    import xllamacpp
    recorded, failed = [], []
    if args.resume and os.path.exists(args.out):
        recorded = json.load(open(args.out)).get("cases", [])
    done = {(r["file"], json.dumps(r["options"], sort_keys=True)) for r in recorded}
    all_cases = [c for c in cases() if args.only in f"{c['model']}-{c['mix']}"]
    with tempfile.TemporaryDirectory(prefix="model_budget_truth_") as tmp:
        for n, c in enumerate(all_cases, 1):
            key = f"{c['model']}-{c['mix']}"
            if (key, json.dumps(c["options"], sort_keys=True)) in done:
                continue
            if not os.path.exists(os.path.join(tmp, key + ".gguf")):
                write_gguf(os.path.join(tmp, key + ".gguf"), file_spec(c["model"], c["mix"]))
            t0 = time.time()
            try:
                buffers, fields = load(sys.executable, os.path.join(tmp, key + ".gguf"), c["options"])
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                failed.append(f"{key} {c['options']}: {e}")
                print(f"[{n}/{len(all_cases)}] FAILED {key}: {e}", flush=True)
                continue
            recorded.append({"file": key, "options": c["options"], "llama_cpp": fields,
                             "buffers": buffers})
            save(args.out, recorded)
            summary = ", ".join(f"{b['buffer']} {b['term']} {b['mib']}" for b in buffers)
            print(f"[{n}/{len(all_cases)}] {key} {c['options']} ({time.time() - t0:.1f} s): {summary}",
                  flush=True)
    save(args.out, recorded)
    write_headers({r["file"] for r in recorded})
    print(f"wrote {len(recorded)} cases over {len({r['file'] for r in recorded})} files to {args.out}")
    if failed:
        sys.exit("llama.cpp failed on:\n" + "\n".join(failed))


def save(out, recorded):
    import xllamacpp
    table = {
        "about": "Buffers real llama.cpp reported loading sparse GGUF files of real model shapes "
                 "(CPU build). Written by scripts/llama_cpp_truth.py; do not edit by hand.",
        "llama_cpp": {"source": "PyPI xllamacpp " + xllamacpp.__version__,
                      "build_info": xllamacpp.BUILD_INFO, "cpu": cpu_flags()},
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
    main()
