"""Helpers of the attack tests (tests/attacks/test_attacks_*.py): run a command, read its one sentence,
and check that nothing was written outside the destination and nothing was left behind."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from cips_deploy.cli import cli

CLI = str(Path(sys.executable).parent / "cips-deploy")


def files_under(folder: Path) -> set[str]:
    """Every path under ``folder`` (hidden ones included), relative, as strings."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def refused(
    args: list[str], message: str, *, cwd: Path, expect_written: set[str] = frozenset(), progress: bool = False
) -> str:
    """Run the CLI in-process in ``cwd``; assert exit 1, one ``Error:`` line holding ``message``,
    no traceback and no file created or left in ``cwd`` (``expect_written`` excepted). Returns the line.

    ``progress``: the command may have printed progress before failing; the error is its last line."""
    before = files_under(cwd)
    result = invoke(args, cwd)
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    if progress:
        lines = lines[-1:]
    assert "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0], lines[0]
    assert files_under(cwd) == before | set(expect_written), files_under(cwd) ^ before
    return lines[0]


def invoke(args: list[str], cwd: Path):
    """The CLI in-process, run in ``cwd``: click's Result."""
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, [str(arg) for arg in args])
    finally:
        os.chdir(previous)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real executable in a subprocess (for import-time plugins and signals)."""
    return subprocess.run(
        [CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def rewrite_checkpoint(source: Path, destination: Path, *, config_text: str | None = None, **config_changes) -> Path:
    """A copy of a cips-deploy checkpoint with its config JSON changed (or replaced by ``config_text``)."""
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if config_text is None:
        config = json.loads(metadata["config"])
        config.update(config_changes)
        config_text = json.dumps(config, allow_nan=True)
    metadata["config"] = config_text
    save_file(tensors, str(destination), metadata=metadata)
    return destination


def sparse_safetensors(destination: Path, metadata: dict[str, str], declared_bytes: int) -> Path:
    """A safetensors file whose header declares ``declared_bytes`` of tensor data, made sparse on disk."""
    count = declared_bytes // 4
    header = json.dumps(
        {"__metadata__": metadata, "x": {"dtype": "F32", "shape": [count], "data_offsets": [0, 4 * count]}}
    ).encode()
    with open(destination, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)))
        handle.write(header)
        handle.truncate(8 + len(header) + 4 * count)
    return destination


def fake_distribution(site: Path, name: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    """Write modules and a minimal ``.dist-info`` with entry points of the group ``cips_deploy`` into ``site``.

    importlib.metadata discovers it from sys.path (PYTHONPATH=site) exactly as a pip install.
    """
    site.mkdir(parents=True, exist_ok=True)
    for module, code in modules.items():
        (site / f"{module}.py").write_text(code)
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = ["[cips_deploy]"] + [f"{key} = {value}" for key, value in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site
