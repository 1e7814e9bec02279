# The README's two commands: `make demo` and `make test`. Everything they need is installed from here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# make is the development entry point (demo, tests, checks): DEBUG on unless set. Everything else
# (manage.py, daphne, celery) runs with DEBUG off unless DEBUG=1 is set: see docs/deploy.md.
export DEBUG ?= 1

.PHONY: setup demo test lint check bench gpu-check soak chromium report-deps clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

node_modules/.stamp: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

setup: $(STAMP) node_modules/.stamp
	mkdir -p var
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py collectstatic --noinput -v0

# Headless Chromium for the page tests: Debian's package (Playwright's own download does not work here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: run 'sudo apt-get install chromium'"; exit 1; fi; }

# PDF reports: WeasyPrint needs Pango and a font; the report tests read PDFs back with poppler (pdftoppm,
# pdftotext, pdfinfo). Debian's packages, installed when run as root.
report-deps:
	@if command -v pdftoppm >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q libpangoft2-1.0; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core poppler-utils >/dev/null; \
	else echo "report libraries missing: run 'sudo apt-get install libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core poppler-utils'"; exit 1; fi

demo: setup report-deps
	$(BIN)/python manage.py demo

lint: $(STAMP)
	$(BIN)/ruff check .

check: setup
	$(BIN)/python manage.py check --fail-level WARNING
	$(BIN)/python manage.py makemigrations --check --dry-run

test: setup chromium report-deps lint check
	$(BIN)/pytest

# All three run even if one misses a goal (it exits 1 after printing); the target fails if any did.
# BENCH_ARGS=--short: a second or two each, goals not enforced. RUNTIME=process|thread: overhead and batching.
bench: setup
	@status=0; for b in overhead loadgen batching simulate; do \
	  rt=; if [ -n "$(RUNTIME)" ] && [ $$b != loadgen ] && [ $$b != simulate ]; then rt="--runtime $(RUNTIME)"; fi; \
	  $(BIN)/python manage.py bench $$b $(BENCH_ARGS) $$rt || status=1; \
	done; exit $$status

# On a GPU host: every GPU path (sharing modes, batching, scale to zero, telemetry) as short real trials, one
# table, within 5 minutes; exits 1 if a check that applies failed. GPU_CHECK_ARGS="--device cuda:1 --json out.json".
gpu-check: setup
	$(BIN)/python manage.py gpu_check $(GPU_CHECK_ARGS)

# Not in CI (minutes): 200 short trials through a real worker, a worker SIGKILL and a Redis restart in the middle;
# prints trials lost and stuck (both must be 0), worker memory growth and the p99 spread. SOAK_ARGS=--short: 6.
soak: setup
	$(BIN)/python manage.py soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) node_modules var
