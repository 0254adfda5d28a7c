#!/usr/bin/env bash
# Install what the tests need from this repo's own files, then lint, type-check and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# requirements.txt pins the CPU torch wheel; without it pip would pick a multi-GB CUDA build.
python -m pip install -q --disable-pip-version-check -r requirements.txt -e '.[test,grpc]'
# The fastai extra, with --no-deps: fastai's own requirements would swap torch for a CUDA build.
python -m pip install -q --disable-pip-version-check --no-deps \
  fastai==2.8.12 fastcore==2.2.39 fasttransform==0.0.5 fastprogress==1.0.3 fastdownload==0.0.8 \
  plum-dispatch==2.9.0 beartype==0.23.1 pandas==3.1.1 python-dateutil==2.9.0.post0
# ...and what fastai imports at start-up but does not declare for a --no-deps install.
python -m pip install -q --disable-pip-version-check "matplotlib>=3.8,<4" "requests>=2.31,<3"
python -c 'import torch; assert torch.__version__.endswith("+cpu"), torch.__version__'

ruff check .
ruff format --check .
mypy
python -m pytest -q

# fastai vision learners need torchvision, which needs another torch: a second environment.
# PTSERVE_SKIP_VISION=1 leaves it out (for a quick local run).
if [ "${PTSERVE_SKIP_VISION:-0}" != 1 ]; then
  bash scripts/test-vision.sh
fi
