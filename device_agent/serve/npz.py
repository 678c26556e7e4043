"""Reading ``.npz`` request bodies without trusting them: sizes checked before anything is decompressed.

A 1 MB archive can hold a gigabyte of zeros. ``np.load`` would inflate it before any check; here the
archive's directory and every member's ``.npy`` header are read first, the element count and the
decompressed bytes are checked against the agent's limits, and only then is each array
decompressed straight into a preallocated array, a megabyte at a time, stopping at the size its
header declared. A bomb costs a few kilobytes and a few milliseconds.
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import IO, NamedTuple

import numpy as np

from device_agent.contract.errors import InvalidInput, PayloadTooLarge
from device_agent.contract.types import Array

__all__ = ["MAX_MEMBERS", "load_npz", "save_npz"]

#: arrays an archive may hold (a model has a handful of inputs)
MAX_MEMBERS = 64
_CHUNK = 1 << 20
_EOCD = b"PK\x05\x06"


class _Member(NamedTuple):
    name: str  # the input it is for ("x" for "x.npy")
    dtype: np.dtype[np.generic]
    elements: int
    shape: tuple[int, ...]
    fortran: bool
    offset: int  # header bytes before the data


def load_npz(body: bytes | bytearray, *, max_elements: int, max_bytes: int) -> dict[str, Array]:
    """The arrays of an ``.npz`` body by name; over ``max_elements`` (all arrays together) or
    ``max_bytes`` decompressed: :class:`PayloadTooLarge` before anything is inflated."""
    _check_directory(body)
    try:
        zf = zipfile.ZipFile(io.BytesIO(body))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise _malformed(str(e)) from None
    with zf:
        members = [_member(zf, info) for info in zf.infolist()]
        elements = sum(m.elements for m in members)
        nbytes = sum(m.elements * m.dtype.itemsize for m in members)
        if elements > max_elements or nbytes > max_bytes:
            raise PayloadTooLarge(
                f"the .npz archive holds {elements:,} elements ({nbytes:,} bytes) once decompressed; this agent accepts at most "
                f"{max_elements:,} elements ([api] max_elements) and {max_bytes:,} bytes ([api] max_body_bytes). Split the batch.",
                kind="too_large", expected=f"≤ {max_elements} elements", given=str(elements))
        return {m.name: _read_member(zf, info, m) for info, m in zip(zf.infolist(), members, strict=True)}


def _check_directory(body: bytes | bytearray) -> None:
    """The end-of-directory record's member count, before zipfile builds an object per member."""
    at = body.rfind(_EOCD, max(0, len(body) - 65_557))
    if at < 0 or at + 22 > len(body):
        raise _malformed("no zip end-of-directory record (not a zip archive, or truncated)")
    (count,) = struct.unpack_from("<H", body, at + 10)
    if count > MAX_MEMBERS:
        raise InvalidInput(f"the .npz archive holds {count} members; at most {MAX_MEMBERS} (one per model input)", kind="malformed",
                           expected=f"≤ {MAX_MEMBERS} arrays", given=str(count))


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    """One member's name, dtype and size, from its first bytes (nothing else is inflated)."""
    name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
    try:
        with zf.open(info) as f:
            shape, fortran, dtype = _read_header(f)
            offset = f.tell()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError) as e:
        raise _malformed(f"member {info.filename!r}: {e}") from None
    count = 1
    for d in shape:
        count *= int(d)
    if info.file_size != offset + count * dtype.itemsize:
        raise _malformed(f"member {info.filename!r} declares {info.file_size:,} bytes but its header says {list(shape)} {dtype}")
    return _Member(name, dtype, count, tuple(int(d) for d in shape), bool(fortran), offset)


def _read_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype[np.generic]]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    return shape, fortran, dtype


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, m: _Member) -> Array:
    out = np.empty(m.elements, dtype=m.dtype)
    view = out.reshape(-1).view(np.uint8)
    try:
        with zf.open(info) as f:
            f.read(m.offset)
            done = 0
            while done < len(view):  # inflated a megabyte at a time, never past the declared size
                chunk = f.read(min(_CHUNK, len(view) - done))
                if not chunk:
                    raise ValueError(f"member {info.filename!r} ends after {done:,} of {len(view):,} data bytes")
                view[done:done + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                done += len(chunk)
            if f.read(1):
                raise ValueError(f"member {info.filename!r} holds more data than its header declares")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise _malformed(str(e)) from None
    return out.reshape(m.shape, order="F" if m.fortran else "C")


def _malformed(detail: str) -> InvalidInput:
    return InvalidInput(f"the body is not a readable .npz archive: {detail}", kind="malformed")


def save_npz(arrays: dict[str, Array]) -> bytes:
    """Arrays as an uncompressed ``.npz`` (the answer to ``Accept: application/x-npz``)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # output names, not savez's own keywords
    return buf.getvalue()
