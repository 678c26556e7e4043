"""One seam between the fleet store's SQL and the two drivers (sqlite3, psycopg 3).

The store writes its SQL once, with ``?`` placeholders and the syntax both databases share
(``INSERT … ON CONFLICT``, ``RETURNING``, row values, correlated subqueries); :class:`Db` runs it on
either connection, translating placeholders for psycopg, and :class:`Dialect` holds the few words
that differ (``MAX``/``GREATEST`` of two values).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["POSTGRES", "SQLITE", "Db", "Dialect"]

_VALUES = re.compile(r"VALUES \((?:\?,\s*)*\?\)")


@dataclass(frozen=True)
class Dialect:
    """What differs between the backends' SQL."""

    name: str
    greatest: str  # the larger of two values
    least: str
    translate: bool  # '?' -> '%s' (and a literal '%' doubled)


SQLITE = Dialect("sqlite", "MAX", "MIN", translate=False)
POSTGRES = Dialect("postgresql", "GREATEST", "LEAST", translate=True)


class Db:
    """A connection in a transaction (or reading): rows in, rows out.

    Args:
        conn: a ``sqlite3.Connection`` or a ``psycopg.Connection``.
        dialect: which one.
    """

    _cache: dict[str, str] = {}

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self.conn = conn
        self.dialect = dialect

    def sql(self, text: str) -> str:
        """``text`` in the driver's placeholder style."""
        if not self.dialect.translate:
            return text
        out = self._cache.get(text)
        if out is None:
            out = self._cache[text] = text.replace("%", "%%").replace("?", "%s")
        return out

    def rows(self, text: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(self.sql(text), args)
        return [tuple(r) for r in cur.fetchall()]

    def one(self, text: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        cur = self.conn.execute(self.sql(text), args)
        row = cur.fetchone()
        return tuple(row) if row is not None else None

    def run(self, text: str, args: Sequence[Any] = ()) -> int:
        """Execute; the number of rows changed."""
        cur = self.conn.execute(self.sql(text), args)
        return int(cur.rowcount)

    def many(self, text: str, rows: Sequence[Sequence[Any]], *, arrays: tuple[str, ...] = ()) -> None:
        """Execute ``text`` (``INSERT … VALUES (?, …) …``) once per row.

        ``arrays``: on PostgreSQL, the columns' types; the rows then go as one array per column in one
        statement (``SELECT * FROM unnest(…)`` in place of ``VALUES``), not one statement each. Only for rows
        whose conflict keys differ: one statement cannot update the same row twice."""
        if not rows:
            return
        if self.dialect.translate and arrays:
            self.conn.execute(self._unnest(text, arrays), [list(col) for col in zip(*rows, strict=True)])
            return
        if self.dialect.translate:
            with self.conn.cursor() as cur:
                cur.executemany(self.sql(text), rows)
        else:
            self.conn.executemany(text, rows)

    def _unnest(self, text: str, arrays: tuple[str, ...]) -> str:
        key = f"{text}\x00{arrays}"
        out = self._cache.get(key)
        if out is None:
            values = _VALUES.search(text)
            if values is None or values.group(0).count("?") != len(arrays):
                raise ValueError(f"not an INSERT … VALUES with {len(arrays)} placeholders: {text[:80]}")
            columns = ", ".join(f"?::{t}[]" for t in arrays)
            out = self._cache[key] = self.sql(text[:values.start()] + f"SELECT * FROM unnest({columns})" + text[values.end():])
        return out
