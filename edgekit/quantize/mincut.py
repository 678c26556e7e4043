"""Minimum s-t cut of a small directed graph with real capacities (Edmonds-Karp: shortest augmenting paths).

Graphs here have a few hundred to a few thousand vertices (three per layer of a network), so a
plain breadth-first augmenting-path max-flow is instant; no dependency is worth adding for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

__all__ = ["INF", "min_cut"]

#: capacity of an edge that must never be cut
INF = float("inf")
_EPS = 1e-9


def min_cut(edges: list[tuple[Hashable, Hashable, float]], source: Hashable, sink: Hashable) -> tuple[float, set[Hashable]]:
    """The cut's value and the vertices on the source's side of a minimum ``source``-``sink`` cut.

    ``edges`` are ``(u, v, capacity)``; parallel edges add up. Infinite capacities are allowed as long
    as some finite cut exists (a path of infinite edges from source to sink has no finite cut: ValueError).
    """
    finite = sum(c for _, _, c in edges if c != INF)
    big = 2 * finite + 1.0  # larger than any finite cut: stands in for infinity
    cap: dict[Hashable, dict[Hashable, float]] = {source: {}, sink: {}}
    for u, v, c in edges:
        if c <= 0 or u == v:
            continue
        cap.setdefault(u, {})
        cap.setdefault(v, {})
        cap[u][v] = cap[u].get(v, 0.0) + (big if c == INF else c)
        cap[v].setdefault(u, 0.0)
    flow = 0.0
    while True:
        parent = _bfs(cap, source, sink)
        if sink not in parent:
            break
        push, v = INF, sink
        while v != source:
            u = parent[v]
            push = min(push, cap[u][v])
            v = u
        v = sink
        while v != source:
            u = parent[v]
            cap[u][v] -= push
            cap[v][u] += push
            v = u
        flow += push
        if flow >= big:
            raise ValueError("no finite cut: an uncuttable path joins source and sink")
    side = set(_bfs(cap, source, None))
    return flow, side


def _bfs(cap: dict[Hashable, dict[Hashable, float]], source: Hashable, sink: Hashable | None) -> dict[Hashable, Hashable]:
    """Parents along residual edges from ``source`` (stops at ``sink``); the keys are every vertex reached."""
    parent: dict[Hashable, Hashable] = {source: source}
    queue = deque([source])
    while queue:
        u = queue.popleft()
        for v, c in cap[u].items():
            if c > _EPS and v not in parent:
                parent[v] = u
                if v == sink:
                    return parent
                queue.append(v)
    return parent
