#!/bin/bash
# The GPU proof for issue 3: run on the device machine from the repo root as
# `bash .devbin/run.sh` after bench/gpu_proof/stage.sh filled .devbin/.
set -u
cd "$(dirname "$0")"
P=./probe
Q='--query-gpu=name,uuid,memory.total,memory.free,memory.used --format=csv'
echo "== nvidia-smi"
nvidia-smi --query-gpu=name,uuid,memory.total,memory.free,memory.used,memory.reserved,driver_version --format=csv
U=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1)
echo "== probe, first process"; $P
echo "== probe, second process"; $P
echo "== holding a 4 GiB PyTorch tensor"
rm -f /tmp/held
python3 -c "
import torch, time
x = torch.empty(4 * 2**30, dtype=torch.uint8, device='cuda'); x.fill_(1); torch.cuda.synchronize()
print('torch holds', torch.cuda.memory_allocated(), 'bytes', flush=True)
open('/tmp/held', 'w').write('1'); time.sleep(300)" &
HOLD=$!
for i in $(seq 1 900); do [ -f /tmp/held ] && break; sleep 0.1; done
nvidia-smi $Q
$P --quiet
kill $HOLD; wait $HOLD 2>/dev/null; sleep 2
echo "== tensor freed"; nvidia-smi $Q; $P --quiet
for v in "$U" 0 1 ""; do echo "== CUDA_VISIBLE_DEVICES='$v'"; CUDA_VISIBLE_DEVICES="$v" $P; done
echo "== CUDA driver vs probe, per CUDA_VISIBLE_DEVICES value"; python3 cvd.py "$U" $P
echo "== Elixir: ExUnit with :gpu included, then bench/devices.exs"
tar -xJf beam.tar.xz -C /
export PATH=/usr/lib/erlang/bin:/usr/lib/elixir/bin:$PATH HOME=/tmp LANG=C.UTF-8 LC_ALL=C.UTF-8
cd app
elixir -pa model_budget/ebin -r test/test_helper.exs -r test/model_budget_doctest_test.exs test/model_budget/devices_test.exs
elixir -pa model_budget/ebin bench/devices.exs
elixir -pa model_budget/ebin bench/devices.exs
