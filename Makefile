# Two commands: `make run` starts the embedded default, `make test` runs the suite.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench clean browsers

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Baton needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/baton dev

test: $(STAMP) browsers
	$(BIN)/python -m pytest

# The page tests drive Debian's chromium and firefox-esr with Playwright (no browser download), and the store's tests
# start a throwaway PostgreSQL (devkit/postgres.py): all three installed from Debian's packages when missing (as
# root, or with password-less sudo), in one apt-get.
CHROMIUM := /usr/bin/chromium
FIREFOX := /usr/bin/firefox-esr
browsers:
	@missing=; test -x $(CHROMIUM) || missing=chromium; \
	test -x $(FIREFOX) || missing="$${missing:+$$missing }firefox-esr"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$${missing:+$$missing }postgresql"; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "make test: the page and store tests need Debian's $$missing: run 'sudo apt-get install -y $$missing'" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; }

bench: $(STAMP)
	$(BIN)/python -m bench.throughput

clean:
	rm -rf $(VENV) .baton .pytest_cache
