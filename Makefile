# Retry-and-backoff policy engine as a WASI component, plus its cpex host plugin.
# `make help` lists the targets; `make check` is the inner loop, `make test` runs everything.

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
FAULTY_WASM := target/wasm/retry_engine_faulty.wasm
DIST        := dist
WASMTIME_CLI_VERSION := 48.0.8
CARGO_BIN   := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin

.PHONY: help install toolchain wasm wasm-faulty venv smoke \
        check check-lane-rust check-lane-python test test-lane-rust test-lane-cli test-lane-python \
        test-rust test-wasm test-python test-python-core test-python-cpex013 test-python-versions \
        test-cli wasmtime-cli dist test-dist test-e2e demo soak-smoke soak fuzz \
        lint fmt-check clippy ruff mypy size bench timing ci clean

help: ## Show this help.
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

install: toolchain wasm venv smoke ## Set up everything (rust target, .wasm, Python venv) and run a smoke check.

toolchain: ## Add the wasm32-wasip2 Rust target (rustup).
	rustup target add $(WASM_TARGET)

# --------------------------------------------------------------------------- the component
# File targets, so that steps running side by side (make test) never start cargo on target/
# for a component that is already built: cargo holds one lock on target/ for every build.
GUEST_SOURCES := $(shell find guest wit -type f) Cargo.toml Cargo.lock

$(WASM): $(GUEST_SOURCES)
	cargo build -p retry-engine-guest --release --target $(WASM_TARGET)
	mkdir -p $(dir $(WASM))
	cp $(WASM_BUILT) $(WASM)

$(PKG_WASM): $(WASM)
	cp $(WASM) $(PKG_WASM)

wasm: $(WASM) $(PKG_WASM) ## Build the release component to target/wasm/retry_engine.wasm (and into the Python package).
	@echo "built $(WASM): $$(stat -c %s $(WASM)) bytes"

# The fault-injection build (magic tool names trap/spin/leak), for the host's fault tests.
$(FAULTY_WASM): $(GUEST_SOURCES)
	cargo build -p retry-engine-guest --release --target $(WASM_TARGET) --features fault-injection \
	    --target-dir target/faulty
	mkdir -p $(dir $(FAULTY_WASM))
	cp target/faulty/$(WASM_TARGET)/release/retry_engine.wasm $(FAULTY_WASM)

wasm-faulty: $(FAULTY_WASM) ## The fault-injection build to target/wasm/retry_engine_faulty.wasm.

# Not a target: a guard against accidental bloat (a std build, a debug build, a stray dependency).
# Raised from 256 KiB with contract 0.5 (issue 23), whose engine holds every policy of a process,
# its contexts and a streaming snapshot reader: ~269 KB then, so a stray dependency still trips it.
WASM_SIZE_LIMIT := 294912
size: wasm ## Print the size of the release .wasm; fail above WASM_SIZE_LIMIT (288 KiB).
	@size=$$(stat -c %s $(WASM)); echo "retry_engine.wasm: $$size bytes (limit $(WASM_SIZE_LIMIT))"; \
	test $$size -le $(WASM_SIZE_LIMIT) || { echo "the release component grew past $(WASM_SIZE_LIMIT) bytes" >&2; exit 1; }

# ------------------------------------------------------------------------------ Python venvs
# The wasmtime-py requirement host-python/pyproject.toml declares, and its lower bound.
WASMTIME_REQ = $(shell $(PYTHON) -c 'import tomllib; deps = tomllib.load(open("host-python/pyproject.toml", "rb"))["project"]["dependencies"]; print(next(d for d in deps if d.startswith("wasmtime")))')
WASMTIME_MIN = $(shell $(PYTHON) -c 'import re, sys; print(re.search(r">=\s*([0-9][0-9.]*)", sys.argv[1]).group(1))' '$(WASMTIME_REQ)')
# Every venv gets a current pip first: the package's metadata (an SPDX license) needs
# setuptools >= 77, which pip fetches into its isolated build environment.
PIP_UP := -m pip install --quiet --upgrade pip
# Prints the versions a pytest run uses, so a log says what was tested (the README's table
# names no version figures that would go stale).
VERSIONS := -c 'import sys; from importlib.metadata import version as v; print("Python", sys.version.split()[0], "cpex", v("cpex"), "wasmtime-py", v("wasmtime"))'

venv: ## Create .venv with the host plugin (editable), its test/bench dependencies and the newest wasmtime-py allowed.
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP_UP)
	$(PY) -m pip install --quiet -e 'host-python[test]'
	$(PY) -m pip install --quiet --upgrade '$(WASMTIME_REQ)'

