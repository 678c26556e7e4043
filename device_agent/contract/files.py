"""Private files: the agent's state and the operator's keys are readable by their owner only, whatever the umask.

The agent's state (``ota.json``, the outbox, the model store's pointers, the replay record) says
which commands were accepted and holds queued jobs; a private key signs updates. Files are created
``0600`` and directories ``0700`` with an explicit ``chmod`` after creation, because ``open``/``mkdir``
modes are masked by the umask only downwards (umask 000 must not make them wider, a systemd unit's
``UMask=`` must not be the only guard). Directories the user made already are left as they are: a
configured path may be shared (``/tmp``) and is not ours to tighten.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["PRIVATE_DIR", "PRIVATE_FILE", "loose_key_problem", "open_private", "private_dir", "private_file", "write_private"]

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: str | Path) -> Path:
    """``path`` as a directory; every component this call creates is ``0700``."""
    p = Path(path)
    missing = []
    q = p
    while not q.exists():
        missing.append(q)
        if q.parent == q:
            break
        q = q.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:  # made by another thread or process meanwhile: theirs, as it is
            continue
        os.chmod(d, PRIVATE_DIR)
    return p


def open_private(path: str | Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """``os.open`` with mode ``0600`` (chmod'ed, so a wide umask cannot loosen it); returns the fd."""
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: str | Path, data: bytes) -> None:
    """Replace the contents of ``path`` with ``data``, the file ``0600`` (not atomic: for files a later step checks)."""
    with os.fdopen(open_private(path), "wb") as f:
        f.write(data)


def private_file(path: str | Path) -> Path:
    """Create ``path`` empty if it does not exist, and make it ``0600`` (a database a library opens by name)."""
    p = Path(path)
    os.close(open_private(p, os.O_WRONLY | os.O_CREAT))
    return p


def loose_key_problem(path: str | Path, *, group_may_read: bool = False) -> str | None:
    """Why a private key file may not be used (group/other bits set), with the fix; None when it is private.

    A key others can read is a key others may have copied: refuse it rather than sign with it, as
    ``ssh`` does. ``group_may_read``: a device's TLS key installed ``root:<agent group> 0640`` (the
    installer's layout: the group is the agent's own) is accepted; write or other bits never are.
    Windows has no POSIX modes: nothing to check there.
    """
    if os.name != "posix":
        return None
    p = Path(path)
    try:
        mode = stat.S_IMODE(p.stat().st_mode)
    except OSError:
        return None  # a missing/unreadable file is reported by whoever reads it, with its own words
    if mode & (0o037 if group_may_read else 0o077):
        fix = f"chmod 640 {p} (group: the agent's)" if group_may_read else f"chmod 600 {p}"
        return f"private key {p} is accessible by others (mode {mode:04o}); a key others can read may already be copied. Restrict it: {fix}"
    return None
