# Retry-and-backoff policy engine as a WASI component, plus its cpex host plugin.
# `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The newest gateway that installs on Python 3.11 pins cpex 0.1.3; newer ones use 0.1.4 (.venv).
VENV013 := .venv-cpex013
WASM_TARGET := wasm32-wasip2
WASM_BUILT  := target/$(WASM_TARGET)/release/retry_engine.wasm
WASM        := target/wasm/retry_engine.wasm
PKG_WASM    := host-python/src/cpex_retry_with_backoff_wasm/retry_engine.wasm
DIST        := dist
WASMTIME_CLI_VERSION := 48.0.8
CARGO_BIN   := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin

.PHONY: help install toolchain wasm venv smoke test test-rust test-wasm test-python test-python-cpex013 test-python-versions \
        lint fmt-check clippy ruff mypy bench size ci clean dist test-dist cli-test wasmtime-cli

help: ## Show this help.
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

install: toolchain wasm venv smoke ## Set up everything (rust target, .wasm, Python venv) and run a smoke check.

toolchain: ## Add the wasm32-wasip2 Rust target (rustup).
	rustup target add $(WASM_TARGET)

wasm: ## Build the release component to target/wasm/retry_engine.wasm (and into the Python package).
	cargo build -p retry-engine-guest --release --target $(WASM_TARGET)
	mkdir -p $(dir $(WASM))
	cp $(WASM_BUILT) $(WASM)
	cp $(WASM) $(PKG_WASM)
	@echo "built $(WASM): $$(stat -c %s $(WASM)) bytes"

# The wasmtime-py requirement host-python/pyproject.toml declares, and its lower bound.
WASMTIME_REQ = $(shell $(PYTHON) -c 'import tomllib; deps = tomllib.load(open("host-python/pyproject.toml", "rb"))["project"]["dependencies"]; print(next(d for d in deps if d.startswith("wasmtime")))')
WASMTIME_MIN = $(shell $(PYTHON) -c 'import re, sys; print(re.search(r">=\s*([0-9][0-9.]*)", sys.argv[1]).group(1))' '$(WASMTIME_REQ)')

venv: ## Create .venv with the host plugin (editable), its test/bench dependencies and the newest wasmtime-py allowed.
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e 'host-python[test]'
	$(PY) -m pip install --quiet --upgrade '$(WASMTIME_REQ)'

smoke: ## Load the plugin through the real cpex PluginManager and print a few decisions.
	$(PY) examples/smoke.py

test: test-rust test-wasm size test-python test-python-cpex013 test-python-versions soak-smoke cli-test test-dist test-e2e lint ## Run every test and lint.

test-rust: ## Unit tests of the pure policy core (native target).
	cargo test -p retry-engine-guest

test-wasm: wasm ## The wasmtime harness against the built .wasm.
	cargo test -p retry-engine-wasm-harness

test-python: wasm wasm-faulty ## pytest through the real cpex PluginManager and the built .wasm.
	$(PY) -m pytest tests/python -q

# The oldest dependencies the package declares, in one run: cpex 0.1.3 (what gateway 1.0.7 pins;
# the native plugin does not install beside it, so the differential is skipped) and the lower
# bound of the wasmtime-py range in host-python/pyproject.toml.
test-python-cpex013: wasm wasm-faulty ## pytest again under cpex 0.1.3 and the oldest wasmtime-py declared.
	test -x $(VENV013)/bin/python || $(PYTHON) -m venv $(VENV013)
	$(VENV013)/bin/python -m pip install --quiet 'cpex==0.1.3' 'wasmtime==$(WASMTIME_MIN)' pytest pytest-asyncio pyyaml -e host-python
	$(VENV013)/bin/python -c 'from importlib.metadata import version; print("cpex", version("cpex"), "wasmtime-py", version("wasmtime"))'
	$(VENV013)/bin/python -m pytest tests/python -q -p no:cacheprovider

# The newer Pythons the package supports (3.11 is .venv's): each gets its own venv in target/ with
# the package and its test dependencies (the native plugin too), the interpreter found by
# .ci/find-python (PATH, then pyenv). `make test-python-versions PYTHON_VERSIONS=3.13` runs one.
PYTHON_VERSIONS ?= 3.12 3.13
py_venv = target/venv-py$(1)
test-python-versions: wasm wasm-faulty ## pytest through cpex on Python 3.12 and 3.13 (PYTHON_VERSIONS).
	@failed=; for v in $(PYTHON_VERSIONS); do \
	    echo "== Python $$v"; venv=$(call py_venv,$$v); \
	    { test -x $$venv/bin/python || { py=$$(.ci/find-python $$v) && $$py -m venv $$venv; }; } \
	    && $$venv/bin/python -m pip install --quiet -e 'host-python[test]' \
	    && $$venv/bin/python -m pytest tests/python -q -p no:cacheprovider \
	    || failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-python-versions failed on Python$$failed" >&2; exit 1; fi

dist: wasm ## Wheel of host-python (bundling the .wasm) plus the standalone .wasm and its sha256, in dist/.
	rm -rf $(DIST) host-python/build
	$(PY) -m pip wheel --quiet --no-deps -w $(DIST) ./host-python
	cp $(WASM) $(DIST)/retry_engine.wasm
	cd $(DIST) && sha256sum retry_engine.wasm > retry_engine.wasm.sha256
	$(PY) tests/dist/check_dist.py $(DIST)

test-dist: dist ## Install the wheel into a fresh venv (no Rust) and load it through cpex's PluginManager.
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet $(DIST)/cpex_retry_with_backoff_wasm-*.whl \
	    'pytest>=8' 'pytest-asyncio>=0.23' 'pyyaml>=6'; \
	cd "$$tmp" && DIST_DIR='$(CURDIR)/$(DIST)' "$$tmp/venv/bin/python" -m pytest '$(CURDIR)/tests/dist' -q -p no:cacheprovider

