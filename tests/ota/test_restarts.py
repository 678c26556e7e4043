"""Restarts during probation (crash loops) and HTTP(S) delivery with resume."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from device_agent.contract.protocol import JobState
from device_agent.ota import OtaSettings, OtaState
from device_agent.ota.job import ProbationPolicy
from tests.ota.harness import Device, wait_until
from tests.ota.test_updates import serves

LONG = OtaSettings(probation=ProbationPolicy(requests=100_000, seconds=600, min_requests=10, max_crashes=2, latency_floor_ms=50.0))


def test_repeated_crashes_on_probation_roll_back_across_restarts(tmp_path, releases, trusted, signer):
    root = tmp_path / "dev"
    dev = Device(root, releases["v1"], trusted=trusted, settings=LONG, key=signer)
    dev.deploy(releases["v2"], "j1")
    assert wait_until(lambda: dev.updater.state == OtaState.PROBATION and dev.version == "1.1.0")
    dev.crash()

    again = Device(root, None, trusted=trusted, settings=LONG)  # 1st crash counted: still on probation
    assert again.updater.state == OtaState.PROBATION and again.version == "1.1.0"
    assert again.updater.record.crashes == 1
    again.crash()

    last = Device(root, None, trusted=trusted, settings=LONG)  # 2nd crash: rolled back before 1.1.0 is even loaded
    try:
        assert last.version == "1.0.0"
        r = last.wait_final("j1", load=False)
        assert (r.state, r.reason, r.ota_state) == (JobState.FAILED, "crash_loop", "ROLLED_BACK")
        assert "restarted 2 times" in r.detail
        serves(last, "1.0.0")
    finally:
        last.stop()


def test_clean_restart_on_probation_is_not_a_crash(tmp_path, releases, trusted, signer):
    root = tmp_path / "dev"
    dev = Device(root, releases["v1"], trusted=trusted, settings=LONG, key=signer)
    dev.deploy(releases["v2"], "j1")
    assert wait_until(lambda: dev.updater.state == OtaState.PROBATION and dev.version == "1.1.0")
    dev.stop()
    again = Device(root, None, trusted=trusted, settings=LONG)
    try:
        assert again.updater.record.crashes == 0 and again.version == "1.1.0"
    finally:
        again.stop()


class _Handler(http.server.SimpleHTTPRequestHandler):
    ranges: list = []

    def log_message(self, *a):
        pass

    def send_head(self):
        rng = self.headers.get("Range")
        _Handler.ranges.append(rng)
        if rng is None:
            return super().send_head()
        start = int(rng.split("=")[1].rstrip("-"))
        path = self.translate_path(self.path)
        f = open(path, "rb")  # noqa: SIM115 - handed to the server, closed by it
        size = f.seek(0, 2)
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        return f


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _Handler.ranges = []
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_http_delivery_resumes_a_partial_download(device, releases, http_root):
    import shutil

    root, url = http_root
    shutil.copytree(releases["v2"], root / "v2")
    dev = device()
    part = dev.store.incoming("j1") / "mlp.onnx.part"  # what a download cut off by a restart leaves behind
    part.write_bytes((releases["v2"] / "mlp.onnx").read_bytes()[:1000])
    dev.deploy(releases["v2"], "j1", method="http", base_url=f"{url}/v2")
    r = dev.wait_final("j1")
    assert r.state == JobState.SUCCEEDED
    assert _Handler.ranges == ["bytes=1000-"]
    serves(dev, "1.1.0")


def test_http_body_longer_than_signed_size_is_refused(device, releases, http_root):
    import shutil

    root, url = http_root
    shutil.copytree(releases["v2"], root / "v2")
    with open(root / "v2" / "mlp.onnx", "ab") as f:
        f.write(b"\0" * 4096)
    dev = device()
    dev.deploy(releases["v2"], "j1", method="http", base_url=f"{url}/v2")
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "oversized")
    serves(dev, "1.0.0")


def test_http_server_unreachable_is_retried_until_the_job_times_out(device, releases):
    dev = device()
    dev.deploy(releases["v2"], "j1", method="http", base_url="http://127.0.0.1:9/none", timeout_s=2.0)
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.TIMED_OUT, "timeout")
    assert "cannot download mlp.onnx" in r.detail and "ran out" in r.detail
    serves(dev, "1.0.0")


def _https_server(root, tls):
    import ssl

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tls["cert"]), str(tls["key"]))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.mark.parametrize("trust_ca", [True, False])
def test_https_delivery_checks_the_server_certificate(device, releases, tmp_path, settings, trust_ca):
    import dataclasses
    import shutil

    from tests.conftest import make_tls_files

    tls = make_tls_files(tmp_path / "tls")
    www = tmp_path / "www"
    shutil.copytree(releases["v2"], www / "v2")
    srv = _https_server(www, tls)
    try:
        dev = device(settings=dataclasses.replace(settings, ca_file=str(tls["ca"]) if trust_ca else None))
        dev.deploy(releases["v2"], "j1", method="http", base_url=f"https://127.0.0.1:{srv.server_address[1]}/v2", timeout_s=2.0)
        r = dev.wait_final("j1")
        if trust_ca:
            assert r.state == JobState.SUCCEEDED
            serves(dev, "1.1.0")
        else:  # a server the device cannot authenticate gets nothing installed (and is not retried)
            assert (r.state, r.reason) == (JobState.REJECTED, "tls_untrusted")
            assert "does not trust" in r.detail and "download_ca_file" in r.detail
            serves(dev, "1.0.0")
    finally:
        srv.shutdown()
        srv.server_close()
