"""README's layout section names every module and folder of both programs (it matches `ls`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"__init__.py", "py.typed", "__pycache__", "__main__.py"}


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```\n(.*?)```", section, flags=re.S))


def _entries(folder: Path) -> list[str]:
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name not in SKIP)


def test_every_top_level_entry_of_both_programs_is_in_the_layout_section():
    block = _layout_block()
    named = set(re.findall(r"[\w.-]+/?", block))
    missing = [f"{pkg}/{e}" for pkg in ("edgekit", "device_agent", "device_agent/serve", "device_agent/ota",
                                         "device_agent/runtime", "device_agent/contract", "device_agent/telemetry",
                                         "device_agent/link", "device_agent/config")
               for e in _entries(ROOT / pkg) if e not in named and e.rstrip("/") not in named]
    assert not missing, f"README's layout section does not mention: {', '.join(missing)}"


def test_the_layout_section_names_nothing_that_does_not_exist():
    block = _layout_block()
    listed = re.findall(r"^  (\w[\w.]*/?)\s", block, flags=re.M)  # the first column under each program
    assert listed, "no entries found in README's layout section"
    tops = {"edgekit": ROOT / "edgekit", "device_agent": ROOT / "device_agent"}
    current = None
    gone = []
    for line in block.splitlines():
        top = re.match(r"^(\w+)/\s", line)
        if top:
            current = tops.get(top.group(1))
            continue
        entry = re.match(r"^  (\w[\w.]*/?)\s", line)
        if entry and current is not None and not (current / entry.group(1).rstrip("/")).exists():
            gone.append(f"{current.name}/{entry.group(1)}")
    assert not gone, f"README's layout section names entries that do not exist: {', '.join(gone)}"
