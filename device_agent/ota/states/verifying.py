"""VERIFYING: the signature, then every artifact's size and sha256; the verified download becomes a version slot."""

from __future__ import annotations

from device_agent.contract.errors import OtaError
from device_agent.contract.manifest import MANIFEST_NAME
from device_agent.ota.faults import crashpoint
from device_agent.ota.machine import Event, OtaState
from device_agent.ota.runner import Runner
from device_agent.ota.store import slot_name
from device_agent.ota.verify import check_file, verify_manifest

__all__ = ["Verifying"]


class Verifying:
    state = OtaState.VERIFYING

    def run(self, r: Runner) -> None:
        job = r.deploy_job()
        slot = slot_name(job.version)
        installed = r.store.path(slot)
        if installed.is_dir():
            if (installed / MANIFEST_NAME).read_bytes() != job.manifest_bytes:
                raise OtaError(f"version {job.version} is already installed with a different manifest; versions are single-use — "
                               "give the new model a new version", reason="version_reused")
            src = installed  # installed before a restart, or kept from an earlier job: check it again all the same
        else:
            src = r.store.incoming_dir / job.id
        verify_manifest(job.manifest_bytes, job.signature, r.trusted)
        for art in job.artifacts:
            check_file(src / art.file, size=art.size, sha256=art.sha256)
        crashpoint("verify.done")
        r.store.install(job.id, slot)
        r.move(Event.VERIFIED, to_slot=slot, detail="verified; loading and self-testing beside the served model")