smoke: ## Load the plugin through the real cpex PluginManager and print a few decisions.
	$(PY) examples/smoke.py

# -------------------------------------------------------------------------------- make test
# Timing (bench/timing.py): every step of `make test` and `make check` appends its wall and CPU
# time to TIMING_LOG; `make timing` writes docs/timing.md from those logs.
TIMING_LOG ?= target/timing/$(firstword $(MAKECMDGOALS)).jsonl
TIMED = $(PYTHON) bench/timing.py step $(TIMING_LOG)
TIMING_BEGIN = $(if $(TIMING_NESTED),,$(PYTHON) bench/timing.py begin $(TIMING_LOG) --run 'make $@' --context '$(or $(TIMING_CONTEXT),$(CURDIR))')
TIMING_END   = $(if $(TIMING_NESTED),,$(PYTHON) bench/timing.py end $(TIMING_LOG))
export TIMING_LOG
SUBMAKE = $(MAKE) --no-print-directory TIMING_NESTED=1

# `make test` runs its steps in three lanes side by side (make -j3, each lane's steps one after
# another; the output of each step is printed whole when it ends). Measured on 2 cores
# (docs/timing.md): the Rust lane and the wasmtime CLI build are CPU-bound for most of the run
# and the Python lane waits on pip and the gateways for much of its time, so three lanes keep
# both cores busy. The Rust steps share one lane because cargo holds one lock on target/.
# TEST_JOBS=1 runs the lanes one after another.
TEST_JOBS ?= 3
test: ## Run every test and lint: Rust, the harness, pytest on every supported combination, the CLI, the wheel, the gateways.
	@$(TIMING_BEGIN)
	+$(TIMED) build-component -- $(SUBMAKE) -j2 --output-sync=target wasm wasm-faulty
	+$(SUBMAKE) -j$(TEST_JOBS) --output-sync=target test-lane-rust test-lane-cli test-lane-python
	@$(TIMING_END)

test-lane-rust: ## (part of make test) Unit tests, the harness, size, rustfmt and clippy, one after another.
	+$(TIMED) test-rust -- $(SUBMAKE) test-rust
	+$(TIMED) test-wasm -- $(SUBMAKE) test-wasm
	+$(TIMED) size -- $(SUBMAKE) size
	+$(TIMED) fmt-check+clippy -- $(SUBMAKE) fmt-check clippy

test-lane-cli: ## (part of make test) Install the wasmtime CLI when absent, then run the CLI tests.
	+$(TIMED) wasmtime-cli -- $(SUBMAKE) wasmtime-cli
	+$(TIMED) test-cli -- $(SUBMAKE) test-cli

# The gateways come right after the main pytest pass: they spend much of their time in pip and in
# waiting on servers, which overlaps the Rust lanes' builds (run last, they were the run's tail).
test-lane-python: ## (part of make test) pytest on every combination, the gateways, the wheel, the soak, ruff and mypy.
	+$(TIMED) test-python -- $(SUBMAKE) test-python
	+$(TIMED) test-e2e -- $(SUBMAKE) test-e2e
	+$(TIMED) test-dist -- $(SUBMAKE) test-dist
	+$(TIMED) test-python-cpex013 -- $(SUBMAKE) test-python-cpex013
	+$(TIMED) test-python-versions -- $(SUBMAKE) test-python-versions
	+$(TIMED) soak-smoke -- $(SUBMAKE) soak-smoke
	+$(TIMED) ruff+mypy -- $(SUBMAKE) ruff mypy

# `make check`: the inner loop on a warm tree, two lanes side by side.
check: ## Inner loop: unit tests, the harness, the core pytest modules (PY_CORE) and the linters.
	@$(TIMING_BEGIN)
	+$(TIMED) build-component -- $(SUBMAKE) -j2 --output-sync=target wasm wasm-faulty
	+$(SUBMAKE) -j2 --output-sync=target check-lane-rust check-lane-python
	@$(TIMING_END)

check-lane-rust: ## (part of make check) Unit tests, the harness, rustfmt and clippy, one after another.
	+$(TIMED) test-rust -- $(SUBMAKE) test-rust
	+$(TIMED) test-wasm -- $(SUBMAKE) test-wasm
	+$(TIMED) fmt-check+clippy -- $(SUBMAKE) fmt-check clippy

check-lane-python: ## (part of make check) The core pytest modules, ruff and mypy.
	+$(TIMED) test-python-core -- $(SUBMAKE) test-python-core
	+$(TIMED) ruff+mypy -- $(SUBMAKE) ruff mypy

