"""Triton serving as a plugin: the ``triton`` render backend and the ``serve`` command.

Registered through ``register_backends`` and ``register_commands``, the hooks a third
party uses. Nothing heavy is imported here: tritonclient and the server module load only
when the backend is built or the command runs, so every other command starts as fast.
Serving an exported engine (``.onnx``, the bundled demo's by default) needs no torch; serving
a checkpoint exports it first, which needs the ``build`` extra.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections import deque
from pathlib import Path

import click

from cips_deploy.errors import CipsError
from cips_deploy.contracts.hookspecs import hookimpl

from .triton_backend import TritonBackend
from cips_deploy.contracts.command_options import real, whole


class _Stopped(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM, so that every ``finally`` cleans up."""


@click.command("serve")
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--http", "http", is_flag=True, default=False,
              help="Also offer Triton's HTTP endpoint, behind a proxy that checks each body's size and JSON nesting "
                   "(the bundled server's own parser can be crashed by one hostile request). Implied by --http-port.")
@click.option("--http-port", type=whole(1, 65535), default=8000, show_default=True, help="HTTP port on 127.0.0.1 (offers HTTP).")
@click.option("--grpc-port", type=whole(1, 65535), default=8001, show_default=True, help="gRPC port on 127.0.0.1.")
@click.option("--name", default=None, help="With a checkpoint: the served model's name (default: the file's name).")
@click.option("--startup-timeout", type=real(0.0, 86400.0, open_low=True), default=120.0, show_default=True, help="Seconds to wait for the server to be ready.")
@click.pass_context
def serve(ctx: click.Context, source: Path | None, http: bool, http_port: int, grpc_port: int, name: str | None,
          startup_timeout: float) -> None:
    """Serve a checkpoint or a Triton model repository on a local Triton server (127.0.0.1 only).

    SOURCE is an exported engine (.onnx, with the engines `export` wrote beside it; default:
    the bundled demo panorama's), a checkpoint (exported first; needs the build extra), both
    put into a temporary repository with the Python backend, or a repository folder from
    `export --triton-repo`. The server is the CPU one bundled in nvidia-pytriton (the `serve` extra)
    or a tritonserver on PATH. It speaks gRPC; HTTP only with --http (or --http-port), through a
    bounded proxy (body size and JSON nesting checked before the server sees it). A server
    that dies is started again, with its cause on stderr. Ctrl-C or SIGTERM stops it and removes
    everything it made.

    \b
    Example:
      cips-deploy serve model.safetensors --grpc-port 8001 &
      cips-deploy render --checkpoint model.safetensors --backend triton --backend-option url=127.0.0.1:8001
    """
    from cips_deploy.models import DEMO_ENGINE, DEMO_MODEL

    from .triton_server import LocalServer, new_workspace

    if not 0 < startup_timeout <= 3600:
        raise CipsError(f"--startup-timeout must be 0 to 3600 seconds, not {startup_timeout!r}.")
    # A port given on the command line asks for HTTP as plainly as --http does.
    if not (http or ctx.get_parameter_source("http_port") == click.core.ParameterSource.COMMANDLINE):
        http_port = None
    if source is None:
        source = DEMO_ENGINE if DEMO_ENGINE.is_file() else DEMO_MODEL
    if source.is_dir() and name is not None:
        raise CipsError("--name names the model exported from a checkpoint; a repository's models keep their names.")
    if not source.exists():
        raise CipsError(f"No such checkpoint or repository: {source}.")
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = None
    workspace = None
    stopped = False
    try:
        workspace = new_workspace()
        repo = _repository(source, workspace, name)
        server = LocalServer(repo, http_port=http_port, grpc_port=grpc_port, workspace=workspace,
                             startup_timeout=startup_timeout)
        server.start()
        _banner(server, repo, source)
        _keep_serving(server)
    except _Stopped:
        stopped = True
    finally:
        for sig in previous:  # a second signal must not interrupt the cleanup
            signal.signal(sig, signal.SIG_IGN)
        if server is not None:
            server.stop()
        elif workspace is not None:
            shutil.rmtree(workspace, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        click.echo("Stopped: the server, its stubs and its temporary files are gone.", err=True)


# A server that dies this often within RESTART_WINDOW seconds is not restarted again: a
# crash at every start (a broken repository) must end serve, not loop forever.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


def _keep_serving(server) -> None:
    """Watch the server; restart it when it dies, saying on stderr why it died (from its own
    exit status and log). Ends in one sentence when it keeps dying."""
    deaths: deque[float] = deque()
    while True:
        while server.alive():
            time.sleep(0.2)
        pid, cause = server.process.pid, server.death_cause()
        now = time.monotonic()
        deaths.append(now)
        while deaths and now - deaths[0] > RESTART_WINDOW:
            deaths.popleft()
        if len(deaths) > MAX_RESTARTS:
            raise CipsError(f"The Triton server died {len(deaths)} times within {RESTART_WINDOW:.0f} s, so serve gave up: {cause}.")
        click.echo(f"The Triton server (pid {pid}) died: {cause}. Restarting it.", err=True)
        server.restart()
        click.echo(f"Serving again on a restarted Triton server (pid {server.process.pid}).", err=True)


def _repository(source: Path, workspace: Path, name: str | None) -> Path:
    """The repository to serve: ``source`` itself, or one written into the workspace from an
    engine (no torch) or a checkpoint (exported first)."""
    if source.is_dir():
        return source
    repo = workspace / "repository"
    if source.suffix == ".onnx":
        from .triton import write_engine_repository

        write_engine_repository(repo, source, name=name, backend="python")
        return repo
    from cips_deploy._compat import require_build_extra

    require_build_extra(f"Serving the checkpoint {source.name} (it is exported first)")
    from .pipeline import export_checkpoint

    export_checkpoint(source, engine="onnx", triton_repo=repo, triton_model_name=name, triton_backend="python")
    return repo


def _banner(server, repo: Path, source: Path) -> None:
    models = sorted(folder.parent.name for folder in Path(repo).glob("*/config.pbtxt"))
    click.echo(f"Serving {', '.join(models)} from {source} on a local Triton server (pid {server.process.pid}).")
    click.echo(f"  gRPC: {server.grpc_url}")
    click.echo(f"  HTTP: http://{server.http_url}" if server.http_url else "  HTTP: off (pass --http to offer it)")
    if not source.is_dir():
        click.echo(f"  render: cips-deploy render --checkpoint {source} --backend triton --backend-option url={server.grpc_url}")
    click.echo("Stop with Ctrl-C (or SIGTERM).")


def _stop(signum, frame) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise _Stopped()


@hookimpl
def register_backends(register):
    register(TritonBackend)


@hookimpl
def register_commands(cli):
    cli.add_command(serve)
