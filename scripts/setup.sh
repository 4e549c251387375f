#!/usr/bin/env bash
# Sets up a fresh machine for empssl-ray: Debian's Fashion-MNIST, a virtual environment, the package.
# Idempotent: a second run only checks what is there. Used by `make test` and `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
pin() { sed -n "s/^$1==//p" cluster/pins.txt; }  # the versions every node installs too
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
  # torch first, pinned, so that the rest of the install finds it satisfied. Pinning does not
  # make it small: on Linux x86-64 PyPI's torch wheels are CUDA builds, and with the CUDA
  # libraries they pull in the venv holds about 6 GB (measured: 6.4 GB); they run on a CPU too.
  # A CPU-only machine can install PyTorch's CPU-only builds from PyTorch's own index instead
  # (far smaller), e.g.
  #   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu make test
  INDEX_ARGS=()
  if [ -n "${TORCH_INDEX_URL:-}" ]; then INDEX_ARGS=(--index-url "$TORCH_INDEX_URL"); fi
  "$VENV/bin/pip" install -q "${INDEX_ARGS[@]}" \
    "torch==${TORCH_VERSION:-$(pin torch)}" "torchvision==${TORCHVISION_VERSION:-$(pin torchvision)}"
  "$VENV/bin/pip" install -q -e ".[dev]"
  touch "$STAMP"
fi
