#!/usr/bin/env bash
# Sets up .venv for medcl on a fresh machine, in the order this needs (see docs/install.md):
#   1. torch first (the CPU wheel where that is what the registry/local disk offers), so that every
#      later `torch>=2.x` requirement is already satisfied and pip never pulls CUDA wheels;
#   2. medcl itself (editable) with its dependencies and the dev tools;
#   3. tsai and fastai with --no-deps: fastai declares torchvision, which has no CPU build here and, once
#      installed, breaks `import lightning`. tsai's model code does not need it; what it does need is
#      declared in pyproject.toml.
# Re-running it is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_BIN="${PYTHON:-python3}"
TORCH_VERSION="${MEDCL_TORCH_VERSION:-2.13.0}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON_BIN" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q "torch==${TORCH_VERSION}"
pip install -q -e ".[dev]"
pip install -q --no-deps "tsai==1.0.1" "fastai==2.8.7"
python -c "import medcl, modalities, tasks, export; from tsai.models.InceptionTime import InceptionTime" \
    && echo "medcl set up in .venv ($(python -c 'import torch; print("torch", torch.__version__)'))"
