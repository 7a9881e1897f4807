#!/usr/bin/env bash
# Install (if needed) and start the server on the default model, like `ollama serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec herd serve
