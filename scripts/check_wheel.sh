#!/usr/bin/env bash
# CI: build the wheel, install it into a fresh virtual environment (torch==2.13.0 first), and run a small LLM-free
# night from another directory: proves the wheel carries prompts/ and data/ and needs no checkout around it. Then the
# same night's neurons again with `run --ray` on a local Ray cluster: its worker actor must import neuron_explainer
# from what Ray's runtime environment shipped (the installed package, resources included), not from site-packages.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d -t ne-wheel-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
"$REPO/.venv/bin/python" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$REPO"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --upgrade pip
"$WORK/venv/bin/python" -m pip install --quiet torch==2.13.0
WHEEL="$(ls "$WORK"/dist/neuron_explainer-*.whl)"
"$WORK/venv/bin/python" -m pip install --quiet "$WHEEL[ray]"
mkdir "$WORK/elsewhere"
cd "$WORK/elsewhere"
# The package data is inside the installed package, not read from the checkout.
"$WORK/venv/bin/python" - <<'PY'
from neuron_explainer.core.paths import DATA_DIR, PROMPTS_DIR
from neuron_explainer.core.prompts import load_prompt_files
from neuron_explainer.llm.ledger import DEFAULT_PRICES_PATH
for folder in (PROMPTS_DIR, DATA_DIR):
    assert "site-packages" in str(folder) and folder.is_dir(), folder
assert DEFAULT_PRICES_PATH.is_file() and any(PROMPTS_DIR.rglob("*.md"))
assert load_prompt_files(["explainer/token_pairs/system.md"]).texts
print(f"wheel resources: {PROMPTS_DIR.parent}")
PY
# A tiny random-init model (the test suite's recipe), then an LLM-free night on it.
"$WORK/venv/bin/python" -c "import sys; sys.path.insert(0, '$REPO/tests'); from pathlib import Path; \
from tiny_models import make_tiny_model; make_tiny_model(Path('tiny'))"
"$WORK/venv/bin/neuron-explainer" run --model tiny --corpus python-docs --layers all --neurons 0:0-3 \
  --windows 64 --ctx 16 --top-k 8 --random 8 --explainer ngram --simulator lexical --explain-windows 4 \
  --score-top-windows 2 --score-random-windows 2 --device cpu --dtype float32 --db sqlite:///night.db
"$WORK/venv/bin/neuron-explainer" query --db sqlite:///night.db --limit 4
# A Ray night on other neurons of the same recording; -v logs where the worker imported the package from.
"$WORK/venv/bin/neuron-explainer" -v run --ray --ray-workers 1 --model tiny --corpus python-docs --layers all \
  --neurons 0:4-5 --windows 64 --ctx 16 --top-k 8 --random 8 --explainer ngram --simulator lexical \
  --explain-windows 4 --score-top-windows 2 --score-random-windows 2 --device cpu --dtype float32 \
  --db sqlite:///night.db 2> ray.log || { tail -20 ray.log; exit 1; }
grep -o "neuron_explainer imported from [^)]*" ray.log | grep -q "runtime_resources" \
  || { echo "the Ray worker did not import the shipped package:"; grep "imported from" ray.log; exit 1; }
grep -o "neuron_explainer imported from [^)]*" ray.log
echo "wheel check passed: built, installed into a fresh venv, ran a night from $WORK/elsewhere"
