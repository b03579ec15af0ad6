# ferroq: `make demo` and `make test` work on a fresh machine with only the toolchain.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.deps-stamp

.PHONY: all build demo test test-rust test-python bench lint fmt clean

all: build

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "maturin>=1.7,<2" "orjson>=3.9" "pytest>=8" "pytest-timeout>=2.3" "mypy>=1.10"
	touch $(STAMP)

# Builds the Rust extension (release) into the venv as an editable install.
build: $(STAMP)
	$(VENV)/bin/maturin develop --release --quiet

demo: build
	$(PY) -m ferroq.demo

test: test-rust test-python

test-rust:
	cargo test --quiet

test-python: build
	$(PY) -m pytest -q

lint: build
	cargo clippy --all-targets --features python -- -D warnings
	$(VENV)/bin/mypy

fmt:
	cargo fmt

clean:
	rm -rf target $(VENV) python/ferroq/_core*.so
