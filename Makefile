# ferroq: `make demo` and `make test` work on a fresh machine with only the toolchain.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.deps-stamp

.PHONY: all build demo test system-deps test-rust test-python test-benches perf-check wheel wheel-smoke django-smoke bench bench-huey bench-pg bench-asv lint fmt clean

all: build

# ruff is pinned: its formatter's style changes between releases, and `ruff format --check`
# (part of lint) must pass on a fresh machine as it does here.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "maturin>=1.7,<2" "orjson>=3.9" "click>=8.1" "prometheus-client>=0.20" "rich>=13" "pytest>=8" "pytest-timeout>=2.3" "mypy>=1.10" \
		"pytest-benchmark>=4" "ruff==0.17.6" "fastapi>=0.110" "httpx>=0.27" "croniter>=2" \
		"opentelemetry-api>=1.20" "opentelemetry-sdk>=1.20" "django>=5.2,<6" "django-tasks>=0.9" \
		"psycopg[binary]>=3.1" "procrastinate>=3" \
		"starlette>=0.37" "jinja2>=3.1" "uvicorn>=0.29" "selenium>=4.15"
	touch $(STAMP)

# Builds the Rust extension (release) into the venv as an editable install.
build: $(STAMP)
	$(VENV)/bin/maturin develop --release --quiet

demo: build
	$(PY) -m ferroq.demo

test: system-deps lint test-rust test-python test-benches perf-check wheel-smoke django-smoke

# Debian packages the tests use, installed when missing and we are root (CI is); otherwise the
# tests that need them skip, loudly (and fail under CI=true). libfaketime: clock-step tests with a
# wall clock per process. postgresql: the server binaries for tests/pg_cluster.py's throw-away
# clusters (no main cluster: the tests start their own). iproute2: `ip netns` for the multi-host
# tests (tests/netns.py). pgbouncer: the transaction-pooling tests (tests/pgbouncer.py). chromium and chromium-driver: the dashboard's browser tests.
FAKETIME_LIB := /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
APT_INSTALL  := apt-get install -y -q --no-install-recommends
system-deps:
	@if [ ! -e $(FAKETIME_LIB) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    ($(APT_INSTALL) faketime || (apt-get update -q && $(APT_INSTALL) faketime)) >/dev/null; \
	  else echo "*** faketime is not installed: the clock-step tests will be skipped ***"; fi; \
	fi
	@if ! $(PYTHON) tests/pg_cluster.py bindir >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    mkdir -p /etc/postgresql-common/createcluster.d && \
	      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/ferroq-tests.conf; \
	    ($(APT_INSTALL) postgresql || (apt-get update -q && $(APT_INSTALL) postgresql)) >/dev/null; \
	  else echo "*** PostgreSQL is not installed: the PostgreSQL suites will be skipped ***"; fi; \
	fi
	@if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    ($(APT_INSTALL) pgbouncer || (apt-get update -q && $(APT_INSTALL) pgbouncer)) >/dev/null; \
	  else echo "*** pgbouncer is not installed: the PgBouncer tests will be skipped ***"; fi; \
	fi
	@if ! command -v ip >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    ($(APT_INSTALL) iproute2 || (apt-get update -q && $(APT_INSTALL) iproute2)) >/dev/null; \
	  else echo "*** iproute2 is not installed: the multi-host (network namespace) tests will be skipped ***"; fi; \
	fi
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q chromium chromium-driver || \
	     (apt-get update -q && apt-get install -y -q chromium chromium-driver)) >/dev/null; \
	  else echo "*** chromium/chromium-driver are not installed: the dashboard's browser tests will be skipped ***"; fi; \
	fi

# The suites that take FERROQ_TEST_PG_URL run under a throw-away PostgreSQL cluster (each its own).
PG_RUN := $(PYTHON) tests/pg_cluster.py run --

test-rust:
	$(PG_RUN) cargo test --quiet
	$(PG_RUN) $(PYTHON) tests/pgbouncer.py run -- cargo test --quiet store::postgres::conformance

test-python: build
	$(PG_RUN) $(PY) -m pytest -q

# Each benchmark once, as a test, so the suite never rots (figures come from `make bench`).
test-benches: build
	$(PG_RUN) $(PY) -m pytest -q benches --benchmark-disable

