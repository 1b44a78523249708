"""Check ``make dist``'s output: exactly one wheel whose bundled ``retry_engine.wasm`` is
byte-identical to the standalone ``dist/retry_engine.wasm``, and a matching ``.sha256`` file.

Usage: ``python tests/dist/check_dist.py DIST_DIR``. Prints one line per artifact.
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

WHEEL_MEMBER = "cpex_retry_with_backoff_wasm/retry_engine.wasm"


def main(dist: Path) -> int:
    wheels = sorted(dist.glob("cpex_retry_with_backoff_wasm-*.whl"))
    if len(wheels) != 1:
        print(f"check_dist: expected one wheel in {dist}, found {[w.name for w in wheels]}")
        return 1
    with zipfile.ZipFile(wheels[0]) as zf:
        if WHEEL_MEMBER not in zf.namelist():
            print(f"check_dist: {wheels[0].name} does not contain {WHEEL_MEMBER}")
            return 1
        bundled = hashlib.sha256(zf.read(WHEEL_MEMBER)).hexdigest()
    wasm = dist / "retry_engine.wasm"
    standalone = hashlib.sha256(wasm.read_bytes()).hexdigest()
    recorded = (dist / "retry_engine.wasm.sha256").read_text().split()
    if bundled != standalone:
        print(f"check_dist: the wheel's .wasm ({bundled}) differs from {wasm} ({standalone})")
        return 1
    if recorded != [standalone, "retry_engine.wasm"]:
        print(f"check_dist: retry_engine.wasm.sha256 says {recorded}, the file is {standalone}")
        return 1
    print(f"{wheels[0]}: {wheels[0].stat().st_size} bytes, bundles {WHEEL_MEMBER}")
    print(f"{wasm}: {wasm.stat().st_size} bytes, sha256 {standalone}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
