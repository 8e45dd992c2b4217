# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NODE_STAMP := node_modules/.installed-stamp

HOST ?= 127.0.0.1
PORT ?= 8091
STATE_DIR ?= ./.agentkeys-dev

.PHONY: install apt-tools run test soak lint bench lock clean

install: $(STAMP) $(NODE_STAMP) apt-tools

# Debian packages the tests use, installed when missing (one `apt-get update` first): package:binary.
# chromium + chromium-driver: the browser tests (Selenium uses /usr/bin/chromedriver); awscli: credential_process tests
APT_TOOLS := awscli:/usr/bin/aws chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver
apt-tools:
	@missing=""; for t in $(APT_TOOLS); do test -x "$${t#*:}" || missing="$$missing $${t%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y $$missing; \
	fi

# Python: a venv with the pinned dependency set (constraints.txt is the lock).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
	touch $@

# Node: anvil (its binary ships in the optional dependency, so never --omit=optional) and solc-js.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --prefer-offline
	touch $@

run: install
	@echo "make run: the broker on http://$(HOST):$(PORT) with a local chain (anvil) and a local AWS (moto),"
	@echo "          state in $(STATE_DIR); Ctrl-C stops them all. First run, in another terminal:"
	@echo "          $(BIN)/agentkeys-broker demo --state-dir $(STATE_DIR)"
	$(BIN)/agentkeys-broker dev --host $(HOST) --port $(PORT) --state-dir $(STATE_DIR)

# Lint and type errors fail the build before any test runs.
test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not soak"

# The fault soak of issue 12 (a few minutes; real serve, moto and anvil; faults by signal): not part of
# `make test`. Prints its figures (SOAK FIGURES ...); SOAK_SEED=N replays one fault schedule.
soak: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -s -m soak tests/integration/test_soak.py

# Static checks: ruff (E, F, W, I, B, UP, S) on the tree, mypy (strict on ledger/, default on the
# other packages; tests are not type-checked). Settings in pyproject.toml.
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m tests.bench --out docs/benchmarks.md

# Re-resolve the pinned set after changing pyproject.toml bounds.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --disable-pip-version-check -q '.[dev]'
	.lock-venv/bin/pip freeze --exclude agentkeys-broker > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) node_modules .pytest_cache
