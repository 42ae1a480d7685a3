#!/usr/bin/env bash
# One-time, idempotent set-up for a fresh machine: Debian EGL packages (headless rendering),
# a virtual environment in .venv with torch and every extra the tests use, d2a-edge editable.
# Re-runs are instant unless pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

egl_pkgs=(libegl1 libegl-mesa0 libgl1-mesa-dri)
missing=()
for p in "${egl_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages for headless EGL: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: WARNING: missing ${missing[*]} (need root/apt); rendering tests will skip" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.d2a-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv (first run: ~2 minutes)"
  .venv/bin/pip install -q --upgrade pip
  case "$(uname -m)" in
    x86_64) .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 ;;
    aarch64) .venv/bin/pip install -q torch==2.9.1 torchvision==0.24.1 ;;
    *) .venv/bin/pip install -q torch torchvision ;;
  esac
  .venv/bin/pip install -q scikit-build-core pybind11 cmake ninja  # no system cmake or make needed
  # The CUDA kernel is compiled only where a GPU can run it; its own test compiles it anyway.
  cuda=OFF; command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && cuda=ON
  .venv/bin/pip install -q --no-build-isolation -Ccmake.define.D2A_WITH_CUDA=$cuda \
    -e ".[train,export,smpl,dev]"
  rm -f .venv/.d2a-setup-*
  touch "$stamp"
fi
