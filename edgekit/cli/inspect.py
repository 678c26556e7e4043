"""``edgekit inspect``: what a model or an output directory holds, without running anything heavy."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["inspect_cmd"]


@click.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_cmd(path: Path, as_json: bool) -> None:
    """Show PATH's signature and weights (.onnx), or its manifest summary (an output directory)."""
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=160)
    if path.is_dir():
        from device_agent.contract.manifest import ManifestError, load_manifest
        from edgekit.errors import InputError

        try:
            m = load_manifest(path, verify_files=True)
        except ManifestError as e:
            raise InputError(str(e)) from None
        info = {
            "name": m.name, "version": m.version, "created_at": m.created_at, "task": m.task,
            "inputs": [s.to_dict() for s in m.inputs], "outputs": [s.to_dict() for s in m.outputs],
            "artifacts": [{"file": a.file, "format": a.format, "precision": a.precision, "size_bytes": a.size_bytes,
                           **{k: v for k, v in m.metrics.get(a.file, {}).items() if k in ("accuracy", "agreement", "latency_p50_ms", "size_ratio")}}
                          for a in m.artifacts],
            "steps": [s["name"] for s in m.raw.get("steps", [])],
            "drift_features": len(m.features),
            "selftest_vectors": len((m.raw.get("selftest") or {}).get("vectors", [])),
            "signed": (path / "edgekit.json.sig").is_file(),
            "verified": "every artifact matches its size and sha256",
        }
    else:
        from edgekit.onnx_model import io_specs, load_onnx, weight_stats

        model = load_onnx(path)
        ins, outs = io_specs(model)
        stats = weight_stats(model)
        info = {
            "file": path.name, "size_bytes": path.stat().st_size,
            "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "inputs": [s.to_dict() for s in ins], "outputs": [s.to_dict() for s in outs],
            "weights": stats.to_dict(), "already_quantized": stats.is_quantized,
            "nodes": sum(1 for _ in model.graph.node),
        }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    t = Table(show_header=False, box=None)
    for k, v in info.items():
        t.add_row(f"[bold]{k}[/bold]", v if isinstance(v, str) else json.dumps(v))
    console.print(t)
