#!/usr/bin/env bash
# Install torch==$2 with pip $1: the CPU build when no CUDA device is present, the default (CUDA) build otherwise.
# Why: an unpinned `torch` pulls a multi-GB CUDA build even on machines that can never use it.
set -euo pipefail
PIP="$1"; VERSION="$2"
PYBIN="$(dirname "$PIP")/python"
if "$PYBIN" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$VERSION' else 1)" 2>/dev/null; then
  echo "torch $VERSION already installed"; exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "CUDA device found: installing torch==$VERSION (CUDA build)"
  "$PIP" install -q "torch==$VERSION"
else
  echo "no CUDA device: installing torch==$VERSION (CPU build)"
  # A local '+cpu' wheel (find-links) wins over the CUDA one because its local version label sorts higher;
  # elsewhere TORCH_CPU_INDEX (e.g. PyTorch's CPU wheel index) can be given.
  if [ -n "${TORCH_CPU_INDEX:-}" ]; then
    "$PIP" install -q "torch==$VERSION" --index-url "$TORCH_CPU_INDEX"
  else
    "$PIP" install -q "torch==$VERSION"
  fi
  "$PYBIN" - <<'PYEOF'
import torch, sys
if torch.version.cuda is not None:
    sys.exit("installed torch is a CUDA build on a machine without CUDA; set TORCH_CPU_INDEX to a CPU wheel index and rerun")
print("torch", torch.__version__, "(CPU build)")
PYEOF
fi
