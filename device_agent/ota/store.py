"""Versioned model slots on disk, switched atomically.

::

    <root>/
      versions/<slot>/      one complete, verified model directory per version (edgekit.json + artifacts)
      incoming/<job>/       a download in progress (kept across restarts so it can resume)
      trash/                directories on their way out (renamed here first, then deleted)
      pointers.json         {"current": slot, "previous": slot | null, "history": [slot, ...]}

Why it survives a power cut at any moment:

- A version only appears under ``versions/`` by ``rename(incoming/<job>, versions/<slot>)`` after
  every file in it was fsync'ed, followed by an fsync of ``versions/``. A slot directory is
  therefore either absent or complete.
- ``current`` and ``previous`` live in *one* file, replaced by write-tmp + fsync + rename +
  directory fsync, so both pointers switch together: there is no moment where ``current`` points
  at the new version and ``previous`` still at the one before the old.
- Deleting goes through ``trash/`` (rename first), so a half-deleted version is never in ``versions/``.
- :meth:`ModelStore.recover` (run at start-up) removes leftovers (``*.tmp``, trash, downloads no
  job owns) and repairs pointers that name a missing slot by falling back along the history.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from device_agent.contract.errors import OtaError
from device_agent.contract.files import PRIVATE_FILE, open_private, private_dir
from device_agent.contract.manifest import MANIFEST_NAME, ManifestError, load_manifest
from device_agent.ota.faults import crashpoint

__all__ = ["ModelStore", "Recovery", "atomic_write", "fsync_dir", "fsync_tree", "slot_name"]

POINTERS = "pointers.json"


class _Pointers(TypedDict, total=False):
    """pointers.json (``corrupt`` is never written: it marks a file that did not read)."""

    current: str | None
    previous: str | None
    history: list[str]
    ts: float
    corrupt: bool


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, creations) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: write ``path.tmp`` (mode 0600), fsync, rename over, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(open_private(tmp), "wb") as f:
        f.write(data)
        crashpoint("write.unsynced")
        f.flush()
        os.fsync(f.fileno())
    crashpoint("write.before_rename")
    os.replace(tmp, path)
    crashpoint("write.before_dirsync")
    fsync_dir(path.parent)


def fsync_tree(path: Path) -> None:
    """fsync every file in a directory (one level) and the directory itself."""
    for p in path.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(path)


def slot_name(version: str) -> str:
    """The directory name for a model version (unsafe characters become '_')."""
    s = re.sub(r"[^A-Za-z0-9_.\-+]", "_", version).lstrip(".") or "_"
    return s[:96]


@dataclass
class Recovery:
    """What :meth:`ModelStore.recover` found and fixed."""

    current: str | None
    previous: str | None
    removed: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)


class ModelStore:
    """The model slots of one device. Not thread-safe: the OTA updater is its only writer.

    Args:
        root: the store directory (created).
        keep: versions kept on disk (current and previous always are).
    """

    def __init__(self, root: str | Path, *, keep: int = 3) -> None:
        self.root = Path(root)
        self.keep = max(2, keep)
        self.versions = self.root / "versions"
        self.incoming_dir = self.root / "incoming"
        self.trash = self.root / "trash"
        for d in (self.root, self.versions, self.incoming_dir, self.trash):
            private_dir(d)
        self._pointers = self._read_pointers()

    # --- pointers --------------------------------------------------------------------------------

    @property
    def current(self) -> str | None:
        return self._pointers.get("current")

    @property
    def previous(self) -> str | None:
        return self._pointers.get("previous")

    @property
    def history(self) -> list[str]:
        return list(self._pointers.get("history", []))

    def path(self, slot: str) -> Path:
        return self.versions / slot

    def current_path(self) -> Path | None:
        return self.path(self.current) if self.current else None

    def slots(self) -> list[str]:
        return sorted(p.name for p in self.versions.iterdir() if p.is_dir())

    def _read_pointers(self) -> _Pointers:
        p = self.root / POINTERS
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            return {"current": None, "previous": None, "history": []}
        except (OSError, ValueError):
            # only reachable if the file system lost a fully-synced rename; rebuild from the slots
            return {"current": None, "previous": None, "history": [], "corrupt": True}
        if not isinstance(d, dict):
            return {"current": None, "previous": None, "history": [], "corrupt": True}
        return {"current": d.get("current"), "previous": d.get("previous"), "history": list(d.get("history") or [])}

    def _write_pointers(self, current: str | None, previous: str | None, history: list[str]) -> None:
        doc: _Pointers = {"current": current, "previous": previous, "history": history[-32:], "ts": round(time.time(), 3)}
        atomic_write(self.root / POINTERS, json.dumps(doc, indent=1).encode())
        self._pointers = doc

    def activate(self, slot: str) -> None:
        """Make ``slot`` current; the old current becomes previous. One atomic file replace."""
        if not (self.path(slot) / MANIFEST_NAME).is_file():
            raise OtaError(f"cannot activate {slot}: {self.path(slot)} is not an installed version", reason="store")
        if slot == self.current:
            return
        history = [s for s in self.history if s != slot] + [slot]
        self._write_pointers(slot, self.current, history)

    def revert(self, to: str | None = None) -> str:
        """Make ``to`` (default: ``previous``) current again; the reverted slot leaves the history.

        Returns the slot now current. One atomic file replace, like :meth:`activate`.
        """
        bad = self.current
        target = to or self.previous
        if not target or not self._installed(target):
            raise OtaError(f"no previous version to go back to (current {bad}); deploy a version instead", reason="no_previous")
        if target == bad:
            return target
        history = [s for s in self.history if s != bad]
        if target not in history:
            history.append(target)
        i = history.index(target)
        before = [s for s in history[:i] if self._installed(s)]
        history = history[: i + 1] + [s for s in history[i + 1:]]
        self._write_pointers(target, before[-1] if before else None, history)
        return target

    # --- slots -----------------------------------------------------------------------------------

    def incoming(self, job: str) -> Path:
        """The download directory of a job (kept across restarts, so downloads resume)."""
        return private_dir(self.incoming_dir / job)

    def install(self, job: str, slot: str) -> Path:
        """Move a verified download into ``versions/<slot>`` durably. Idempotent after a crash."""
        src = self.incoming_dir / job
        dst = self.path(slot)
        if dst.exists():
            if src.exists():
                self._discard(src)
            return dst
        if not src.is_dir():
            raise OtaError(f"job {job} has no download to install", reason="store")
        for f in src.iterdir():  # downloaded or copied (adopt): whatever the umask made them, versions are private
            if f.is_file():
                os.chmod(f, PRIVATE_FILE)
        fsync_tree(src)
        crashpoint("install.before_rename")
        os.replace(src, dst)
        crashpoint("install.after_rename")
        fsync_dir(self.versions)
        fsync_dir(self.incoming_dir)
        return dst

    def adopt(self, model_dir: str | Path) -> str:
        """Copy an existing model directory (the configured one, on first start) into the store
        and make it current. Returns its slot."""
        src = Path(model_dir)
        try:
            m = load_manifest(src, verify_files=True)
        except ManifestError as e:
            raise OtaError(f"cannot adopt {src} into the model store: {e}", reason="store") from e
        slot = slot_name(m.version)
        if not self.path(slot).exists():
            tmp = self.incoming("adopt")
            for name in [MANIFEST_NAME, f"{MANIFEST_NAME}.sig"] + [a.file for a in m.artifacts]:
                if (src / name).is_file():
                    shutil.copyfile(src / name, tmp / name)
            self.install("adopt", slot)
        self.activate(slot)
        return slot

    def discard_incoming(self, job: str) -> None:
        p = self.incoming_dir / job
        if p.exists():
            self._discard(p)

    def gc(self) -> list[str]:
        """Delete versions beyond the newest ``keep`` (by activation history); never current/previous."""
        keep = {s for s in (self.current, self.previous) if s}
        for s in reversed(self.history):
            if len(keep) >= self.keep:
                break
            keep.add(s)
        removed = []
        for s in self.slots():
            if s not in keep:
                self._discard(self.path(s))
                removed.append(s)
        if removed:
            self._write_pointers(self.current, self.previous, [s for s in self.history if s not in removed])
        return removed

    def _discard(self, p: Path) -> None:
        dst = self.trash / f"{p.name}.{time.time_ns()}"
        os.replace(p, dst)
        fsync_dir(p.parent)
        crashpoint("discard.before_rmtree")
        shutil.rmtree(dst, ignore_errors=True)

    def _installed(self, slot: str | None) -> bool:
        return bool(slot) and slot is not None and (self.path(slot) / MANIFEST_NAME).is_file()

    # --- start-up --------------------------------------------------------------------------------

    def recover(self, *, keep_incoming: Iterable[str] = ()) -> Recovery:
        """Clean up after a crash and make sure ``current`` names an installed version."""
        removed, repaired = [], []
        for p in [*self.root.glob("*.tmp"), *self.versions.glob("*.tmp")]:
            p.unlink(missing_ok=True)
            removed.append(p.name)
        for p in self.trash.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        keep = set(keep_incoming)
        for p in self.incoming_dir.iterdir():
            if p.name not in keep:
                self._discard(p) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(f"incoming/{p.name}")
        for p in self.versions.iterdir():
            if p.is_dir() and not (p / MANIFEST_NAME).is_file():
                self._discard(p)  # cannot happen through install(); a hand-made or damaged directory
                removed.append(f"versions/{p.name}")
        cur, prev, history = self.current, self.previous, [s for s in self.history if self._installed(s)]
        if self._pointers.get("corrupt"):
            repaired.append("pointers.json was unreadable; rebuilt from the installed versions")
        if not self._installed(cur):
            fallback = [s for s in history if s != cur]
            new = fallback[-1] if fallback else (self.slots()[-1] if self.slots() else None)
            if cur or new:
                repaired.append(f"current {cur} is not installed; serving {new}")
            cur = new
        if prev and (not self._installed(prev) or prev == cur):
            repaired.append(f"previous {prev} is not installed")
            prev = None
        if repaired or history != self.history:
            self._write_pointers(cur, prev, history or ([cur] if cur else []))
        return Recovery(cur, prev, removed, repaired)

    def check(self) -> list[str]:
        """Consistency problems (empty when consistent): pointers name installed, verifiable versions."""
        problems = []
        for name, slot in (("current", self.current), ("previous", self.previous)):
            if slot is None:
                continue
            try:
                load_manifest(self.path(slot), verify_files=True)
            except ManifestError as e:
                problems.append(f"{name} {slot}: {e}")
        if self.current is None and self.slots():
            problems.append("no current version although versions are installed")
        return problems
