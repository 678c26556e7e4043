"""The library's fixed choices as string enums: artifact format, precision, data layout.

Members are ``str`` subclasses, so they compare equal to, format as and serialize like their
values (``Format.ONNX == "onnx"``, ``f"{Precision.INT8}" == "int8"``, ``json.dumps`` writes
``"onnx"``): manifests, reports and CLI flags read exactly as before. ``enum.StrEnum`` would do
the same but needs Python 3.11; the library supports 3.10, hence :class:`StrChoice`.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Format", "Layout", "Objective", "OrtTarget", "Precision", "StrChoice"]


class StrChoice(str, Enum):
    """A string enum whose ``str()`` and ``format()`` are its value (``enum.StrEnum`` on Python 3.10)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Every value, in declaration order (for messages: "allowed: onnx, ort, tflite")."""
        return tuple(str(m.value) for m in cls)


class Format(StrChoice):
    """An artifact format; each has one exporter (:mod:`edgekit.export`)."""

    ONNX = "onnx"
    ORT = "ort"  # ONNX Runtime Mobile flatbuffer
    TFLITE = "tflite"  # LiteRT


class Precision(StrChoice):
    """What an artifact's weights (and compute) are stored as."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    MIXED = "mixed"  # int8 with some layers left in float


class Layout(StrChoice):
    """Axis order of a 4-D image tensor."""

    NCHW = "NCHW"
    NHWC = "NHWC"


class Objective(StrChoice):
    """What a quantized artifact is chosen for, among those within the accuracy bound."""

    BALANCED = "balanced"  # the fastest within 0.35x the float size, else the smallest that is not slower than float
    LATENCY = "latency"  # the fastest
    SIZE = "size"  # the smallest, even when slower than float


class OrtTarget(StrChoice):
    """The CPU an ``.ort`` is built for: ORT's converter saves its optimizations fixed, for one platform."""

    ARM = "arm"  # Raspberry Pi, phones, ARM gateways; also loads on x86, where its float layers run without blocked layouts
    AMD64 = "amd64"  # x86-64 devices: adds the NCHWc blocked-layout float kernels, which exist only on x86-64

    @classmethod
    def host(cls) -> OrtTarget:
        """The target of this machine's CPU (an ARM .ort on x86-64 misses the NCHWc float kernels)."""
        import platform

        return cls.AMD64 if platform.machine().lower() in ("x86_64", "amd64") else cls.ARM
