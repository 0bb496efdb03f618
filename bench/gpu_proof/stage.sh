#!/bin/bash
# Stages what bench/gpu_proof/run.sh needs into DEST (default .devbin, which
# .git/info/exclude should ignore) for a machine with a GPU but no Rust or
# Elixir: the probe example, the compiled app and its tests, this machine's
# Erlang/Elixir (Debian's packages, trimmed), and the scripts.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dest=${1:-$root/.devbin}
cd "$root"
cargo build --release --example probe -p model_budget_core
MIX_ENV=test mix compile
rm -rf "$dest/app" && mkdir -p "$dest/app/model_budget/priv/native" "$dest/app/test/model_budget" "$dest/app/bench"
cp target/release/examples/probe bench/gpu_proof/run.sh bench/gpu_proof/cvd.py "$dest/"
cp -r _build/test/lib/model_budget/ebin "$dest/app/model_budget/"
cp _build/test/lib/model_budget/priv/native/model_budget_nif.so "$dest/app/model_budget/priv/native/"
cp test/test_helper.exs test/model_budget_doctest_test.exs "$dest/app/test/"
cp test/model_budget/devices_test.exs "$dest/app/test/model_budget/"
cp bench/devices.exs "$dest/app/bench/"
excludes=(--exclude='*/src/*')
for app in wx megaco snmp diameter common_test observer ssh erl_docgen edoc eldap odbc et mnesia proper; do
  excludes+=(--exclude="usr/lib/erlang/lib/$app-*")
done
tar -C / -cJf "$dest/beam.tar.xz" "${excludes[@]}" usr/lib/erlang usr/lib/elixir
du -sh "$dest"
