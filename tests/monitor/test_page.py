"""edgekit fleet serve (issue 15): the read-only fleet page — escaping, token access, errors, and a real headless Chromium.

Each page type is loaded by Debian's Chromium (``--headless --screenshot`` and ``--dump-dom``): the
PNG goes to the test's tmp dir and to ``.pytest_tmp/screenshots/`` (kept after the run), and the
DOM Chromium built is checked for the table rows and SVG elements the page should have.
"""

from __future__ import annotations

import http.client
import re
import shutil
import struct
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_agent.contract.protocol import DeviceStatus, JobState, JobUpdate, StateMessage
from edgekit.cli.main import cli
from edgekit.errors import InputError
from edgekit.monitor.page import FleetPage
from edgekit.monitor.page.server import COOKIE
from tests.monitor.test_metrics import fleet_db  # noqa: F401  (the fixture: real agents, verdicts, a rollout, alerts)
from tests.services import need

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "t0k3n-" + "a" * 40
HOSTILE = ['<script>alert("id")</script>', "a\"b'c&d<e>", "../../etc/passwd", "x/y?z=1#w", "<img src=x onerror=alert(1)>"]
REASON = "<img src=x onerror=alert('reason')>"


@pytest.fixture
def page(fleet_db):  # noqa: F811
    """The fleet page over the fleet_db store plus hostile records (ids, a group, reasons, an abort, an alert message)."""
    store, _ = fleet_db
    now = time.time()
    store.record_states([StateMessage(d, DeviceStatus.ONLINE, now, 1, "<b>0.1</b>", "grp<i>", {"name": "mlp", "version": "1.0.0"})
                         for d in HOSTILE])
    store.record_jobs([JobUpdate(HOSTILE[0], 1, 1, now, "job-x", JobState.FAILED, reason=REASON, detail="<script>d()</script>")])
    store.record_rollout({"v": 1, "type": "rollout", "job": "job-<x>", "model": {"name": "mlp", "version": "<2>"}, "waves": [HOSTILE[:3]],
                          "outcomes": {HOSTILE[0]: {"state": "FAILED", "reason": REASON, "wave": 0}}, "aborted": f"aborted: {REASON}",
                          "status": "aborted", "wave": 1, "ts": now})
    store.add_alert({"kind": "drift", "scope": "device", "name": HOSTILE[0], "level": "alert", "model": {"name": "mlp", "version": "1"},
                     "message": f"drift on {HOSTILE[0]}"})
    with FleetPage(store, token=TOKEN, port=0) as p:
        yield p


