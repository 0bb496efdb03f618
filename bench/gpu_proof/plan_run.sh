#!/bin/bash
set -u
cd "$(dirname "$0")"
tar -xJf beam.tar.xz -C /
export PATH=/usr/lib/erlang/bin:/usr/lib/elixir/bin:$PATH HOME=/tmp LANG=C.UTF-8 LC_ALL=C.UTF-8
cd app
nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv
echo "== mix model_budget.plan"
elixir -pa model_budget/ebin -e 'System.halt(Mix.Tasks.ModelBudget.Plan.main([], false))'; echo "exit $?"
echo "== mix model_budget.plan --ctx 32768 --cache-type-k q8_0 --cache-type-v q8_0"
elixir -pa model_budget/ebin -e 'System.halt(Mix.Tasks.ModelBudget.Plan.main(~w(--ctx 32768 --cache-type-k q8_0 --cache-type-v q8_0 llama-3.1-70b), false))'; echo "exit $?"
echo "== mix model_budget.plan --json llama-3.1-8b"
elixir -pa model_budget/ebin -e 'System.halt(Mix.Tasks.ModelBudget.Plan.main(~w(--json llama-3.1-8b), false))'; echo "exit $?"
echo "== ExUnit :gpu"
elixir -pa model_budget/ebin -r test/test_helper.exs -r test/model_budget_doctest_test.exs test/model_budget/devices_test.exs
