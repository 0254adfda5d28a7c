#!/usr/bin/env bash
# Install what the tests need from this repo's own files, then lint, type-check and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# requirements.txt pins the CPU torch wheel; without it pip would pick a multi-GB CUDA build.
python -m pip install -q --disable-pip-version-check -r requirements.txt -e '.[test]'

ruff check .
ruff format --check .
mypy
python -m pytest -q
