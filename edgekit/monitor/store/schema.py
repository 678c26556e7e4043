# layout: table
"""The fleet store's schema, per backend, as numbered migrations (applied in order, recorded in ``schema_version``).

Version 1 of SQLite is the layout fleet databases had before versions were recorded: a file
without ``schema_version`` gets it and goes on from 2 (the scale tables, and a backfill of the
running totals from the windows it holds: :mod:`edgekit.monitor.store.migrate`). PostgreSQL
starts at 2 with the same tables; its raw windows are partitioned by day (by hour from version 4).

Tables (both backends):

- ``devices``     last known state per device, and what ``fleet status`` shows: latest telemetry
                  (requests, p95, outbox), latest job, the drift verdict; ``pruned_seq`` is the
                  highest sequence number whose raw window was dropped (a later repeat is no news)
- ``telemetry``   raw windows as received (:mod:`edgekit.monitor.store.codec`), unique per
                  ``(device, seq)``, kept ``raw_retention_s``, with when they were stored and by
                  which collector: the key columns only (a raw window is most of the disk)
- ``series``      one per (device, model, version, writer): the feature layout of its totals, the
                  start of its first window (the device's version history) and, once older rows were
                  pruned, ``floor``: the minute of its oldest row, the base every older span starts from
- ``totals``      running totals per series and minute (:mod:`edgekit.monitor.store.totals`):
                  everything up to that minute; ``lo``/``hi`` span the windows of the minute itself
- ``rollups``     hourly sums per (key, hour), kept ``retention_s``: devices' counts and latency,
                  groups' also with their feature totals
- ``rollup_keys`` what a roll-up's ``key`` names: (scope, name, model, version, writer)
- ``writers``     leases: a collector writes totals and roll-ups only under the slot it holds
- ``refs``, ``drift_state``, ``alerts``   references, verdicts, alerts (as before)
- ``jobs``, ``rollouts``   the latest state per device and job; rollouts as the operator published them
- ``meta``        ``store_id``: collectors sharing a database answer queries once

Version 3 (both backends) adds the runtime to ``devices`` (issue 19): the runtime serving the model
(``runtime``: name and installed version), the version the model card validated it with, the check's
status and detail, from the device's newest state message or telemetry window.

Version 4 (both backends) is about the disk (issue 15): roll-ups name their subject by an integer
key (``rollup_keys``) and SQLite's raw windows drop the columns that repeated the message (both
tables are rebuilt once, when opened). Raw windows written from then on are format 2 of
:mod:`edgekit.monitor.store.codec`; older rows keep their format and age out with the retention.
"""

from __future__ import annotations

__all__ = ["LATEST", "POSTGRES", "SQLITE"]

LATEST = 4

_SQLITE_1 = """
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY, grp TEXT NOT NULL DEFAULT 'default', status TEXT NOT NULL DEFAULT 'unknown',
    model TEXT, version TEXT, artifact TEXT, last_seen REAL NOT NULL, agent_version TEXT);
CREATE TABLE IF NOT EXISTS telemetry (
    device TEXT NOT NULL, seq INTEGER NOT NULL, boot INTEGER NOT NULL, ts REAL NOT NULL,
    window_start REAL NOT NULL, window_end REAL NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL,
    samples INTEGER NOT NULL, requests INTEGER NOT NULL, collector TEXT NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (device, seq));
CREATE INDEX IF NOT EXISTS telemetry_by_end ON telemetry (window_end);
CREATE INDEX IF NOT EXISTS telemetry_by_device ON telemetry (device, model, version, window_end);
CREATE TABLE IF NOT EXISTS refs (
    model TEXT NOT NULL, version TEXT NOT NULL, features TEXT NOT NULL, accuracy TEXT NOT NULL, source TEXT NOT NULL,
    registered REAL NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS drift_state (
    scope TEXT NOT NULL, name TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, feature TEXT NOT NULL,
    level TEXT NOT NULL, since REAL NOT NULL, updated REAL NOT NULL, psi REAL,
    PRIMARY KEY (scope, name, model, version, feature));
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL, scope TEXT NOT NULL, name TEXT NOT NULL,
    model TEXT NOT NULL, version TEXT NOT NULL, level TEXT NOT NULL, payload TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_by_name ON alerts (scope, name, ts);
"""

_DEVICE_COLUMNS = [
    ("boot", "INTEGER"), ("state_seq", "INTEGER"), ("tel_boot", "INTEGER"), ("tel_seq", "INTEGER"), ("requests", "INTEGER"),
    ("p95_ms", "REAL"), ("outbox", "INTEGER"), ("job", "TEXT"), ("job_state", "TEXT"), ("job_reason", "TEXT"), ("job_ts", "REAL"),
    ("drift_level", "TEXT"), ("drift", "TEXT"), ("pruned_seq", "INTEGER"),
]

_SCALE_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE writers (slot INTEGER PRIMARY KEY, holder TEXT NOT NULL, heartbeat REAL NOT NULL);
CREATE TABLE series (
    id {serial} PRIMARY KEY, device TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, writer INTEGER NOT NULL,
    layout TEXT NOT NULL, first_start {real}, floor BIGINT, UNIQUE (device, model, version, writer));
