"""The table and the PASS/FAIL target lines of benchmarks/real_models.py (numbers in, text out)."""

from __future__ import annotations

import statistics

__all__ = ["table", "targets"]

FORMATS = (".onnx", ".ort", ".tflite")
MB = 1_000_000
# with calibration data (static int8), issue 13's per-architecture .onnx latency targets
ARCH_TARGETS = {"mobilenet_v3_large": 0.80, "mobilenet_v3_small": 0.80, "resnet18": 0.28, "mobilenet_v2": 0.45}


def _num(x: object) -> float | None:
    return x if isinstance(x, float) else None


def ratio(r: dict, tag: str, fmt: str) -> float | None:
    """Latency of ``tag``'s ``fmt`` artifact over its baseline: the fp32 .tflite for .tflite, else the fp32 .onnx."""
    lat = r["latency_ms"]
    new = _num(lat.get(f"{tag} {fmt}"))
    base = _num(lat.get("fp32 .tflite" if fmt == ".tflite" else "fp32 .onnx"))
    return new / base if new is not None and base else None


def size_ratio(r: dict, tag: str, fmt: str) -> float | None:
    new = r["sizes"].get(f"{tag} {fmt}")
    base = r["sizes"].get("fp32 .tflite" if fmt == ".tflite" else "fp32 .onnx")
    return new / base if new is not None and base else None


