"""``cips-deploy inspect FILE`` (and its alias ``info``): what a model file or folder is.

Every format the tool reads or writes, told apart by suffix, then by what a folder holds:

- a checkpoint (our ``.safetensors``, an official CIPS ``.pt`` or CREPS ``.pkl``): loaded by the
  safe readers of the families (the build extra; without torch, one sentence says so);
- an ``.onnx`` engine (external data too), a ``.plan`` and its sidecar, a Triton model
  repository, an exported web site, a folder of engines: read without torch
  (``exporters/inspection.py``; the ONNX graph without even the onnx package).

Human-readable rows by default, ``--json`` for machines. The keys ``info`` always printed
(architecture, coordinate_space, training_resolution, parameters, provenance, ...) keep
their names; docs/tools.md lists the rest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import click

from cips_deploy.contracts.limits import strict_json
from cips_deploy.cli.group import cli

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".pkl")
HELP = ("Describe a model file or folder: a checkpoint (ours or official), an .onnx engine, a .plan, a Triton "
        "repository, a web site or an engine folder: inputs and outputs, opsets, metadata, operators, parameters, "
        "FLOPs per point, size on disk.")


def describe(path: Path) -> dict[str, Any]:
    """The facts of ``path`` (see the module docstring for which reader answers)."""
    from cips_deploy.exporters import inspection

    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return inspection.onnx_facts(path)
    if suffix == ".plan":
        return inspection.plan_facts(path)
    if path.is_dir() and suffix not in CHECKPOINT_SUFFIXES:  # a folder named like a checkpoint is refused as one
        from cips_deploy.exporters.web.site import is_site

        if is_site(path):
            return inspection.site_facts(path)
        if inspection.is_triton_repository(path):
            return inspection.triton_facts(path)
        return inspection.folder_facts(path)
    from cips_deploy.cli.checkpoints import checkpoint_facts

    return checkpoint_facts(path)


def show(facts: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(strict_json(facts))
        return
    rows = list(_rows(facts))
    width = min(40, max(len(key) for key, _ in rows))
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def _inspect(path: Path, as_json: bool) -> None:
    show(describe(path), as_json)


inspect = cli.command("inspect", help=HELP)(_inspect)
info = click.Command("info", callback=inspect.callback, params=inspect.params,
                     help=f"The same as `inspect` (its first name). {HELP}", short_help="The same as `inspect`.")
cli.add_command(info)


# --------------------------------------------------------------------------- human-readable rows

def _rows(facts: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in facts.items():
        name = f"{prefix}{key}"
        if key in ("inputs", "outputs") and isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
            for tensor in value:
                yield name, _tensor(tensor)
        elif key == "operators" and isinstance(value, dict):
            yield name, ", ".join(f"{op} {count}" for op, count in value.items()) or "none"
        elif key == "config" and isinstance(value, dict):
            yield name, json.dumps(value)
        elif isinstance(value, dict) and value:
            yield from _rows(value, f"{name}.")
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                yield from _rows(item, f"{name}[{index}].")
        else:
            yield name, _value(key, value)


def _tensor(tensor: dict[str, Any]) -> str:
    shape = tensor.get("shape", tensor.get("dims"))
    dims = "unknown" if not isinstance(shape, list) else "[" + ", ".join("?" if size is None else str(size) for size in shape) + "]"
    return f"{tensor.get('name')}  {tensor.get('dtype')}  {dims}"


def _value(key: str, value: Any) -> str:
    if value is None:
        return "not determinable from the widths" if key == "channel_multiplier" else "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,} ({_bytes(value)})" if key.endswith("bytes") else f"{value:,}"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) if value else "none"
    if isinstance(value, dict):
        return "none"
    return str(value)


def _bytes(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "bytes" else f"{count} bytes"
        count /= 1024
    return ""
