# The two entry points of the README: `make demo` and `make test`.
# Both create the virtual environment on first use; nothing else needs to be set up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# System packages the tests use as real peers (pty pairs, an independent Modbus master, Node.js
# for the independent LwM2M peer, systemd-analyze to verify the unit; prlimit comes with
# util-linux, always installed), chromium for the web view's browser tests (tests/web: Playwright
# drives Debian's chromium through executable_path, it never downloads a browser).
SYSPKGS := socat mbpoll nodejs npm systemd mosquitto chromium
# npm packages the interop tests use as real peers (an independent LwM2M server and client),
# pinned by tests/interop_js/package-lock.json and installed into that folder only.
INTEROP_JS := tests/interop_js
INTEROP_STAMP := $(INTEROP_JS)/node_modules/.installed

.PHONY: demo test venv sysdeps interop-deps lint unit hil bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Installs missing Debian packages; needs root or sudo (CI and a fresh dev box run as root).
sysdeps:
	@missing=""; for p in $(SYSPKGS); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(INTEROP_STAMP): $(INTEROP_JS)/package.json $(INTEROP_JS)/package-lock.json
	cd $(INTEROP_JS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

interop-deps: sysdeps $(INTEROP_STAMP)

# Other ports when 5683/8080 are taken: make demo API_PORT=8081 COAP_PORT=5684, or FREE_PORTS=1.
demo: $(STAMP)
	$(BIN)/python -m tools.demo $(if $(API_PORT),--api-port $(API_PORT)) \
	  $(if $(COAP_PORT),--coap-port $(COAP_PORT)) $(if $(FREE_PORTS),--free-ports)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) sysdeps interop-deps lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info $(INTEROP_JS)/node_modules
