"""Stripping the converted .tflite: smaller, same I/O names and signature, bit-identical outputs.

The digits CNN is converted to full-integer int8 twice, stripped (the default) and with
``strip=False``; the converter is deterministic, so the two files differ only by what was stripped.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from device_agent.contract.manifest import load_manifest
from device_agent.runtime import open_backend
from edgekit.compress import CompressOptions, compress
from edgekit.export import ExportOptions, TfliteConfig
from edgekit.pipeline import StepSpec

ART = "digits.int8.tflite"


@pytest.fixture(scope="module")
def int8_pair(digits, tmp_path_factory):
    """{True: output dir of the stripped int8 .tflite, False: the converter's own file}; both per-channel."""
    tmp = tmp_path_factory.mktemp("tfl-strip")
    out = {}
    for strip in (True, False):
        result = compress(digits["model"], digits["eval"], CompressOptions(
            steps=[StepSpec("int8", {"max_drop": 100.0})], formats=("tflite",), output=tmp / f"strip-{strip}",
            export=ExportOptions(tflite=TfliteConfig(strip=strip, per_channel=True))))
        out[strip] = result.output
    return out


def _interpreter(path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=1)


def _names(it) -> tuple[list[str], list[str], list[str]]:
    return ([d["name"] for d in it.get_input_details()], [d["name"] for d in it.get_output_details()],
            [d["name"] for d in it.get_tensor_details()])


def test_stripped_int8_tflite_is_smaller_and_says_by_how_much(int8_pair):
    stripped, kept = int8_pair[True] / ART, int8_pair[False] / ART
    assert stripped.stat().st_size < kept.stat().st_size
    facts = load_manifest(int8_pair[True]).artifact(ART).extra["tflite"]["stripped"]
    assert facts["converter_bytes"] == kept.stat().st_size  # the file as TFLiteConverter wrote it
    assert facts["bytes"] == stripped.stat().st_size
    assert facts["removed"]["description"] > 0 and facts["removed"]["tensor_names"] > 10
    # per-channel zero points: the same all-zero int64 vector for a weight and its bias, written once
    assert facts["removed"]["shared_vector_bytes"] >= 8 * 64
    # activations' empty buffers: all point at buffer 0, the schema's "no data" sentinel
    assert facts["removed"]["empty_buffers"] >= 10
    # the [N, 64] -> [N, 64] RESHAPE after the first dense layer goes, with its output and its shape constant;
    # the flatten before it ([N, 64, 2, 2] -> [N, 256]) stays
    assert facts["removed"]["identity_reshapes"] == 1 and facts["removed"]["unused_tensors"] == 2
    ops = (load_manifest(int8_pair[True]).artifact(ART).extra["tflite"]["ops"], load_manifest(int8_pair[False]).artifact(ART).extra["tflite"]["ops"])
    assert (ops[0]["RESHAPE"], ops[1]["RESHAPE"]) == (1, 2)
    assert load_manifest(int8_pair[False]).artifact(ART).extra["tflite"]["stripped"]["removed"] == {}


def test_stripping_keeps_io_names_and_the_signature_and_drops_the_rest(int8_pair):
    new, old = _interpreter(int8_pair[True] / ART), _interpreter(int8_pair[False] / ART)
    assert new.get_signature_list() == old.get_signature_list() == {"serving_default": {"inputs": ["x"], "outputs": ["logits"]}}
    new_in, new_out, new_all = _names(new)
    old_in, old_out, old_all = _names(old)
    assert (new_in, new_out) == (old_in, old_out) == (["serving_default_x:0"], ["PartitionedCall:0"])
    assert len(new_all) == len(old_all) - 2  # the identity RESHAPE's output and its shape constant
    inner = [n for n in new_all if n not in (*new_in, *new_out)]
    assert inner and all(n == "" for n in inner)
    assert any(";" in n for n in old_all)  # the converter's fused-op names, which were the bytes removed


def test_stripped_tflite_gives_bit_identical_outputs_under_litert(int8_pair, digits):
    x = np.load(digits["eval"])["x"][:64].transpose(0, 2, 3, 1)  # the artifact's NHWC layout
    outs = []
    for strip in (True, False):
        runner = _interpreter(int8_pair[strip] / ART).get_signature_runner("serving_default")
        outs.append(runner(x=x)["logits"])
    assert outs[0].shape == (64, 10)
    assert outs[0].tobytes() == outs[1].tobytes()


def test_the_device_agent_backend_runs_the_stripped_file_like_the_original(int8_pair, digits):
    x = np.load(digits["eval"])["x"][:16]  # source NCHW: the backend finds ports by signature name
    got = {}
    for strip in (True, False):
        m = load_manifest(int8_pair[strip])
        got[strip] = open_backend(int8_pair[strip] / ART, m.artifact(ART)).run({"x": x})["logits"]
    np.testing.assert_array_equal(got[True], got[False])


def test_manifest_sha256_and_size_are_the_stripped_files(int8_pair):
    m = load_manifest(int8_pair[True], verify_files=True)
    art = m.artifact(ART)
    data = (int8_pair[True] / ART).read_bytes()
    assert art.size_bytes == len(data) < art.extra["tflite"]["stripped"]["converter_bytes"]
    assert art.sha256 == hashlib.sha256(data).hexdigest()


def test_min_max_ranges_are_dropped_and_outputs_stay_identical(int8_pair, tmp_path):
    """The converter writes no min/max for these models, so add some and strip them (in a child: TF)."""
    code = textwrap.dedent(f"""
        import numpy as np
        from tensorflow.lite.tools import flatbuffer_utils as fu
        from ai_edge_litert.interpreter import Interpreter
        from edgekit.export.tflite_strip import strip_tflite
        blob = open({str(int8_pair[False] / ART)!r}, "rb").read()
        model = fu.read_model_from_bytearray(bytearray(blob))
        tensors = [t for t in model.subgraphs[0].tensors if t.quantization is not None and t.quantization.scale is not None]
        for t in tensors:
            n = len(t.quantization.scale)
            t.quantization.min, t.quantization.max = [-1.0] * n, [1.0] * n
        with_ranges = bytes(fu.convert_object_to_bytearray(model))
        out, facts = strip_tflite(with_ranges)
        assert facts["removed"]["min_max"] == len(tensors) > 0, facts
        assert all(t.quantization.min is None and t.quantization.max is None
                   for t in fu.read_model_from_bytearray(bytearray(out)).subgraphs[0].tensors if t.quantization is not None)
        x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
        ys = [Interpreter(model_content=b).get_signature_runner("serving_default")(x=x)["logits"] for b in (with_ranges, out)]
        assert ys[0].tobytes() == ys[1].tobytes()
        print("OK", len(with_ranges), len(out))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    _, before, after = res.stdout.split()[-3:]
    assert int(after) < int(before)


def test_a_stripped_model_that_computes_differently_is_not_shipped(monkeypatch):
    import edgekit.export.tflite_strip as strip_mod
    from edgekit.export import tflite_worker

    monkeypatch.setattr(strip_mod, "strip_tflite", lambda blob: (b"stripped", {"converter_bytes": 9, "bytes": 8, "removed": {"tensor_names": 3}}))
    monkeypatch.setattr(tflite_worker, "_signature_outputs",
                        lambda blob, feeds: {"logits": np.array([1.0 if blob == b"original" else 1.0 + 1e-7], np.float32)})
    notes: list[str] = []
    blob, facts = tflite_worker._strip(b"original", {}, {"strip": True}, notes)  # noqa: SLF001
    assert blob == b"original"
    assert facts == {"converter_bytes": 8, "bytes": 8, "removed": {}}
    assert notes == ["kept the converter's .tflite unstripped: output(s) logits changed when tensor names were dropped"]


def test_per_tensor_weights_can_be_forced_and_save_the_per_channel_parameters(int8_pair, digits, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli.main import cli

    out = tmp_path / "pt"
    res = CliRunner().invoke(cli, ["compress", "--int8", "--data", str(digits["eval"]), "--format", "tflite", "--tflite-weights",
                                   "per-tensor", "--max-drop", "100", "-o", str(out), str(digits["model"])], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    m = load_manifest(out)
    art, default = m.artifact(ART), load_manifest(int8_pair[True]).artifact(ART)
    assert (art.extra["tflite"]["weights"], default.extra["tflite"]["weights"]) == ("per-tensor", "per-channel")
    assert art.size_bytes < default.size_bytes
    widest = max(len(d["quantization_parameters"]["scales"]) for d in _interpreter(out / ART).get_tensor_details())
    assert widest == 1  # one scale per tensor; the default has one per output channel
    assert max(len(d["quantization_parameters"]["scales"]) for d in _interpreter(int8_pair[True] / ART).get_tensor_details()) > 1
    assert m.metrics[ART]["parity"]["ok"] is True
