#!/usr/bin/env bash
# Runs langchain-ollama 1.1.0's own integration tests (tests/integration_tests of libs/partners/ollama) against a
# fresh `herd serve` with the default model, and prints pytest's summary. Not CI: it needs the suite's sources and a
# virtual environment of its own, and the suite's verdicts on content depend on the 135M model's answers.
#
#   bench/langchain_ollama_suite.sh [SOURCE] [-- PYTEST_ARGS...]
#
# SOURCE is one of
#   - a folder that holds the suite (libs/partners/ollama at the release, or the unpacked sdist): used as is;
#   - a bare git directory of langchain-ai/langchain: libs/partners/ollama is exported at the release tag;
#   - nothing: the release's sdist is fetched with pip (it ships tests/ next to the package).
#
# The suite hard-codes model names (llama3.1, deepseek-r1:1.5b, gpt-oss:20b). They are created in a throw-away
# model store as copies of smollm2:135m (`/api/create` with `from`), so the tests run unchanged.
#
# Environment (all optional):
#   LC_VENV=/opt/lc            virtual environment for the suite (created when missing)
#   LC_PORT=11750              port for herd (must be free)
#   LC_TIMEOUT=180             per-test timeout in seconds (pytest-timeout)
#   LC_NUM_THREAD=1            HERD_NUM_THREAD for the server: on a shared 2-core machine two llama.cpp threads
#                              spin against other processes and decode about 10x slower than one
#   LC_NUM_PREDICT=            if set, a PARAMETER num_predict on the aliases (bounds runaway answers)
#   LC_THINKING=0              1: give the reasoning aliases (deepseek-r1:1.5b, gpt-oss:20b) a ChatML template that
#                              has thinking (pre-opened <think>), so the reasoning tests reach herd's thinking path
#                              instead of the 400 that a model without the capability gets
#   LC_TOOL_SHOTS=0            1: give llama3.1 two example turns (MESSAGE) that answer with a <tool_call>, so the
#                              tool tests reach herd's tool-call parsing and grammar; a diagnostic for herd's tool
#                              path (run it with -k tool), since the examples also change answers that need no tool
#   LC_OUT=/tmp/lc-ollama-run  where the junit XML, the server log and the model store go
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=1.1.0
VENV=${LC_VENV:-/opt/lc}
PORT=${LC_PORT:-11750}
TIMEOUT=${LC_TIMEOUT:-180}
NUM_THREAD=${LC_NUM_THREAD:-1}
NUM_PREDICT=${LC_NUM_PREDICT:-}
THINKING=${LC_THINKING:-0}
TOOL_SHOTS=${LC_TOOL_SHOTS:-0}
OUT=${LC_OUT:-/tmp/lc-ollama-run}
HERD_PY=${HERD_PYTHON:-python3}
ALIASES=(llama3.1 deepseek-r1:1.5b gpt-oss:20b)