CREATE INDEX series_by_device ON series (device);
CREATE TABLE totals (
    series INTEGER NOT NULL, minute BIGINT NOT NULL, windows BIGINT NOT NULL, samples BIGINT NOT NULL,
    lo {real} NOT NULL, hi {real} NOT NULL, data {blob} NOT NULL, PRIMARY KEY (series, minute)){without_rowid}{fill};
CREATE TABLE rollups (
    scope TEXT NOT NULL, name TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, hour BIGINT NOT NULL, writer INTEGER NOT NULL,
    windows BIGINT NOT NULL, samples BIGINT NOT NULL, requests BIGINT NOT NULL, errors BIGINT NOT NULL, lat_count BIGINT NOT NULL,
    lat_sum {real} NOT NULL, lat_max {real}, p95_max {real}, labelled BIGINT NOT NULL, correct BIGINT NOT NULL,
    layout TEXT, data {blob}, PRIMARY KEY (scope, name, model, version, hour, writer)){fill_hour};
CREATE INDEX rollups_by_hour ON rollups (hour);
CREATE TABLE jobs (
    device TEXT NOT NULL, job TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, ota_state TEXT NOT NULL,
    version TEXT, ts {real} NOT NULL, boot INTEGER NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (device, job));
CREATE INDEX jobs_by_job ON jobs (job);
CREATE TABLE rollouts (job TEXT PRIMARY KEY, ts {real} NOT NULL, doc TEXT NOT NULL);
"""

_SQLITE_TYPES = {"serial": "INTEGER", "real": "REAL", "blob": "BLOB", "without_rowid": " WITHOUT ROWID", "fill": "", "fill_hour": ""}
# rows rewritten with every batch (the newest totals, devices): room in each page for the new version of a row (a
# heap-only update: no index entry, the old version reclaimed within the page); roll-ups only during their hour
_PG_TYPES = {"serial": "BIGINT GENERATED BY DEFAULT AS IDENTITY", "real": "DOUBLE PRECISION", "blob": "BYTEA", "without_rowid": "",
             "fill": " WITH (fillfactor = 70)", "fill_hour": " WITH (fillfactor = 90)"}


def _sqlite_2() -> list[str]:
    return ([f"ALTER TABLE devices ADD COLUMN {name} {kind}" for name, kind in _DEVICE_COLUMNS]
            + ["ALTER TABLE telemetry ADD COLUMN stored REAL",
               "DROP INDEX IF EXISTS telemetry_by_device",  # device drift reads running totals now, not raw windows
               *[s for s in _SCALE_TABLES.format(**_SQLITE_TYPES).split(";") if s.strip()],
               "CREATE INDEX devices_by_group ON devices (grp)"])


_PG_2 = f"""
CREATE TABLE devices (
    device TEXT PRIMARY KEY, grp TEXT NOT NULL DEFAULT 'default', status TEXT NOT NULL DEFAULT 'unknown',
    model TEXT, version TEXT, artifact TEXT, last_seen DOUBLE PRECISION NOT NULL, agent_version TEXT,
    {", ".join(f"{n} {'BIGINT' if k == 'INTEGER' else 'DOUBLE PRECISION' if k == 'REAL' else k}" for n, k in _DEVICE_COLUMNS)})
    WITH (fillfactor = 70);
CREATE INDEX devices_by_group ON devices (grp);
CREATE TABLE telemetry (
    device TEXT NOT NULL, seq BIGINT NOT NULL, window_end DOUBLE PRECISION NOT NULL, collector TEXT NOT NULL,
    stored DOUBLE PRECISION NOT NULL, payload BYTEA NOT NULL,
    PRIMARY KEY (device, seq, window_end)) PARTITION BY RANGE (window_end);
