"""Services the tests start themselves (a pytest plugin, registered in tests/conftest.py).

- ``need(ok, what, fix)``: a missing tool skips the test on a workstation and fails it in CI
  (``CI`` set), where ``make test`` installs every Debian package the tests use.
- ``postgres_server`` (session): a throwaway PostgreSQL cluster (initdb in a temporary directory)
  on a free 127.0.0.1 port. As root it runs as the ``postgres`` system user (``nobody`` without
  it): initdb and the server refuse to run as root.
- ``postgres``: a DSN to a fresh, empty database on that server, dropped after the test.
- ``prometheus``: ``start(targets)`` runs Debian's Prometheus on a free 127.0.0.1 port, scraping
  ``targets`` (host:port) every second, with a temporary config and data directory; stopped after the test.

Nothing here touches the system's own PostgreSQL cluster or service.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port


def need(ok: object, what: str, fix: str) -> None:
    """Skip (workstation) or fail (CI) the calling test unless ``ok``: "``what``; ``fix``"."""
    if ok:
        return
    message = f"{what}; {fix}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must have it: make test installs it)", pytrace=False)
    pytest.skip(message)


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server's bin directory (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


class Postgres:
    """One PostgreSQL server: ``start()`` runs initdb on first use, ``stop()`` shuts it down fast.

    Durability is off (fsync, full-page writes, synchronous commit): a test cluster never
    outlives a crash, and the tests run several times faster.
    """

    user = "edgekit"  # the cluster's superuser; trust authentication on 127.0.0.1 only

    def __init__(self, workdir: Path, bindir: Path, *, port: int | None = None) -> None:
        self.dir = Path(workdir)
        self.bindir = bindir
        self.port = port or free_port()
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.proc: subprocess.Popen | None = None
        self.run_as = self._unprivileged_user() if os.geteuid() == 0 else None

    @staticmethod
    def _unprivileged_user() -> str:
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        raise RuntimeError("running as root, but neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as")

    def _as_owner(self) -> dict:
        """Popen arguments that drop root for the server's own programs."""
        if self.run_as is None:
            return {}
        entry = pwd.getpwnam(self.run_as)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "env": {**os.environ, "HOME": str(self.dir)}}

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def start(self, timeout: float = 60.0) -> Postgres:
        assert self.proc is None, "postgres already running"
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        if not (self.data / "PG_VERSION").is_file():
            r = subprocess.run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                                "--locale=C", "--no-sync"], capture_output=True, text=True, timeout=120, cwd=self.dir, **self._as_owner())
            if r.returncode != 0:
                raise RuntimeError(f"initdb failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        log = open(self.log_path, "ab")
        args = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off"]
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir, **self._as_owner())
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"postgres exited before it was ready:\n{self.log()[-2000:]}")
            ready = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)], timeout=10)
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections on {self.port} within {timeout} s:\n{self.log()[-2000:]}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: roll back open transactions, then exit
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        self.proc = None

    def createdb(self, name: str) -> str:
        """Create an empty database ``name``; return its DSN."""
        self._client("createdb", name)
        return self.dsn(name)

    def dropdb(self, name: str) -> None:
        self._client("dropdb", "--force", name)  # --force: a test may leave a connection open

    def _client(self, program: str, *args: str) -> None:
        r = subprocess.run([str(self.bindir / program), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, *args],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed: {r.stderr.strip()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """A PostgreSQL server for the session (started on first use, stopped and deleted at the end)."""
    bindir = postgres_bindir()
    need(bindir, "PostgreSQL is not installed", "run 'make test-debs' (Debian package postgresql)")
    # Not under pytest's basetemp: its directories are private to root, and the server may not be root.
    workdir = Path(tempfile.mkdtemp(prefix="edgekit-pg-"))
    server = Postgres(workdir, bindir)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres(postgres_server: Postgres) -> Iterator[str]:
    """The DSN of a fresh, empty database (``postgresql://edgekit@127.0.0.1:PORT/NAME``), dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    dsn = postgres_server.createdb(name)
    yield dsn
    postgres_server.dropdb(name)


PROMETHEUS_BIN = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None)


class Prometheus:
    """One Prometheus server scraping ``targets`` every second (job ``edgekit``); its HTTP API at :attr:`url`."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        self.dir = workdir
        self.port = free_port()
        self.targets = targets
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Prometheus:
        import json
        import urllib.request

        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "edgekit", "static_configs": [{"targets": self.targets}]}]}))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(PROMETHEUS_BIN), f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
                                          f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"prometheus exited before it was ready:\n{self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus was not ready on {self.port} within {timeout} s:\n{self.log()[-2000:]}")

    def query(self, expr: str) -> list[dict]:
        """The instant vector of ``expr`` now (the API's ``data.result``)."""
        import json
        import urllib.parse
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    """``start(["127.0.0.1:PORT", ...])``: a running Prometheus scraping those targets; stopped after the test."""
    need(PROMETHEUS_BIN, "Prometheus is not installed", "run 'make test-debs' (Debian package prometheus)")
    made: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        p = Prometheus(tmp_path / f"prometheus-{len(made)}", targets)
        made.append(p)
        return p.start()

    yield start
    for p in made:
        p.stop()
