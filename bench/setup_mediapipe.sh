#!/usr/bin/env bash
# A separate venv for the MediaPipe peer benchmark (it pulls jax and opencv-contrib).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-mediapipe/bin/python ] || python3 -m venv .venv-mediapipe
.venv-mediapipe/bin/pip install -q mediapipe==0.10.14
