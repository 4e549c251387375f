#!/usr/bin/env bash
# Sets up a fresh machine for empssl-ray: Debian's Fashion-MNIST, a virtual environment, the package.
# Idempotent: a second run only checks what is there. Used by `make test` and `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

# Fashion-MNIST ships in Debian: the demo and the tests need no network for it.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing Debian's dataset-fashion-mnist"
  $SUDO apt-get update -qq >/dev/null || true
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "setup: could not install dataset-fashion-mnist; torchvision will download it instead"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# The stamp makes the second run instant; editing pyproject.toml invalidates it.
STAMP="$VENV/.empssl-installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "setup: installing torch, Ray and empssl-ray into $VENV (a few minutes the first time)"
  # torch first and pinned: a bare range would pull a multi-GB CUDA build from PyPI on some machines.
  "$VENV/bin/pip" install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
  "$VENV/bin/pip" install -q -e ".[dev]"
  touch "$STAMP"
fi
