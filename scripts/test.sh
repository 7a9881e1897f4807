#!/usr/bin/env bash
# The whole suite: unit tests, then integration tests against real `herd serve` processes and the real model.
set -euo pipefail
cd "$(dirname "$0")/.."
# --durations: the slowest tests are named in every run (CI included), so a test that grows slow is seen.
exec python3 -m pytest -q -p no:cacheprovider --durations=25 "$@"