# MAKEFLAGS emptied: under make test's lanes it names a jobserver that these recipes (not `+`
# lines) are not handed, and rustdoc warns that it cannot open it; cargo runs its own jobs anyway.
test-rust: ## Unit tests of the pure policy core (native target).
	MAKEFLAGS= cargo test -p retry-engine-guest

test-wasm: wasm ## The wasmtime harness against the built .wasm.
	MAKEFLAGS= cargo test -p retry-engine-wasm-harness

# ------------------------------------------------------------------------------ pytest matrix
# tests/python runs in full once, on .venv (Python 3.11, cpex 0.1.4, the newest wasmtime-py
# allowed). The other supported combinations run the modules whose outcome can differ there:
#
# * PY_ISOLATED: test_metrics.py scrapes prometheus_client's process-wide default registry, which
#   keeps every series that any earlier module's plugin objects created. Measured in one process
#   (--durations) before label values were bounded (issue 24 §3): the series test_bounds.py left
#   (label values of 16 MiB tool names) made each scrape parse ~180 MB, and test_metrics.py took
#   640 s of a 714 s run against 21 s on its own. It runs in a pytest process of its own,
#   everywhere, so that its scrapes see only its own series.
# * PY_WASMTIME: what touches wasmtime-py's surface: loading and reflecting the component, the
#   lean call path's C declarations, compiled-component serialization, traps, fuel and memory
#   limits, Store and instance lifecycles, reload.
# * PY_CPEX: what goes through a cpex API: the PluginManager and its hook policies, payload,
#   context and extension types, result builders, cpex's settings (the ceiling).
# * PY_INTERPRETER: what the interpreter can change: ctypes/cffi calls (fastcall, instance,
#   handles), asyncio hooks (plugin), threads against one Store (model_concurrency,
#   shortcut_race, policy_sharing), weakrefs and gc (policy_sharing, fault_state, one_instance),
#   fork and multiprocess metrics, recursion and str/surrogate edge cases (hostile, bounds),
#   pydantic's validation (model).
# Left out of the other combinations, run on the main pass only: test_differential.py (this
# plugin's decisions against the native plugin's: both come from code no combination changes,
# the guest and the native plugin; skipped under cpex 0.1.3, where the native plugin does not
# install), test_wire.py (constants checked against the WIT files), test_signals.py, test_keys.py,
# test_idempotency.py, test_tool_record.py, test_resilience.py, test_results.py (the host's
# pure-Python reading of results and contexts, whose cpex types PY_CPEX covers), test_reload.py, test_shapes.py,
# test_wasm_file.py, test_faults.py, test_compile_cache.py (on 3.12/3.13: wasmtime-py is the
# same package there, and the cache's file handling uses os calls no supported Python changed).
# (test_one_instance.py is the process's one instance of issue 23: lifecycles, reload, builds
# dropped in, ages on the production clock; it runs wherever wasmtime-py or the interpreter differ.)
# Measured per module on .venv (--durations=0, all but test_metrics.py: 87 s, before contract
# 0.5): test_compile_cache 26 s, test_engine (now test_instance) 16 s, test_loader 9 s,
# test_fastcall 7 s, test_hostile 7 s, the rest < 4 s each.
PY_ISOLATED    := test_metrics.py
PY_WASMTIME    := test_loader.py test_fastcall.py test_instance.py test_handles.py test_compile_cache.py \
                  test_faults.py test_fault_state.py test_reload.py test_shapes.py test_wasm_file.py \
                  test_policy_sharing.py test_one_instance.py test_fuel_bounds.py test_memory_bounds.py
PY_CPEX        := test_plugin.py test_ceiling.py test_results.py test_resilience.py test_idempotency.py \
                  test_keys.py test_policy_sharing.py
PY_INTERPRETER := test_fastcall.py test_instance.py test_handles.py test_loader.py test_plugin.py \
                  test_model_concurrency.py test_shortcut_race.py test_policy_sharing.py test_fault_state.py \
                  test_hostile.py test_bounds.py test_model.py test_one_instance.py
# `make check`'s modules: the plugin through cpex, the instance, the lean path, the loader, the model.
PY_CORE        := test_plugin.py test_instance.py test_one_instance.py test_fastcall.py test_loader.py \
                  test_model.py test_wire.py

py_paths = $(addprefix tests/python/,$(sort $(1)))
# pytest on $(1) (a python), first every module but PY_ISOLATED in one process, then those.
pytest_all = $(1) $(VERSIONS) && $(1) -m pytest tests/python -q -p no:cacheprovider \
    $(addprefix --ignore=tests/python/,$(PY_ISOLATED)) && $(1) -m pytest $(call py_paths,$(PY_ISOLATED)) -q -p no:cacheprovider
