"""edgekit's device agent: serves a compressed model on a device, reports, updates itself.

Imports numpy, onnxruntime, paho-mqtt, cryptography (and optionally ai-edge-litert) only.
"""

__version__ = "0.1.0"
