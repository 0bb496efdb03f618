#!/usr/bin/env bash
# Installs what `make` needs on a fresh Debian machine: Elixir/OTP from
# Debian's packages, and checks the Rust toolchain that builds the NIF.
# Downloads nothing outside the package registries.
set -euo pipefail

say() { printf '==> %s\n' "$*"; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
command -v mix >/dev/null 2>&1 || missing+=(elixir)
command -v erl >/dev/null 2>&1 || missing+=(erlang-nox)
# erlang-dev carries erl_nif.h; erlang-nox the OTP applications Mix and ExUnit use.
dpkg -s erlang-dev >/dev/null 2>&1 || missing+=(erlang-dev)
dpkg -s erlang-nox >/dev/null 2>&1 || missing+=(erlang-nox)

if [ "${#missing[@]}" -gt 0 ]; then
  say "Installing Elixir/OTP from Debian's packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
  say "Installed $(elixir --version 2>/dev/null | tail -n 1)"
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  say "Using Rust from $HOME/.cargo/bin (add it to PATH to skip this note)"
fi

PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  cat >&2 <<'MSG'
error: cargo was not found. ModelBudget's NIF needs Rust 1.91 or newer
(rustler 0.39); Debian's own rustc package is older than that. Install a Rust
toolchain (cargo, rustc, rustfmt, clippy) and run make again.
MSG
  exit 1
fi

rust_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "${rust_minor:-0}" -lt 91 ]; then
  echo "error: $(rustc --version) is too old; ModelBudget needs Rust 1.91 or newer (rustler 0.39)" >&2
  exit 1
fi