SOURCE=""
if [[ $# -gt 0 && $1 != "--" ]]; then SOURCE=$1; shift; fi
if [[ $# -gt 0 && $1 == "--" ]]; then shift; fi
PYTEST_ARGS=("$@")

mkdir -p "$OUT"
SUITE="$OUT/suite"

# --- 1. the suite's sources -------------------------------------------------------------------------------------
if [[ -n $SOURCE && -d $SOURCE/tests/integration_tests ]]; then
    SUITE=$(cd "$SOURCE" && pwd)
elif [[ -n $SOURCE && -d $SOURCE && -f $SOURCE/HEAD ]]; then
    # A bare mirror: the release tag, else the last commit that set the version in pyproject.toml.
    commit=$(git --git-dir="$SOURCE" rev-parse -q --verify "refs/tags/langchain-ollama==$VERSION^{commit}" || true)
    if [[ -z $commit ]]; then
        commit=$(git --git-dir="$SOURCE" log -n 1 --format=%H -G "^version = \"$VERSION\"" --all \
            -- libs/partners/ollama/pyproject.toml)
    fi
    [[ -n $commit ]] || { echo "no commit of langchain-ollama $VERSION in $SOURCE" >&2; exit 2; }
    echo "suite: langchain-ollama $VERSION at $commit"
    rm -rf "$SUITE" && mkdir -p "$SUITE"
    git --git-dir="$SOURCE" archive "$commit" libs/partners/ollama | tar -x -C "$SUITE" --strip-components=3
elif [[ -z $SOURCE ]]; then
    if [[ ! -d $SUITE/tests/integration_tests ]]; then
        rm -rf "$SUITE" "$OUT/sdist" && mkdir -p "$SUITE" "$OUT/sdist"
        "$HERD_PY" -m pip download -q --no-deps --no-binary :all: "langchain-ollama==$VERSION" -d "$OUT/sdist"
        tar -xzf "$OUT/sdist/langchain_ollama-$VERSION.tar.gz" -C "$SUITE" --strip-components=1
    fi
else
    echo "not a suite folder nor a git directory: $SOURCE" >&2
    exit 2
fi
[[ -d $SUITE/tests/integration_tests ]] || { echo "no tests/integration_tests in $SUITE" >&2; exit 2; }

# --- 2. the suite's virtual environment -------------------------------------------------------------------------
# Versions from the release's uv.lock (langchain-core 1.2.26, langchain-tests 1.1.5) and its test group.
if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import langchain_ollama, langchain_tests, pytest_timeout, syrupy" 2>/dev/null; then
    "$VENV/bin/pip" install -q "langchain-ollama==$VERSION" "langchain-core==1.2.26" "langchain-tests==1.1.5" \
        "pytest>=8.4.1,<9" "pytest-asyncio>=0.26,<1" "pytest-socket>=0.7,<1" "syrupy>=4.9.1,<5" pytest-timeout
fi

# --- 3. herd, with the aliases ----------------------------------------------------------------------------------
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "port $PORT is taken; set LC_PORT" >&2
    exit 2
fi
STORE="$OUT/models"
rm -rf "$STORE" && mkdir -p "$STORE"
HOST="http://127.0.0.1:$PORT"
(cd "$REPO" && HERD_MODELS="$STORE" OLLAMA_HOST="127.0.0.1:$PORT" HERD_NUM_THREAD="$NUM_THREAD" \
    exec "$HERD_PY" -m herd.cli serve) >"$OUT/herd.log" 2>&1 &
HERD_PID=$!
# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
    kill "$HERD_PID" 2>/dev/null || true
    wait "$HERD_PID" 2>/dev/null || true
}
trap cleanup EXIT

for _ in $(seq 1 120); do
    if "$VENV/bin/python" - "$HOST" <<'EOF' 2>/dev/null; then break; fi
import sys, httpx
httpx.get(sys.argv[1] + "/api/version", timeout=2).raise_for_status()
EOF
    kill -0 "$HERD_PID" 2>/dev/null || { echo "herd exited:" >&2; cat "$OUT/herd.log" >&2; exit 2; }
    sleep 1
done

"$VENV/bin/python" - "$HOST" "$NUM_PREDICT" "$THINKING" "$TOOL_SHOTS" "${ALIASES[@]}" <<'EOF'
import sys, httpx
host, num_predict, names = sys.argv[1], sys.argv[2], sys.argv[5:]
thinking, tool_shots = sys.argv[3] == "1", sys.argv[4] == "1"
# ChatML as SmolLM2 was tuned on, plus what makes Ollama (and herd) see the thinking capability: .Thinking inside
# the range over .Messages (which holds the system message too). With think on, the answer starts inside <think>,
# as DeepSeek-R1's template does.
THINKING_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ if .Thinking }}<think>{{ .Thinking }}</think>\n{{ end }}{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ if .Think }}<think>{{ end }}"
)
for name in names:
    body = {"model": name, "from": "smollm2:135m", "stream": False}
    if num_predict:
        body["parameters"] = {"num_predict": int(num_predict)}
    if thinking and name != "llama3.1":
        body["template"] = THINKING_TEMPLATE
    if tool_shots and name == "llama3.1":
        # The example tool is not one the tests offer: herd's grammar makes the call name an offered tool.
        body["messages"] = [
            {"role": "user", "content": "Look up the population of Paris."},
            {"role": "assistant",
             "content": '<tool_call>[\n{"name": "lookup", "arguments": {"query": "Paris"}}\n]</tool_call>'},
            {"role": "user", "content": "Look up the height of Mont Blanc."},
            {"role": "assistant",
             "content": '<tool_call>[\n{"name": "lookup", "arguments": {"query": "Mont Blanc"}}\n]</tool_call>'},
        ]
    r = httpx.post(host + "/api/create", json=body, timeout=120)
    if r.status_code != 200:
        sys.exit(f"create {name}: {r.status_code} {r.text}")
tags = httpx.get(host + "/api/tags", timeout=10).json()["models"]
for m in tags:
    print(f"model {m['name']}: {m.get('capabilities')}")
EOF

# --- 4. the suite -----------------------------------------------------------------------------------------------
cd "$SUITE"
set +e
OLLAMA_HOST="$HOST" "$VENV/bin/python" -m pytest -p no:cacheprovider --timeout="$TIMEOUT" -rfEsxX -q \
    --junitxml="$OUT/junit.xml" tests/integration_tests "${PYTEST_ARGS[@]}"
rc=$?
set -e
echo "junit: $OUT/junit.xml  server log: $OUT/herd.log  (pytest exit $rc)"
exit "$rc"
