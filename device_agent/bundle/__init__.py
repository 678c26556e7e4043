"""The bundle room (workstation side): what `edgekit agent bundle` and `edgekit agent lock` make.

- ``build``: :func:`build_bundle`, one archive with the agent, its config, the model, the lock and install.sh;
- ``lock``: the lock, exact dependency versions with sha256 for a target platform and Python;
- ``archive``: the archive, written 0600 through a private temporary file, with ``SHA256SUMS``.

Runs on the workstation (stdlib, packaging, pip as a subprocess); nothing here is imported on the device.
"""

from device_agent.bundle.build import DEFAULT_PLATFORM, BundleSpec, build_bundle, find_wheel, make_lock
from device_agent.bundle.lock import BundleError, Lock, agent_requirements, lock_name, target_platforms

__all__ = ["DEFAULT_PLATFORM", "BundleError", "BundleSpec", "Lock", "agent_requirements", "build_bundle", "find_wheel", "lock_name",
           "make_lock", "target_platforms"]