def get(page: FleetPage, path: str, *, token: str | None = TOKEN, headers: dict | None = None) -> tuple[int, dict, str]:
    conn = http.client.HTTPConnection(page.host, page.port, timeout=10)
    try:
        conn.request("GET", path, headers={**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode()
    finally:
        conn.close()


def device_path(name: str) -> str:
    return "/device/" + urllib.parse.quote(name, safe="")


def test_hostile_ids_groups_and_reasons_are_escaped_everywhere(page):
    pages = ["/", "/?group=" + urllib.parse.quote("grp<i>"), "/rollouts", "/alerts", "/drift", *(device_path(d) for d in HOSTILE)]
    for path in pages:
        code, headers, body = get(page, path)
        assert code == 200, (path, body[:300])
        assert "<script" not in body and "<img" not in body and "<b>0.1" not in body and "<i>" not in body, path
        assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    _, _, listing = get(page, "/")
    assert "&lt;script&gt;alert(&quot;id&quot;)&lt;/script&gt;" in listing and "a&quot;b&#x27;c&amp;d&lt;e&gt;" in listing
    assert f'href="{device_path(HOSTILE[3])}"' in listing  # "/" and "?" inside an id stay inside its path segment
    _, _, rollouts = get(page, "/rollouts")
    assert "aborted: &lt;img src=x onerror=alert(&#x27;reason&#x27;)&gt;" in rollouts
    _, _, one = get(page, device_path(HOSTILE[0]))
    assert "&lt;script&gt;d()&lt;/script&gt;" in one and "Device &lt;script&gt;" in one


def test_the_token_is_needed_by_header_query_or_cookie(page):
    assert get(page, "/", token=None)[0] == 401
    code, headers, body = get(page, "/", token="wrong")
    assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer") and "needs its access token" in body
    assert get(page, device_path("cam-0"), token=None)[0] == 401  # every page, not only the front one
    code, headers, _ = get(page, f"/rollouts?token={TOKEN}&limit=5", token=None)
    assert code == 303 and headers["Location"] == "/rollouts?limit=5"  # the token leaves the address bar
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert get(page, "/rollouts?limit=5", token=None, headers={"Cookie": f"{COOKIE}={TOKEN}"})[0] == 200
    assert get(page, "/", token=None, headers={"Cookie": f"{COOKIE}=nope"})[0] == 401
    assert get(page, "/?token=wrong", token=None)[0] == 401


def test_unknown_devices_and_pages_are_404_and_bad_parameters_400(page):
    code, _, body = get(page, device_path("no-such-device"))
    assert code == 404 and "no device &#x27;no-such-device&#x27; in this fleet store" in body
    assert get(page, "/nowhere")[0] == 404
    code, _, body = get(page, "/?limit=lots")
    assert code == 400 and "limit=&#x27;lots&#x27; is not a whole number; use 1..500" in body
    assert get(page, "/?online=maybe")[0] == 400


def test_devices_are_paged_and_filtered(page):
    _, _, body = get(page, "/?limit=3")
    assert len(re.findall(r'<tr><td><a href="/device/', body)) == 3 and "devices 1-3 of 8" in body and 'href="/?limit=3&amp;offset=3"' in body
    _, _, body = get(page, "/?online=yes&group=cameras")
    assert len(re.findall(r'<tr><td><a href="/device/', body)) == 3 and "devices 1-3 of 3" in body


def test_binding_beyond_loopback_needs_a_token(fleet_db):  # noqa: F811
    store, _ = fleet_db
    with pytest.raises(InputError, match="refusing to serve the fleet page on 0.0.0.0 without a token"):
        FleetPage(store, host="0.0.0.0", port=0)
    with FleetPage(store, host="0.0.0.0", token=TOKEN, port=0):
        pass
    with FleetPage(store, port=0) as open_page:  # loopback, no token: allowed
        assert get(open_page, "/", token=None)[0] == 200
    r = CliRunner().invoke(cli, ["fleet", "serve", "--db", str(store.path), "--host", "0.0.0.0", "--port", "0", "--duration", "1s"])
    assert r.exit_code == 1 and r.output.startswith("error: refusing to serve the fleet page on 0.0.0.0 without a token")


def test_fleet_serve_runs_for_a_bounded_time(fleet_db, tmp_path):  # noqa: F811
    store, _ = fleet_db
    token_file = tmp_path / "page.token"
    token_file.write_text(TOKEN + "\n")
    r = CliRunner().invoke(cli, ["fleet", "serve", "--db", str(store.path), "--port", "0", "--token-file", str(token_file),
                                 "--duration", "1s"])
    assert r.exit_code == 0 and re.match(r"fleet page: http://127\.0\.0\.1:\d+/ \(token needed\)\n", r.output), r.output


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    need(CHROMIUM, "Chromium is not installed", "run 'make test-debs' (Debian packages chromium, chromium-driver)")
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--window-size=1280,1400",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(("name", "path", "expect"), [
    ("devices", "/", {r'<table class="devices">': 1, r'<tr><td><a href="/device/': 8}),
    ("device", "/device/cam-1", {r'<svg [^>]*class="lines"': 1, r'<svg [^>]*class="heatmap"': 1, r'<rect class="cell"': 8}),
    ("rollouts", "/rollouts", {r'<table class="waves">': 2, r"aborted: &lt;img": 1, r'href="/rollouts\?job=deploy-7"': 1}),
    ("drift", "/drift?group=cameras", {r'<svg [^>]*class="heatmap"': 1, r'<rect class="cell"': 8, r"<title>x\[3\] at ": 1}),
    ("alerts", "/alerts", {r'<table class="alerts">': 1}),
])
def test_each_page_renders_in_a_headless_chromium_with_a_screenshot(page, tmp_path, name, path, expect):
    url = f"http://127.0.0.1:{page.port}{path}{'&' if '?' in path else '?'}token={TOKEN}"  # the browser keeps the cookie
    shot = tmp_path / f"fleet-page-{name}.png"
    r = chromium(tmp_path, url, f"--screenshot={shot}")
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    assert shot.stat().st_size > 15_000 and png_size(shot) == (1280, 1400)  # a rendered page, not a blank one
    kept = ROOT / ".pytest_tmp" / "screenshots"
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, kept / shot.name)
    dom = chromium(tmp_path, url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "<h1>Token needed" not in html and "<script" not in html
    for pattern, at_least in expect.items():
        assert len(re.findall(pattern, html)) >= at_least, (pattern, html[:3000])
