"""Writing a bundle archive: private from its first byte, and never through a name someone else chose.

The archive holds the broker password and the client key, so it is created mode 0600 by ``mkstemp``
in the target directory (a random name, ``O_CREAT | O_EXCL | O_NOFOLLOW``: a symlink planted there
is never followed, and no other user can open the file while it fills), synced, then renamed over
the output, which replaces whatever entry had that name (a symlink included) without following it.
A failure removes the temporary file and leaves the output as it was.

Every member's sha256 goes into a last member, ``SHA256SUMS`` (``sha256sum`` format), which
install.sh checks before it installs anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

__all__ = ["CHECKSUMS", "Files", "write_private_tar"]

CHECKSUMS = "SHA256SUMS"
#: archive member name -> (its bytes, or the file to read them from; its mode)
Files = dict[str, tuple[bytes | Path, int]]


def write_private_tar(out: Path, files: Files, *, mtime: int) -> None:
    """Write ``files`` as a gzipped tar at ``out`` (mode 0600), with ``SHA256SUMS`` over them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w:gz") as tar:
                sums = []
                for name, (src, mode) in sorted(files.items()):
                    data = src.read_bytes() if isinstance(src, Path) else src
                    sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
                    _add(tar, name, data, mode, mtime)
                _add(tar, CHECKSUMS, "".join(sums).encode(), 0o644, mtime)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))
