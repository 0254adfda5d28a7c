#!/usr/bin/env bash
# The fastai *vision* tests, in their own environment: torchvision only works beside
# torch==2.14.1, while ptserve's main environment pins the torch 2.13.0 CPU wheel. The
# environment is kept in .venv-vision (6.4 GB) and reused. `bash scripts/test.sh --all` runs
# this after the main suite.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-vision
if ! "$venv/bin/python" -c 'import torchvision' 2>/dev/null; then
  echo "Building $venv for the fastai vision tests: torch 2.14.1 + torchvision 0.29.1 and"
  echo "fastai, 6.4 GB on disk; about two minutes from this machine's wheel cache (longer when"
  echo "pip has to download the wheels). It is built once and reused."
  python -m venv "$venv"
fi
# (pip's notes about this machine's absent local index folders are filtered out of stderr)
pip() {
  "$venv/bin/python" -m pip -q --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip install torch==2.14.1 torchvision==0.29.1
pip install -e '.[test]'
# fastai with --no-deps, as in scripts/test.sh (its own requirements would pull spacy and more).
pip install --no-deps \
  fastai==2.8.12 fastcore==2.2.39 fasttransform==0.0.5 fastprogress==1.0.3 fastdownload==0.0.8 \
  plum-dispatch==2.9.0 beartype==0.23.1 pandas==3.1.1 python-dateutil==2.9.0.post0
pip install "matplotlib>=3.8,<4" "requests>=2.31,<3"
"$venv/bin/python" -c 'import torch, torchvision, fastai.vision.all; print("vision env: torch", torch.__version__, "torchvision", torchvision.__version__)'

# Every fastai test (tabular too: a second torch version, whose torch.export differs), the
# vision conversions, the image tests and the example.
"$venv/bin/python" -m pytest -q -rs \
  tests/unit/test_fastai.py tests/unit/test_detect.py \
  tests/integration/test_fastai_predict.py tests/integration/test_fastai_vision.py \
  tests/integration/test_fastai_convert.py tests/integration/test_fastai_convert_vision.py \
  tests/integration/test_fastai_hostile.py tests/integration/test_image_predict.py \
  "tests/e2e/test_examples.py::test_fastai_vision_example_trains_exports_serves_and_classifies"