# End to end: the real gateway with the wheel from dist/ and the native plugin of the same
# environment, against a flaky MCP server; everything on 127.0.0.1. One venv per gateway release in
# target/ (tests/e2e/setup-venv.sh names each release's gateway, native plugin and Python):
# 1.1 = 1.1.0 on Python 3.12, 1.0 = 1.0.7 on Python 3.11. `make test-e2e E2E_GATEWAYS=1.0` runs one.
E2E_GATEWAYS ?= 1.1 1.0
E2E_GATEWAY  ?= $(firstword $(E2E_GATEWAYS))
e2e_venv = target/e2e-venv-$(1)
.PHONY: demo test-e2e

test-e2e: dist ## The real gateways (1.1.0 and 1.0.7) retrying a flaky MCP server through this plugin and the native one.
	@failed=; for gw in $(E2E_GATEWAYS); do \
	    echo "== gateway $$gw"; \
	    tests/e2e/setup-venv.sh $$gw $(call e2e_venv,$$gw) $(DIST) \
	    && $(call e2e_venv,$$gw)/bin/python -m pytest tests/e2e -q -p no:cacheprovider \
	    || failed="$$failed $$gw"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-e2e failed on gateway(s):$$failed" >&2; exit 1; fi

demo: toolchain venv dist ## Start a flaky MCP server and the real gateway (E2E_GATEWAY, newest) with this plugin; trace a few calls.
	tests/e2e/setup-venv.sh $(E2E_GATEWAY) $(call e2e_venv,$(E2E_GATEWAY)) $(DIST)
	$(call e2e_venv,$(E2E_GATEWAY))/bin/python tests/e2e/demo.py

# Reliability (issue 7): the long property run of the pure core (proptest on the stable
# toolchain: cargo-fuzz needs nightly), the deliberately faulting build, and the soak.
FAULTY_WASM    := target/wasm/retry_engine_faulty.wasm
PROPTEST_CASES ?= 20000
SOAK_SECONDS   ?= 120
.PHONY: wasm-faulty fuzz soak soak-smoke

wasm-faulty: ## The fault-injection build (magic tool names trap/spin/leak) to target/wasm/retry_engine_faulty.wasm.
	cargo build -p retry-engine-guest --release --target $(WASM_TARGET) --features fault-injection \
	    --target-dir target/faulty
	mkdir -p $(dir $(FAULTY_WASM))
	cp target/faulty/$(WASM_TARGET)/release/retry_engine.wasm $(FAULTY_WASM)

fuzz: ## Long property run of the pure core: PROPTEST_CASES (20000) cases per property.
	PROPTEST_CASES=$(PROPTEST_CASES) cargo test -p retry-engine-guest --test properties

soak: wasm ## Soak through cpex's PluginManager: 10^6 unique ids, then SOAK_SECONDS (120) of mixed load.
	$(PY) bench/soak.py --seconds $(SOAK_SECONDS)

soak-smoke: wasm ## A few seconds of the soak (part of make test).
	$(PY) bench/soak.py --seconds 3 --exhaust 20000 --max-state-entries 5000 --reload-every 1

wasmtime-cli: ## Install the wasmtime CLI (pinned) with cargo, only when absent.
	@export PATH="$(CARGO_BIN):$$PATH"; command -v wasmtime >/dev/null || { \
	    echo "wasmtime CLI not found: cargo install --locked wasmtime-cli@$(WASMTIME_CLI_VERSION)" \
	         "takes ~15-20 min on a cold cache (once: it stays in $(CARGO_BIN))"; \
	    cargo install --locked wasmtime-cli@$(WASMTIME_CLI_VERSION); }; \
	printf 'using %s: ' "$$(command -v wasmtime)"; wasmtime --version

cli-test: wasm wasmtime-cli ## The real wasmtime CLI on the .wasm: version, configure, golden scenarios, limits.
	PATH="$(CARGO_BIN):$$PATH" $(PY) -m pytest tests/cli -q

lint: fmt-check clippy ruff mypy ## All linters.

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p retry-engine-guest --target $(WASM_TARGET) -- -D warnings

# Every Python folder; one configuration for all of them (ruff.toml).
PY_SOURCES := host-python tests/python bench examples tests/dist tests/cli tests/e2e
ruff:
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)

mypy:
	$(VENV)/bin/mypy --strict host-python/src/cpex_retry_with_backoff_wasm

# The bindings benchmark imports the gateway: it runs in the 1.1 e2e venv (with the wheel from dist/).
bench: wasm dist ## Benchmarks (hook vs native, metrics cost, cold start, memory, memory per bound team, throughput, size): writes docs/performance.md.
	tests/e2e/setup-venv.sh 1.1 $(call e2e_venv,1.1) $(DIST)
	$(PY) -m pip install --quiet 'matplotlib>=3.8'  # bench only (host-python[bench])
	$(PY) bench/report.py --out docs/performance.md

# Not a target: a guard against accidental bloat (a std build, a debug build, a stray dependency).
WASM_SIZE_LIMIT := 262144
size: wasm ## Print the size of the release .wasm; fail above WASM_SIZE_LIMIT (256 KiB).
	@size=$$(stat -c %s $(WASM)); echo "retry_engine.wasm: $$size bytes (limit $(WASM_SIZE_LIMIT))"; \
	test $$size -le $(WASM_SIZE_LIMIT) || { echo "the release component grew past $(WASM_SIZE_LIMIT) bytes" >&2; exit 1; }

ci: install test ## What .ci/run does.

clean:
	cargo clean
	rm -rf $(VENV) $(VENV013) $(PKG_WASM) dist
