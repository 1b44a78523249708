"""Copy a WebAssembly component without its custom sections (the release build's last step).

`wasm-component-ld` always writes a `component-name` section (names for debugging, ~2 KB of a
~65 KB component) and the toolchain a `producers` section in the component and in its core
module; the release build needs neither, and `cargo`'s `strip` does not reach them.  Every
other section is copied byte for byte, nested core modules and components included, so the
result instantiates and behaves exactly as the input.

Usage: python3 strip_custom_sections.py IN.wasm OUT.wasm   (standard library only)
"""

from __future__ import annotations

import sys

CUSTOM = 0
CORE_MODULE = 1  # in a component
COMPONENT = 4  # a nested component
PREAMBLE = 8  # magic + version/layer


def read_u32(data: bytes, pos: int) -> tuple[int, int]:
    """A LEB128 u32 at ``pos``: (value, position after it)."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise ValueError(f"malformed LEB128 at byte {pos}")


def write_u32(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def strip(binary: bytes, *, component: bool) -> bytes:
    """``binary`` (a module or component) without custom sections, at any depth."""
    if binary[:4] != b"\0asm":
        raise ValueError("not a WebAssembly binary")
    out = bytearray(binary[:PREAMBLE])
    pos = PREAMBLE
    while pos < len(binary):
        section_id = binary[pos]
        size, start = read_u32(binary, pos + 1)
        end = start + size
        if end > len(binary):
            raise ValueError(f"section {section_id} at byte {pos} runs past the end")
        body = binary[start:end]
        if component and section_id == CORE_MODULE:
            body = strip(body, component=False)
        elif component and section_id == COMPONENT:
            body = strip(body, component=True)
        if section_id != CUSTOM:
            out += bytes([section_id]) + write_u32(len(body)) + body
        pos = end
    return bytes(out)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        binary = f.read()
    # A component's preamble has layer 1 (bytes 6..8); a core module's has 0.
    stripped = strip(binary, component=binary[6:8] == b"\x01\x00")
    with open(argv[2], "wb") as f:
        f.write(stripped)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