CREATE TABLE refs (
    model TEXT NOT NULL, version TEXT NOT NULL, features TEXT NOT NULL, accuracy TEXT NOT NULL, source TEXT NOT NULL,
    registered DOUBLE PRECISION NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE drift_state (
    scope TEXT NOT NULL, name TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, feature TEXT NOT NULL,
    level TEXT NOT NULL, since DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL, psi DOUBLE PRECISION,
    PRIMARY KEY (scope, name, model, version, feature));
CREATE TABLE alerts (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, scope TEXT NOT NULL,
    name TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, level TEXT NOT NULL, payload TEXT NOT NULL);
CREATE INDEX alerts_by_name ON alerts (scope, name, ts);
CREATE INDEX alerts_by_ts ON alerts (ts);
{_SCALE_TABLES.format(**_PG_TYPES)}
"""

_RUNTIME_COLUMNS = [("runtime", "TEXT"), ("runtime_validated", "TEXT"), ("runtime_status", "TEXT"), ("runtime_detail", "TEXT")]
_RUNTIME = [f"ALTER TABLE devices ADD COLUMN {name} {kind}" for name, kind in _RUNTIME_COLUMNS]
_RUNTIME_DESCRIPTION = "devices carry their runtime, the version their model was validated with and the check's status"

# Version 4: what a raw window and a roll-up cost on disk (issue 15). Roll-ups name their (scope, name, model,
# version, writer) by an integer key instead of repeating four strings in every row and again in the primary
# key's index. The writer is part of the key, as in ``series``: writers never add the same key (no two
# collectors wait on each other's insert). A key is never deleted (a writer keeps the ids it resolved in memory:
# a deleted key would orphan its next row); there is one per device or group, version and writer slot.
# Integer columns first on PostgreSQL: no alignment padding.
_ROLLUPS_4 = """
CREATE TABLE rollup_keys (
    id {serial} PRIMARY KEY, scope TEXT NOT NULL, name TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, writer INTEGER NOT NULL,
    UNIQUE (scope, name, model, version, writer));
INSERT INTO rollup_keys (scope, name, model, version, writer)
    SELECT DISTINCT scope, name, model, version, writer FROM rollups ORDER BY scope, name, model, version, writer;
CREATE TABLE rollups_4 (
    hour BIGINT NOT NULL, windows BIGINT NOT NULL, samples BIGINT NOT NULL, requests BIGINT NOT NULL, errors BIGINT NOT NULL,
    lat_count BIGINT NOT NULL, labelled BIGINT NOT NULL, correct BIGINT NOT NULL, lat_sum {real} NOT NULL, lat_max {real}, p95_max {real},
    key INTEGER NOT NULL, layout TEXT, data {blob}, PRIMARY KEY (key, hour)){without_rowid}{fill_hour};
INSERT INTO rollups_4 (hour, windows, samples, requests, errors, lat_count, labelled, correct, lat_sum, lat_max, p95_max, key, layout, data)
    SELECT r.hour, r.windows, r.samples, r.requests, r.errors, r.lat_count, r.labelled, r.correct, r.lat_sum, r.lat_max, r.p95_max, k.id,
    r.layout, r.data FROM rollups r JOIN rollup_keys k ON k.scope = r.scope AND k.name = r.name AND k.model = r.model
    AND k.version = r.version AND k.writer = r.writer;
DROP TABLE rollups;
ALTER TABLE rollups_4 RENAME TO rollups;
CREATE INDEX rollups_by_hour ON rollups (hour)
"""
# SQLite's raw windows lose the columns that repeated the message (boot, ts, window start, model, version, samples,
# requests: no query reads them, the payload has them). Still a rowid table: WITHOUT ROWID would copy whole ~350-byte
# rows into its interior pages.
_SQLITE_TELEMETRY_4 = """
DROP INDEX telemetry_by_end;
ALTER TABLE telemetry RENAME TO telemetry_3;
CREATE TABLE telemetry (
    device TEXT NOT NULL, seq INTEGER NOT NULL, window_end REAL NOT NULL, collector TEXT NOT NULL, stored REAL, payload BLOB NOT NULL,
    PRIMARY KEY (device, seq));
INSERT INTO telemetry (device, seq, window_end, collector, stored, payload)
    SELECT device, seq, window_end, collector, stored, payload FROM telemetry_3 ORDER BY rowid;
DROP TABLE telemetry_3;
CREATE INDEX telemetry_by_end ON telemetry (window_end)
"""
# PostgreSQL's raw windows: the primary key leads with window_end. Keys then arrive in about ascending order and fill the
# index's pages as they go (~90 %); led by the device, every device appends in the middle of the index, whose pages
# split in halves and settle ~65 % full. No query looks raw windows up by device on PostgreSQL (the insert's conflict
# check uses the whole key).
_PG_TELEMETRY_4 = """
ALTER TABLE telemetry DROP CONSTRAINT telemetry_pkey;
ALTER TABLE telemetry ADD PRIMARY KEY (window_end, device, seq)
"""
_COMPACT_DESCRIPTION = "roll-ups keyed by an integer (rollup_keys); raw windows keep the key columns only"


def _statements(text: str) -> list[str]:
    return [s for s in text.split(";") if s.strip()]


#: version -> (description, statements) for SQLite
SQLITE: dict[int, tuple[str, list[str]]] = {
    1: ("the fleet database before versions were recorded", [s for s in _SQLITE_1.split(";") if s.strip()]),
    2: ("running totals, hourly roll-ups, writer leases, jobs, rollouts; devices carry what fleet status shows", _sqlite_2()),
    3: (_RUNTIME_DESCRIPTION, _RUNTIME),
    4: (_COMPACT_DESCRIPTION, _statements(_SQLITE_TELEMETRY_4) + _statements(_ROLLUPS_4.format(**_SQLITE_TYPES))),
}

#: version -> (description, statements) for PostgreSQL (version 1 never existed there)
POSTGRES: dict[int, tuple[str, list[str]]] = {
    2: ("the fleet store: raw windows partitioned by day, running totals, hourly roll-ups, leases, jobs, rollouts",
        [s for s in _PG_2.split(";") if s.strip()]),
    3: (_RUNTIME_DESCRIPTION, _RUNTIME),
    4: (_COMPACT_DESCRIPTION, _statements(_PG_TELEMETRY_4) + _statements(_ROLLUPS_4.format(**_PG_TYPES))),
}
