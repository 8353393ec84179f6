"""`cips-deploy compare` with a served model: the triton:HOST:PORT/NAME spec against the local engine."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from cips_deploy.cli import cli
from cips_deploy.errors import CipsError
from cips_deploy.models import DEMO_ENGINE

pytestmark = [pytest.mark.slow, pytest.mark.runtime]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from cips_deploy.exporters import triton_server
    from cips_deploy.exporters.triton import write_engine_repository

    try:
        triton_server.find_server()
        __import__("tritonclient.grpc")
    except (CipsError, ImportError, RuntimeError) as error:
        pytest.skip(f"no Triton server or client here: {error}")
    repo = tmp_path_factory.mktemp("compare-triton") / "repo"
    write_engine_repository(repo, DEMO_ENGINE, name="pano", backend="python")
    sockets = [socket.socket() for _ in range(2)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    http, grpc = (each.getsockname()[1] for each in sockets)
    for each in sockets:
        each.close()
    with triton_server.LocalServer(repo, http_port=http, grpc_port=grpc) as running:
        yield running


def test_a_served_model_compares_equal_to_its_engine(server):
    spec = f"triton:{server.grpc_url}/pano,source={DEMO_ENGINE}"
    result = CliRunner().invoke(cli, ["compare", spec, str(DEMO_ENGINE), "--size", "16x64", "--atol", "1e-6", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["backends"] == ["triton", "onnxruntime"] and report["max_abs"] <= 1e-6
    # Without source= the other side's file is what the server is checked against.
    result = CliRunner().invoke(cli, ["compare", f"triton:{server.grpc_url}/pano", str(DEMO_ENGINE), "--points", "300"])
    assert result.exit_code == 0, result.output