# An abi3 wheel (one file for CPython 3.10 and later) under dist/: `pip install dist/ferroq-*.whl`.
wheel: $(STAMP)
	rm -f dist/ferroq-*.whl
	$(VENV)/bin/maturin build --release --quiet -o dist

# The wheel installed into a fresh venv of the oldest and the newest Python we support (from
# pyenv, else pythonX.Y on PATH; a missing one is skipped, loudly), each running
# tests/wheel_smoke.py: enqueue, `ferroq worker --until-empty`, results read back.
SMOKE_PYTHONS ?= 3.10 3.13
wheel-smoke: wheel
	@for v in $(SMOKE_PYTHONS); do \
	  py=$$(ls -d $$HOME/.pyenv/versions/$$v.*/bin/python$$v 2>/dev/null | sort -V | tail -1); \
	  [ -n "$$py" ] || py=$$(command -v python$$v); \
	  if [ -z "$$py" ]; then echo "*** Python $$v not found (pyenv or PATH): wheel smoke test SKIPPED for it ***"; continue; fi; \
	  env=$$(mktemp -d); \
	  $$py -m venv $$env && $$env/bin/pip install --quiet --disable-pip-version-check dist/ferroq-*.whl && \
	    $$env/bin/python tests/wheel_smoke.py; rc=$$?; rm -rf $$env; \
	  if [ $$rc != 0 ]; then echo "wheel smoke test FAILED on Python $$v ($$py)"; exit 1; fi; \
	done

# Django 6 (django.tasks built in; it needs Python 3.12+): the wheel and Django 6 in a fresh
# venv of Python 3.12 (pyenv, else python3.12 on PATH; missing: skipped, loudly), running
# tests/django_smoke.py (the README's project, manage.py ferroq_worker, results read back).
# The suite itself tests the django-tasks backport on Django 5.2 (tests/test_django_backend.py).
DJANGO6_PYTHON ?= 3.12
django-smoke: wheel
	@v=$(DJANGO6_PYTHON); \
	py=$$(ls -d $$HOME/.pyenv/versions/$$v.*/bin/python$$v 2>/dev/null | sort -V | tail -1); \
	[ -n "$$py" ] || py=$$(command -v python$$v); \
	if [ -z "$$py" ]; then echo "*** Python $$v not found (pyenv or PATH): Django 6 smoke test SKIPPED ***"; exit 0; fi; \
	env=$$(mktemp -d); \
	$$py -m venv $$env && $$env/bin/pip install --quiet --disable-pip-version-check dist/ferroq-*.whl "django>=6,<7" && \
	  $$env/bin/python tests/django_smoke.py --expect django.tasks; rc=$$?; rm -rf $$env; \
	if [ $$rc != 0 ]; then echo "Django 6 smoke test FAILED on Python $$v ($$py)"; exit 1; fi

# Fails only on a large drop of a ratio to the raw SQLite ceiling (see benches/check_regression.py).
perf-check: build
	$(PY) benches/check_regression.py

# The asv suite on the package `make build` installed (asv can also build each commit: see
# benches/asv.conf.json).
bench-asv: build
	$(PIP) install --quiet asv
	cd benches && ../$(VENV)/bin/asv machine --yes >/dev/null && \
		../$(VENV)/bin/asv run --quick --environment existing:$(abspath $(PY)) --show-stderr

# Side by side with huey on SQLite, same machine, same run.
bench-huey: build
	$(PIP) install --quiet huey
	$(PY) benches/compare_huey.py

# PostgreSQL, one server, one run: the raw SQL ceiling, procrastinate and (once the engine lands)
# ferroq, 1 and 2 processes, on a throw-away cluster (or --url / $$FERROQ_TEST_PG_URL).
bench-pg: build
	$(PY) benches/pg_ceiling.py

# Figures: our rates next to raw SQLite in the same run, then the pytest-benchmark suite.
bench: build
	$(PY) -m ferroq.bench
	$(PY) -m pytest -q benches --benchmark-only --benchmark-columns=min,median,mean,ops

# Part of `make test`: the habits are checked, not hoped for.
lint: build
	cargo clippy --all-targets --features python -- -D warnings
	cargo fmt --check
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy

fmt:
	cargo fmt
	$(VENV)/bin/ruff format python tests benches

clean:
	rm -rf target $(VENV) python/ferroq/_core*.so
