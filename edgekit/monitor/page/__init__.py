"""The fleet page (``edgekit fleet serve``): a read-only web page over the fleet store, server-rendered, no script.

- :mod:`edgekit.monitor.page.server` :class:`FleetPage`: the HTTP server, token access, routing
- :mod:`edgekit.monitor.page.views`  one function per page: devices, device, rollouts, drift, alerts
- :mod:`edgekit.monitor.page.svg`    inline SVG: the drift heat map, a line plot
- :mod:`edgekit.monitor.page.html`   escaping and the HTML pieces every page shares
"""

from __future__ import annotations

from edgekit.monitor.page.server import FleetPage, is_loopback

__all__ = ["FleetPage", "is_loopback"]
