#!/usr/bin/env bash
# Create/refresh the e2e venv: the real gateway, the native plugin (for the comparison) and this
# project's wheel from dist/ (build it first: `make dist`). Usage: setup-venv.sh VENV PYTHON DIST
set -euo pipefail
venv=$1 python=$2 dist=$3
# The newest gateway that installs on Python 3.11; it pins cpex 0.1.3 and mcp<2. 0.3.10 is the
# newest native plugin that installs beside it (0.3.11 needs cpex 0.1.4 and mcp 2).
gateway='mcp-contextforge-gateway==1.0.7.post20260921'
native='cpex-retry-with-backoff==0.3.10'
shopt -s nullglob
wheels=("$dist"/cpex_retry_with_backoff_wasm-*.whl)
[ ${#wheels[@]} -eq 1 ] || { echo "expected one wheel in $dist/ (make dist), found ${#wheels[@]}" >&2; exit 1; }
test -x "$venv/bin/python" || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$gateway" "$native" 'pytest>=8' "${wheels[0]}"
# Same version number, new build: replace the installed copy with this wheel.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "${wheels[0]}"