# pytest on $(1) with the modules $(2), PY_ISOLATED in its own process.
pytest_some = $(1) $(VERSIONS) && $(1) -m pytest $(call py_paths,$(filter-out $(PY_ISOLATED),$(2))) -q -p no:cacheprovider \
    && $(1) -m pytest $(call py_paths,$(PY_ISOLATED)) -q -p no:cacheprovider

test-python: $(PKG_WASM) $(FAULTY_WASM) ## Every pytest module through the real cpex PluginManager and the built .wasm (.venv).
	$(call pytest_all,$(PY))

test-python-core: $(PKG_WASM) $(FAULTY_WASM) ## The core pytest modules of make check (PY_CORE), on .venv.
	$(PY) -m pytest $(call py_paths,$(PY_CORE)) -q -p no:cacheprovider

# The oldest dependencies the package declares, in one run: cpex 0.1.3 (what gateway 1.0.7 pins)
# and the lower bound of the wasmtime-py range in host-python/pyproject.toml.
test-python-cpex013: $(PKG_WASM) $(FAULTY_WASM) ## pytest (PY_WASMTIME, PY_CPEX, metrics) under cpex 0.1.3 and the oldest wasmtime-py declared.
	test -x $(VENV013)/bin/python || $(PYTHON) -m venv $(VENV013)
	$(VENV013)/bin/python $(PIP_UP)
	$(VENV013)/bin/python -m pip install --quiet 'cpex==0.1.3' 'wasmtime==$(WASMTIME_MIN)' pytest pytest-asyncio pyyaml -e host-python
	$(call pytest_some,$(VENV013)/bin/python,$(PY_WASMTIME) $(PY_CPEX) $(PY_ISOLATED))

# The newer Pythons the package supports (3.11 is .venv's): each gets its own venv in target/ with
# the package and its test dependencies (cpex 0.1.4, the newest wasmtime-py allowed), the
# interpreter found by .ci/find-python (PATH, then pyenv). `make test-python-versions
# PYTHON_VERSIONS=3.13` runs one.
PYTHON_VERSIONS ?= 3.12 3.13
py_venv = target/venv-py$(1)
test-python-versions: $(PKG_WASM) $(FAULTY_WASM) ## pytest (PY_INTERPRETER, metrics) on Python 3.12 and 3.13 (PYTHON_VERSIONS).
	@failed=; for v in $(PYTHON_VERSIONS); do \
	    echo "== Python $$v"; venv=$(call py_venv,$$v); \
	    { test -x $$venv/bin/python || { py=$$(.ci/find-python $$v) && $$py -m venv $$venv; }; } \
	    && $$venv/bin/python $(PIP_UP) \
	    && $$venv/bin/python -m pip install --quiet -e 'host-python[test]' \
	    && $$venv/bin/python -m pip install --quiet --upgrade '$(WASMTIME_REQ)' \
	    && $(call pytest_some,$$venv/bin/python,$(PY_INTERPRETER) $(PY_ISOLATED)) \
	    || failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-python-versions failed on Python$$failed" >&2; exit 1; fi

# --------------------------------------------------------------------- the wheel, the gateways
dist: wasm ## Wheel of host-python (bundling the .wasm) plus the standalone .wasm and its sha256, in dist/.
	rm -rf $(DIST) host-python/build
	$(PY) -m pip wheel --quiet --no-deps -w $(DIST) ./host-python
	cp $(WASM) $(DIST)/retry_engine.wasm
	cd $(DIST) && sha256sum retry_engine.wasm > retry_engine.wasm.sha256
	$(PY) tests/dist/check_dist.py $(DIST)

test-dist: dist ## Install the wheel into a fresh venv (no Rust) and load it through cpex's PluginManager.
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" $(PIP_UP); \
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

# ------------------------------------------------------------------------------- the wasmtime CLI
# Installed only when absent, into CARGO_BIN, with the features the CLI tests use (`wasmtime run
# --invoke` and -W limits) and the dev profile with optimised Cranelift (what this workspace's
# harness builds with). Measured on 2 cores, in CPU time: the default features in release 18 min
# wall; these features in release 15.6 CPU-min; in this profile 11.3 CPU-min, and the 54 CLI tests
# pass on it in under a minute. Building it inside the workspace to share Cranelift with the
# harness does not pay: its features differ from the harness's, so cargo rebuilt every shared
# crate (98 of them) anyway. Any wasmtime on PATH or in CARGO_BIN is used as is (`WASMTIME=` picks one).
WASMTIME_CLI_FEATURES := run,component-model,cranelift,parallel-compilation
WASMTIME_CLI_PROFILE := --debug --config profile.dev.debug=0 \
    $(foreach p,cranelift-codegen wasmtime-internal-cranelift regalloc2,--config 'profile.dev.package.$(p).opt-level=2')
