"""Cut 64-bit ELF shared libraries down to what the dynamic loader maps (as ELFkickers' ``sstrip`` does).

    python3 sstrip.py LIBRARY.so ...      # prints the bytes each one lost

The Dockerfile runs it on pysimdjson's extension, whose wheel ships it with its debug information: 7.5 MB,
of which the loader maps 0.6 MB. Everything a program needs from a library at run time lies in the segments
its program headers list (code, data, the dynamic symbols and relocations); the section headers and the
sections outside those segments (debug information, the static symbol table) are for debuggers and linkers.
So the file is truncated after the last byte any segment covers and its section header table is dropped
(e_shoff, e_shnum, e_shstrndx set to 0): the mapped bytes are unchanged. The image build imports the module
afterwards, which fails the build if a library no longer loads.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path


def sstrip(path: Path) -> int:
    """Truncate ``path`` to its mapped segments; the number of bytes removed (0 when there was nothing to cut)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit(f"sstrip: {path} is not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    end = int(phoff + phentsize * phnum)
    for i in range(phnum):  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        _, _, offset, _, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        end = max(end, int(offset + filesz))
    if end >= len(data):
        return 0
    head = bytearray(data[:end])
    struct.pack_into("<Q", head, 0x28, 0)  # e_shoff: no section header table
    struct.pack_into("<HH", head, 0x3C, 0, 0)  # e_shnum, e_shstrndx
    path.write_bytes(bytes(head))
    return len(data) - end


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"sstrip: {name}: {sstrip(Path(name)):,} bytes cut")
