#!/bin/bash
set -u
cd "$(dirname "$0")"
tar -xJf beam.tar.xz -C /
export PATH=/usr/lib/erlang/bin:/usr/lib/elixir/bin:$PATH HOME=/tmp LANG=C.UTF-8 LC_ALL=C.UTF-8
cd app
T="-r test/model_budget/devices_test.exs -r test/model_budget/model_manager_test.exs -r test/model_budget/model_manager/eviction_test.exs"
nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv
echo "== ExUnit on the GPU machine, :gpu included: devices, manager and eviction"
elixir -pa model_budget/ebin -r test/test_helper.exs $T -e ':ok'
echo "== only the :gpu tests"
elixir -pa model_budget/ebin -r test/test_helper.exs $T -e 'ExUnit.configure(include: [:gpu], exclude: [:test])'