def _f(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _quality(r: dict, tag: str, fmt: str) -> str:
    q = r["quality"].get(f"{tag} {fmt}")
    if q is None:
        return "-"
    if "error" in q:
        return "ERR"
    if "acc" in q:
        base = r["quality"]["fp32 .onnx"].get("acc", 0.0)
        return f"{q['acc'] - base:+.1f}pt"
    return f"{q['agree']:.1f}"


def table(results: list[dict], *, quick: bool, tflite: bool, ort_target: str = "arm") -> None:
    print(f"\nedgekit compress --int8 on real models ({'quick' if quick else 'full'}); latency: plain runtime, 1 thread, "
          "batch 1, median of round-robin runs; x = ratio to fp32 (.onnx/.ort vs fp32 .onnx, .tflite vs fp32 .tflite); "
          f".ort built with --ort-target {ort_target}")
    print("quality: accuracy change vs fp32 where labelled (pt), else agreement with fp32 in % (judge per model)\n")
    head = (f"{'model':19s} {'run':6s} {'exit':>4s} {'time':>5s} {'MB':>6s} {'size×':>6s} {'onnx×':>6s} {'ort×':>6s} {'tfl×':>6s} "
            f"{'q.onnx':>7s} {'q.ort':>7s} {'q.tfl':>7s} {'left':>4s}  chose (.onnx/.ort) | last line")
    print(head)
    print("-" * len(head))
    for r in results:
        lat = r["latency_ms"]
        base = f"fp32 .onnx {_f(_num(lat.get('fp32 .onnx')), '.2f')} ms"
        if tflite:
            fp32 = r["runs"].get("fp32", {})
            base += f", fp32 .tflite {_f(_num(lat.get('fp32 .tflite')), '.2f')} ms (exit {fp32.get('code')}, {fp32.get('last_line', '')[:100]})"
        print(f"{r['model']:19s} {'fp32':6s} {'':>4s} {'':>5s} {r['sizes']['fp32 .onnx'] / MB:6.2f}  {base}  [{r['judge']}]")
        for tag in ("data", "nodata"):
            run = r["runs"][tag]
            chose = "/".join(run["chose"].get(f, "") or "-" for f in (".onnx", ".ort"))
            onnx_size = r["sizes"].get(f"{tag} .onnx")
            print(f"{'':19s} {tag:6s} {str(run['code']):>4s} {run['seconds']:5.0f} {_f(onnx_size / MB if onnx_size else None):>6s} "
                  f"{_f(size_ratio(r, tag, '.onnx'), '.3f'):>6s} {_f(ratio(r, tag, '.onnx')):>6s} {_f(ratio(r, tag, '.ort')):>6s} "
                  f"{_f(ratio(r, tag, '.tflite')):>6s} {_quality(r, tag, '.onnx'):>7s} {_quality(r, tag, '.ort'):>7s} "
                  f"{_quality(r, tag, '.tflite'):>7s} {len(run['left']):>4d}  {chose} | {run['last_line'][:90]}")
        for k, v in lat.items():
            if isinstance(v, str):
                print(f"{'':19s} {k} does not run plainly: {v}")


def _check(label: str, ok: bool, lines: list[tuple[bool, str]]) -> None:
    lines.append((ok, label))


def _model_checks(r: dict, out: list[tuple[bool, str]]) -> None:
    name = r["model"]
    for tag in ("data", "nodata"):
        run = r["runs"][tag]
        where = f"{name:19s} {tag:6s}"
        _check(f"{where} exit {run['code']} (0, or 3 = written but over --max-drop)", run["code"] in (0, 3), out)
        _check(f"{where} no 'internal error'", not run["internal_error"], out)
        _check(f"{where} nothing left in cwd/TMPDIR//tmp {run['left'][:4] if run['left'] else ''}", not run["left"], out)
        for fmt in FORMATS:
            x = ratio(r, tag, fmt)
            if x is not None:
                base = "float .tflite" if fmt == ".tflite" else "fp32 .onnx"
                label = f"{where} int8 {fmt:7s} {x:.2f}x {base} (<= 1.00x)"
                if r["cnn"]:
                    _check(label, x <= 1.0, out)
                else:
                    out.append((None, label + " [not a CNN: shown, not a target]"))  # type: ignore[arg-type]
            s = size_ratio(r, tag, fmt)
            big = r["sizes"].get("fp32 .tflite" if fmt == ".tflite" else "fp32 .onnx", 0) > MB
            if s is not None and big and fmt != ".ort":
                _check(f"{where} int8 {fmt:7s} size {s:.3f}x (<= 0.35x, model over 1 MB)", s <= 0.35, out)
            q = r["quality"].get(f"{tag} {fmt}")
            if q is not None:
                _check(f"{where} int8 {fmt:7s} quality {_quality(r, tag, fmt)} (drop <= 1 pt, or agreement >= 99 %)", _quality_ok(r, q), out)
        if tag == "data" and name in ARCH_TARGETS:
            x = ratio(r, tag, ".onnx")
            bound = ARCH_TARGETS[name]
            _check(f"{where} int8 .onnx {_f(x)}x fp32 (<= {bound:.2f}x){'' if x is not None else ': no int8 .onnx to time'}",
                   x is not None and x <= bound, out)


def _quality_ok(r: dict, q: dict) -> bool:
    if "error" in q:
        return False
    if "acc" in q:
        return r["quality"]["fp32 .onnx"]["acc"] - q["acc"] <= 1.0
    return q["agree"] >= 99.0


def targets(results: list[dict]) -> bool:
    """Print one PASS/FAIL line per target; True when all pass."""
    out: list[tuple[bool, str]] = []
    for r in results:
        _model_checks(r, out)
        for k, v in r["latency_ms"].items():
            if isinstance(v, str) and not k.startswith("fp32"):
                _check(f"{r['model']:19s} {k} opens in a plain runtime ({v[:80]})", False, out)
    onnx_all = [x for r in results for t in ("data", "nodata") if (x := ratio(r, t, ".onnx")) is not None]
    onnx_data = [x for r in results if (x := ratio(r, "data", ".onnx")) is not None]
    if onnx_all:
        med = statistics.median(onnx_all)
        _check(f"median int8 .onnx latency over the matrix {med:.2f}x fp32 ({len(onnx_all)} artifacts; <= 0.75x)", med <= 0.75, out)
    if onnx_data:
        out.append((None, f"median int8 .onnx latency with data {statistics.median(onnx_data):.2f}x ({len(onnx_data)})"))  # type: ignore[arg-type]
    crashes = sum(r["runs"][t]["code"] not in (0, 3) for r in results for t in ("data", "nodata"))
    internal = sum(r["runs"][t]["internal_error"] for r in results for t in ("data", "nodata"))
    _check(f"{crashes} runs failed (exit other than 0/3) of {2 * len(results)}", crashes == 0, out)
    _check(f"{internal} runs ended in 'internal error'", internal == 0, out)
    print("\ntargets:")
    for ok, label in out:
        print(f"  {'INFO' if ok is None else 'PASS' if ok else 'FAIL'}  {label}")
    passed = sum(ok is True for ok, _ in out)
    failed = sum(ok is False for ok, _ in out)
    print(f"\ntargets: {passed} PASS, {failed} FAIL")
    return failed == 0
