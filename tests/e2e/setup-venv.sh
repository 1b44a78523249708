#!/usr/bin/env bash
# Create/refresh the venv of one gateway release: the real gateway, the native plugin of that
# environment (for the comparison) and this project's wheel from dist/ (build it first: `make dist`).
# Usage: setup-venv.sh GATEWAY VENV DIST, GATEWAY one of the releases below.
set -euo pipefail
gw=$1 venv=$2 dist=$3
case $gw in
    # The newest gateway: cpex 0.1.4 and mcp 2.x, Python >= 3.12; its `plugins` extra names the
    # native plugin 0.3.11.
    1.1) python_version=3.12
         gateway='mcp-contextforge-gateway==1.1.0'
         native='cpex-retry-with-backoff==0.3.11' ;;
    # The newest gateway that installs on Python 3.11; it pins cpex 0.1.3 and mcp<2. 0.3.10 is the
    # newest native plugin that installs beside it (0.3.11 needs cpex 0.1.4 and mcp 2).
    1.0) python_version=3.11
         gateway='mcp-contextforge-gateway==1.0.7.post20260921'
         native='cpex-retry-with-backoff==0.3.10' ;;
    *) echo "setup-venv.sh: unknown gateway release '$gw' (known: 1.1, 1.0)" >&2; exit 2 ;;
esac
shopt -s nullglob
wheels=("$dist"/cpex_retry_with_backoff_wasm-*.whl)
[ ${#wheels[@]} -eq 1 ] || { echo "expected one wheel in $dist/ (make dist), found ${#wheels[@]}" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
# A venv left from another Python (the release moved on) is made anew.
if [ -x "$venv/bin/python" ] && [ "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$python_version" ]; then
    rm -rf "$venv"
fi
if ! [ -x "$venv/bin/python" ]; then
    python=$("$here/../../.ci/find-python" "$python_version")
    "$python" -m venv "$venv"
fi
# pytest-asyncio although tests/e2e has no async test: the repository's one pytest.ini sets its options.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$gateway" "$native" \
    'pytest>=8' 'pytest-asyncio>=0.23' "${wheels[0]}"
# Same version number, new build: replace the installed copy with this wheel.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "${wheels[0]}"
