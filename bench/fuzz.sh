#!/usr/bin/env bash
# Fuzz a live herd server with schemathesis, driven by its own /openapi.json (about 2000 cases).
#
#   bench/fuzz.sh                 # a fresh server on a free loopback port, with a temporary model store
#   CASES=100 bench/fuzz.sh       # generated cases per operation (default 200: about 2800 over the 23 operations)
#   URL=http://127.0.0.1:11434 bench/fuzz.sh   # an already running server (careful: fuzzing creates, copies
#                                               # and deletes models in its store)
#
# Checks: no 5xx except the documented ones (spec 4: a bad `format`, a failed runner, a full queue), no crash.
# /api/pull and /api/push are left out: they would reach for registries off this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES="${CASES:-200}"
command -v schemathesis >/dev/null || { echo "schemathesis is missing: pip install -e '.[dev]'" >&2; exit 2; }

cleanup() { :; }
if [ -z "${URL:-}" ]; then
  PORT="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  STORE="$(mktemp -d)"
  LOG="$(mktemp)"
  # Small bounds keep every generated request cheap: random options cannot ask for long generations.
  OLLAMA_HOST="127.0.0.1:$PORT" HERD_MODELS="$STORE" HERD_CONTEXT_LENGTH=256 HERD_MAX_NUM_CTX=512 \
    HERD_MAX_NUM_PREDICT=8 HERD_MAX_BODY_BYTES=1000000 HERD_MAX_BLOB_BYTES=1000000 HERD_NUM_PARALLEL=2 \
    python -m herd.cli serve >"$LOG" 2>&1 &
  SERVER=$!
  cleanup() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$STORE"; }
  trap cleanup EXIT
  URL="http://127.0.0.1:$PORT"
  for _ in $(seq 1 150); do
    curl -sf "$URL/" >/dev/null 2>&1 && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$LOG"; exit 1; }
    sleep 0.2
  done
fi

status=0
schemathesis run "$URL/openapi.json" \
  --checks not_a_server_error \
  --exclude-path-regex '^/api/(pull|push)$' \
  --phases examples,fuzzing \
  --max-examples "$CASES" \
  --request-timeout 60 \
  --generation-deterministic || status=$?
# The server must still answer after the run.
curl -sf "$URL/api/version" >/dev/null || { echo "the server stopped answering" >&2; status=1; }
exit "$status"
