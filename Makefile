# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NODE_STAMP := node_modules/.installed-stamp

HOST ?= 127.0.0.1
PORT ?= 8091
STATE_DIR ?= ./.agentkeys-dev

.PHONY: install system-tools run test soak lint bench lock clean

install: $(STAMP) $(NODE_STAMP) system-tools

# Debian packages the tests need, installed only when missing (one apt-get update first):
# chromium + chromium-driver for the operator page's browser test (Selenium uses /usr/bin/chromedriver).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-tools:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	test -x /usr/bin/chromedriver || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $$missing; \
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
	$(BIN)/agentkeys-broker dev --host $(HOST) --port $(PORT) --state-dir $(STATE_DIR)

test: install
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
