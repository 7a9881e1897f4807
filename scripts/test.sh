#!/usr/bin/env bash
# The whole suite: unit tests, then integration tests against real `herd serve` processes and the real model.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m pytest -q -p no:cacheprovider "$@"
