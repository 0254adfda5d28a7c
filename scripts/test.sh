#!/usr/bin/env bash
# The test command. Installs what the tests need from this repo's own files, then runs lint,
# type checks and the main test suite:
#   bash scripts/test.sh          the main suite (the README says how long it takes)
#   bash scripts/test.sh --all    then also the fastai vision tests, in a second environment
#                                 (.venv-vision, 6.4 GB, built on first use: see test-vision.sh)
# CI (.ci/run) runs --all.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  "") all=0 ;;
  --all) all=1 ;;
  *) echo "usage: bash scripts/test.sh [--all]" >&2; exit 2 ;;
esac

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
# `ptserve ray` and its tests: Ray Serve (the pin is the ray extra's; it leaves torch alone).
python -m pip install -q --disable-pip-version-check -e '.[ray]'
python -c 'import torch; assert torch.__version__.endswith("+cpu"), torch.__version__'

ruff check .
ruff format --check .
mypy
python -m pytest -q

# fastai vision learners need torchvision, which needs another torch: a second environment.
if [ "$all" = 1 ]; then
  bash scripts/test-vision.sh
else
  echo "Main suite passed. The fastai vision tests were skipped: they need a second environment"
  echo "(.venv-vision, 6.4 GB); bash scripts/test.sh --all builds it once and runs them too."
fi
