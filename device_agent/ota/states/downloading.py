"""DOWNLOADING: the artifacts arrive — as MQTT chunks, or over HTTP(S) with retries — until the job's deadline."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from device_agent.contract.errors import OtaError
from device_agent.contract.files import write_private
from device_agent.contract.manifest import MANIFEST_NAME, SIGNATURE_NAME
from device_agent.ota.delivery import ChunkReceiver, http_download
from device_agent.ota.faults import crashpoint
from device_agent.ota.job import ArtifactRef, DeployJob
from device_agent.ota.machine import Event, OtaState
from device_agent.ota.runner import Runner

__all__ = ["Downloading"]

log = logging.getLogger("edgekit.agent.ota")

#: the longest pause between two HTTP attempts (the first waits 0.5 s, then twice as long each time)
MAX_RETRY_DELAY_S = 30.0


class Downloading:
    state = OtaState.DOWNLOADING

    def run(self, r: Runner) -> None:
        job = r.deploy_job()
        d = r.store.incoming(job.id)
        write_private(d / MANIFEST_NAME, job.manifest_bytes)
        if job.signature:
            write_private(d / SIGNATURE_NAME, job.signature.encode())
        if job.method == "mqtt":
            _chunks(r, job, d)
        else:
            for art in job.artifacts:
                _http(r, job, art, d)
        crashpoint("download.done")
        r.move(Event.DOWNLOADED, detail="verifying sha256, size and signature")


def _deadline_left(r: Runner, job: DeployJob) -> float:
    return (r.record.started or 0.0) + job.timeout_s - r.clock()


def _chunks(r: Runner, job: DeployJob, d: Path) -> None:
    """Subscribe the job's chunk topics (retained chunks are replayed) and wait for every chunk of the plan."""
    receiver = ChunkReceiver(job.id, d, job.artifacts, job.chunk_size)
    r.receiver = receiver
    topic = r.chunk_filter(job.id) if r.chunk_filter else None
    transport = r.transport
    if transport is not None and topic:
        transport.subscribe(topic)
    try:
        done = r.wait(receiver.done, _deadline_left(r, job))
    finally:
        r.receiver = None
        if transport is not None and topic:
            transport.unsubscribe(topic)
    if r.cancel:
        raise OtaError(f"the download was abandoned ({r.cancel})", reason="canceled")
    if receiver.error is not None:
        raise receiver.error
    if not done:
        have, count = receiver.progress
        raise OtaError(f"{have} of {count} chunks arrived within the job's {job.timeout_s:g} s; the rest never came "
                       "(broker limits, or the fleet stopped sending)", reason="timeout")
    receiver.finish()


def _http(r: Runner, job: DeployJob, art: ArtifactRef, d: Path) -> None:
    """One artifact over HTTP(S); network failures are retried with backoff until the job's deadline."""
    delay = 0.5
    while not (d / art.file).is_file():
        try:
            http_download(art, d, deadline_s=max(0.0, _deadline_left(r, job)), should_stop=lambda: r.stop.is_set() or r.cancel is not None,
                          ca_file=r.settings.ca_file)
        except OtaError as e:
            if e.reason != "download_failed":
                raise
            if _deadline_left(r, job) <= delay:
                raise OtaError(f"{e} — still failing when the job's {job.timeout_s:g} s ran out", reason="timeout") from None
            log.warning("OTA: %s; retrying in %.1f s", e, delay)
            if r.wait(threading.Event(), delay) is False and r.cancel:
                raise OtaError(f"the download was abandoned ({r.cancel})", reason="canceled") from None
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
