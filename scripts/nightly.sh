#!/usr/bin/env bash
# Nightly run: resumable, budgeted, then refresh the exports. Example crontab line (runs at 22:00):
#   0 22 * * *  cd /path/to/neuron-explainer && OPENAI_API_KEY=... scripts/nightly.sh >> nightly.log 2>&1
set -euo pipefail
cd "$(dirname "$0")/.."
NE=.venv/bin/neuron-explainer
CONFIG=${1:-scripts/nightly.toml}
DB=$(sed -n 's/^db *= *"\(.*\)"/\1/p' "$CONFIG")
status=0
"$NE" run --config "$CONFIG" --json > "nightly-$(date +%F).json" || status=$?
"$NE" export --db "$DB" --format html --out site
"$NE" export --db "$DB" --format latex --out paper/neurons.tex
"$NE" export --db "$DB" --format plots --out paper/plots
exit $status
