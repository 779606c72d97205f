#!/usr/bin/env bash
# Nightly run: resumable, budgeted, then refresh the exports. Example crontab line (runs at 22:00):
#   0 22 * * *  cd /path/to/neuron-explainer && OPENAI_API_KEY=... scripts/nightly.sh >> nightly.log 2>&1
# Usage: scripts/nightly.sh [CONFIG.toml]   (default scripts/nightly.toml)
# Outputs, under OUT_DIR (default: the checkout): nightly-DATE.json (the run's summary), site/ (the viewer),
# paper/neurons.tex and paper/plots/. NE overrides the neuron-explainer command (default .venv/bin/neuron-explainer).
# Exit code: the run's (0 done or stopped at a budget, 2 bad input or fatal backend error, 3 backend failing),
# otherwise the first failing export's. The exports are refreshed whatever the run's outcome.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NE=${NE:-$ROOT/.venv/bin/neuron-explainer}
CONFIG=$(realpath "${1:-$ROOT/scripts/nightly.toml}")
OUT_DIR=${OUT_DIR:-$ROOT}
cd "$OUT_DIR" || exit 2
DB=$(sed -n 's/^db *= *"\(.*\)"/\1/p' "$CONFIG")
DB=${DB:-sqlite:///neurons.db}
mkdir -p paper

log() { echo "$(date '+%F %T') nightly: $*"; }

log "run --config $CONFIG"
status=0
# NIGHT_CAP_USD=40 scripts/nightly.sh refuses to start a night whose plan (`run --plan`) projects more dollars.
if [ -n "${NIGHT_CAP_USD:-}" ]; then
  projected=$("$NE" run --config "$CONFIG" --plan --json | .venv/bin/python -c \
    'import json, sys; cost = json.load(sys.stdin)["cost_usd"]; print("unpriced" if cost is None else cost)')
  if ! .venv/bin/python -c 'import sys; sys.exit(sys.argv[1] == "unpriced" or float(sys.argv[1]) > float(sys.argv[2]))' \
      "$projected" "$NIGHT_CAP_USD"; then
    echo "nightly: refused: the plan projects \$$projected, over the cap of \$$NIGHT_CAP_USD (run --plan for details)" >&2
    exit 3
  fi
fi
"$NE" run --config "$CONFIG" --json > "nightly-$(date +%F).json" || status=$?
log "run exited with $status; the runs so far:"
"$NE" runs --db "$DB" --limit 3 || true
for job in "html --out site" "latex --out paper/neurons.tex" "plots --out paper/plots"; do
    set -- $job
    log "export --format $1 $2 $3"
    "$NE" export --db "$DB" --format "$1" "$2" "$3" || { code=$?; [ "$status" -ne 0 ] || status=$code; }
done
log "done (exit $status)"
exit "$status"
