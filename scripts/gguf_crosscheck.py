#!/usr/bin/env python3
"""Reads GGUF files with llama.cpp's own `gguf` package (pip install gguf),
for comparison with ModelBudget.Model.read/1 (see scripts/gguf_crosscheck.exs
and bench/model.exs).

  gguf_crosscheck.py describe FILE...   one Elixir map literal per line
  gguf_crosscheck.py write FILE         a small GGUF written by gguf.GGUFWriter
                                        with one tensor of every ggml type
  gguf_crosscheck.py time FILE N        seconds for GGUFReader(FILE), N runs
"""
import statistics
import sys
import time

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFReader, GGML_QUANT_SIZES

ARCH_KEYS = [
    "block_count", "context_length", "embedding_length", "vocab_size",
    "expert_count", "expert_used_count", "attention.head_count",
    "attention.head_count_kv", "attention.key_length", "attention.value_length",
    "attention.sliding_window",
]


def ex(value):
    """A Python value as Elixir term syntax."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(ex(v) for v in value) + "]"
    if isinstance(value, dict):
        return "%{" + ", ".join(f"{ex(k)} => {ex(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def describe(path):
    r = GGUFReader(path)
    arch = field(r, "general.architecture")
    meta = {k: field(r, f"{arch}.{k}") for k in ARCH_KEYS}
    tokens = r.fields.get("tokenizer.ggml.tokens")
    meta["tokens"] = None if tokens is None else len(tokens.data)
    types = {}
    for t in r.tensors:
        s = types.setdefault(t.tensor_type.name, {"n_tensors": 0, "n_params": 0, "bytes": 0})
        s["n_tensors"] += 1
        s["n_params"] += int(t.n_elements)
        s["bytes"] += int(t.n_bytes)
    out = {
        "path": path,
        "architecture": arch,
        "name": field(r, "general.name"),
        "n_tensors": len(r.tensors),
        "n_params": sum(int(t.n_elements) for t in r.tensors),
        "weight_bytes": sum(int(t.n_bytes) for t in r.tensors),
        "data_offset": int(r.data_offset),
        "types": types,
        "metadata": meta,
    }
    print(ex(out))


def write(path):
    w = gguf.GGUFWriter(path, "qwen2")
    w.add_name("every ggml type")
    w.add_block_count(2)
    w.add_context_length(32768)
    w.add_embedding_length(256)
    w.add_head_count(4)
    w.add_head_count_kv([2, 1])
    w.add_key_length(64)
    w.add_value_length(32)
    w.add_sliding_window(1024)
    w.add_token_list([f"t{i}" for i in range(300)])
    for i, ty in enumerate(sorted(GGML_QUANT_SIZES, key=int)):
        block, size = GGML_QUANT_SIZES[ty]
        rows = 2 + i % 3
        w.add_tensor(f"blk.{i % 2}.t_{ty.name.lower()}.weight",
                     np.zeros((rows, 256 // block * size), dtype=np.uint8), raw_dtype=ty)
    w.add_tensor("token_embd.weight", np.zeros((300, 256), dtype=np.float16))
    w.add_tensor("output_norm.weight", np.zeros(256, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def timed(path, runs):
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        GGUFReader(path)
        seconds.append(time.perf_counter() - start)
    print(ex({"median_us": int(statistics.median(seconds) * 1e6),
              "min_us": int(min(seconds) * 1e6), "max_us": int(max(seconds) * 1e6),
              "runs": runs, "gguf_version": gguf.__version__ if hasattr(gguf, "__version__") else None}))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "describe":
        for p in args:
            describe(p)
    elif cmd == "write":
        write(args[0])
    elif cmd == "time":
        timed(args[0], int(args[1]))
    else:
        sys.exit(__doc__)
