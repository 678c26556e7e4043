"""The runtime room: run an artifact on this device.

- ``base``: the ``Backend`` protocol every runtime implements, ``BackendError``, layout helpers;
- ``ort``: ONNX Runtime (``.onnx``, ``.ort``); ``litert``: LiteRT (``.tflite``, optional);
- ``model``: the loaded model (artifact choice, backend by file format, self-test, top-k labels).

Imports the contract room only. The names below are re-exported for ``from device_agent.runtime import ...``.
"""

from device_agent.runtime.base import Backend, BackendError, default_threads, litert_available, runtime_versions, source_spec
from device_agent.runtime.model import open_backend
from device_agent.runtime.ort import OrtBackend, specs_from_ort

__all__ = ["Backend", "BackendError", "OrtBackend", "default_threads", "litert_available", "open_backend", "runtime_versions", "source_spec",
           "specs_from_ort"]