wasmtime-cli: ## Install the wasmtime CLI (pinned) with cargo, only when absent.
	@export PATH="$(CARGO_BIN):$$PATH"; command -v wasmtime >/dev/null || { \
	    echo "wasmtime CLI not found: installing wasmtime-cli@$(WASMTIME_CLI_VERSION) with cargo" \
	         "(~6 min on 2 free cores; once: it stays in $(CARGO_BIN))"; \
	    cargo install --locked wasmtime-cli@$(WASMTIME_CLI_VERSION) --no-default-features \
	        --features $(WASMTIME_CLI_FEATURES) $(WASMTIME_CLI_PROFILE); }; \
	printf 'using %s: ' "$$(command -v wasmtime)"; wasmtime --version

test-cli: $(WASM) wasmtime-cli ## The real wasmtime CLI on the .wasm: version, configure, golden scenarios, limits.
	PATH="$(CARGO_BIN):$$PATH" $(PY) -m pytest tests/cli -q -p no:cacheprovider

# ------------------------------------------------------------------------------- reliability
# The long property run of the pure core (proptest on the stable toolchain: cargo-fuzz needs
# nightly), and the soak.
PROPTEST_CASES ?= 20000
SOAK_SECONDS   ?= 120

fuzz: ## Long property run of the pure core: PROPTEST_CASES (20000) cases per property.
	PROPTEST_CASES=$(PROPTEST_CASES) cargo test -p retry-engine-guest --test properties

soak: wasm ## Soak through cpex's PluginManager: 10^6 unique ids, then SOAK_SECONDS (120) of mixed load.
	$(PY) bench/soak.py --seconds $(SOAK_SECONDS)

soak-smoke: $(PKG_WASM) ## A few seconds of the soak (part of make test).
	$(PY) bench/soak.py --seconds 3 --exhaust 20000 --max-state-entries 5000 --reload-every 1

# ------------------------------------------------------------------------------------ linters
lint: fmt-check clippy ruff mypy ## All linters.

fmt-check: ## rustfmt, checking only.
	cargo fmt --all -- --check

clippy: ## clippy on every crate and target, and on the guest for wasm32-wasip2; warnings are errors.
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p retry-engine-guest --target $(WASM_TARGET) -- -D warnings

# Every Python folder; one configuration for all of them (ruff.toml).
PY_SOURCES := host-python tests/python bench examples tests/dist tests/cli tests/e2e
ruff: ## ruff check and ruff format --check on every Python folder.
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)

mypy: ## mypy --strict on the host package.
	$(VENV)/bin/mypy --strict host-python/src/cpex_retry_with_backoff_wasm

# ---------------------------------------------------------------------------------- figures
# The bindings benchmark imports the gateway: it runs in the 1.1 e2e venv (with the wheel from dist/).
bench: wasm dist ## Benchmarks (hook vs native, metrics cost, cold start, memory, memory per bound team, throughput, size): writes docs/performance.md.
	tests/e2e/setup-venv.sh 1.1 $(call e2e_venv,1.1) $(DIST)
	$(PY) -m pip install --quiet 'matplotlib>=3.8'  # bench only (host-python[bench])
	$(PY) bench/report.py --out docs/performance.md

# The fresh clone's log comes from a CI run: `CI=true bash .ci/run` in a clone writes its
# target/timing/ci.jsonl; `make timing TIMING_CI_LOG=<clone>/target/timing/ci.jsonl`.
TIMING_CI_LOG ?= target/timing/ci.jsonl
timing: ## Time make check here, then write docs/timing.md (and the README's line) from it and TIMING_CI_LOG.
	$(MAKE) --no-print-directory check TIMING_LOG=target/timing/check.jsonl \
	    TIMING_CONTEXT='make check on a warm tree (everything built, venvs present)'
	$(PYTHON) bench/timing.py report --ci $(TIMING_CI_LOG) --check target/timing/check.jsonl \
	    --out docs/timing.md --readme README.md

ci: install test ## What .ci/run does.

clean: ## Remove target/, the venvs, the bundled .wasm and dist/.
	cargo clean
	rm -rf $(VENV) $(VENV013) $(PKG_WASM) $(DIST)
