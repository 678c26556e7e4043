"""The service fixtures of tests/services.py: a real PostgreSQL, reached with psycopg 3."""

import os
from pathlib import Path

import psycopg


def test_postgres_gives_a_fresh_database_served_by_a_non_root_server(postgres, postgres_server):
    with psycopg.connect(postgres, connect_timeout=10) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone()[0]
        conn.execute("CREATE TABLE windows (device text PRIMARY KEY, requests integer NOT NULL)")
        conn.execute("INSERT INTO windows VALUES (%s, %s), (%s, %s)", ("pi-07", 3, "pi-08", 5))
        total = conn.execute("SELECT sum(requests) FROM windows").fetchone()[0]
        data_dir = conn.execute("SHOW data_directory").fetchone()[0]
        dbname = conn.info.dbname
    assert tables == 0 and total == 8
    assert postgres.startswith("postgresql://edgekit@127.0.0.1:") and postgres.endswith(f"/{dbname}")
    # the cluster is the fixture's own, owned by an unprivileged user even when the tests run as root
    assert Path(data_dir) == postgres_server.data and Path(data_dir).stat().st_uid != 0
    assert os.geteuid() != 0 or postgres_server.run_as in ("postgres", "nobody")
