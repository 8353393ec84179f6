"""Attack pass round 3b (issue 26): variants the issue did not list.

Plugins whose attributes fail after registration (a topology's ``working_bytes_per_pixel``,
its ``name`` read again, a chunker's ``settings``), a third-party family whose module prints
or fails at its first import, a legacy storage blob that claims more elements than it holds,
``serve-web --port`` through the one number parser, one output guard for training run folders
and Triton repositories (the owner marker: forged, linked, a folder), and what the hostile-file
pass found. Each ends in one sentence naming the culprit, and nothing the user had is lost.
"""

from __future__ import annotations

import io
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cips_deploy import hookimpl
from cips_deploy.cli import cli
from cips_deploy.contracts import families
from cips_deploy.contracts.chunking import Chunker
from cips_deploy.contracts.families import Family
from cips_deploy.contracts.limits import PickleRefused, check_torch_stream
from cips_deploy.contracts.topology import GridLayout, Topology
from cips_deploy.errors import CipsError
from cips_deploy.media.video import Animation, check_animation, frame_parameters
from cips_deploy.models import DEMO_ENGINE
from cips_deploy.plugins.flat import Flat
from cips_deploy.runtime.plugin_manager import PluginWarning, load_registry
from cips_deploy.runtime.render import render_detailed

from ..helpers import coordinates_backend


def _registry(*plugins):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        return load_registry(entry_points=False, extra_plugins=[("coordinates", coordinates_backend), *plugins])


# --------------------------------------------------------------------------- attributes read after registration


class _WorkingBytesFails(Flat):
    name = "no-working-bytes"

    @property
    def working_bytes_per_pixel(self):
        raise _Unprintable()


class _WorkingBytesNaN(Flat):
    name = "nan-working-bytes"
    working_bytes_per_pixel = float("nan")


class _Unprintable(RuntimeError):
    def __str__(self):
        raise ValueError("no str")


class _NameLater(Topology):
    """A name that answers at registration, then fails: messages must use the registered name."""

    description = "Answers its name once."
    coordinate_spaces = ("plane", "cylinder")
    parameters = Flat.parameters
    reads = 0

    @property
    def name(self):
        type(self).reads += 1
        if type(self).reads > 1:
            raise SystemExit("the name was read again")
        return "later"

    def layout(self, request):
        return GridLayout(np.linspace(-1, 1, request.width, dtype=np.float32), np.linspace(-1, 1, request.height, dtype=np.float32))


class _SettingsFail(Chunker):
    name = "no-settings"
    description = "Its settings fail when read."

    @property
    def settings(self):
        raise KeyError("settings")

    def spans(self, request):
        return [(0, request.n_points)]


class _AttributesLater(Flat):
    """Coordinate spaces and parameters that answer at registration, then fail."""

    name = "attributes-later"
    reads = {"coordinate_spaces": 0, "parameters": 0}
    fails = "coordinate_spaces"

    def _read(self, attribute, value):
        type(self).reads[attribute] += 1
        if attribute == type(self).fails and type(self).reads[attribute] > 1:
            raise SystemExit(f"{attribute} gone")
        return value

    @property
    def coordinate_spaces(self):
        return self._read("coordinate_spaces", ("plane", "cylinder"))

    @property
    def parameters(self):
        return self._read("parameters", Flat.parameters)


class _Registers:
    @hookimpl
    def register_topologies(self, register):
        register(_WorkingBytesFails())
        register(_WorkingBytesNaN())
        register(_NameLater())
        register(_AttributesLater())

    @hookimpl
    def register_chunkers(self, register):
        register(_SettingsFail())


@pytest.fixture
def registry():
    _NameLater.reads = 0
    return _registry(("fragile", _Registers()))


@pytest.mark.runtime
@pytest.mark.parametrize("topology, message", [
    ("no-working-bytes", "Topology 'no-working-bytes' (plugin 'fragile') failed in reading working_bytes_per_pixel (_Unprintable"),
    ("nan-working-bytes", "Topology 'nan-working-bytes' (plugin 'fragile') failed in reading working_bytes_per_pixel (ValueError"),
])
def test_a_topology_attribute_that_fails_in_the_memory_check_is_named(registry, topology, message):
    with pytest.raises(CipsError) as caught:
        render_detailed(coordinates_backend.Coordinates(None), topology, 4, 4, registry=registry)
    assert str(caught.value).startswith(message), caught.value


@pytest.mark.runtime
@pytest.mark.parametrize("fails, message", [
    ("coordinate_spaces", "Topology 'attributes-later' (plugin 'fragile') failed in reading coordinate_spaces (SystemExit: coordinate_spaces gone)"),
    ("parameters", "The attributes-later topology's parameters could not be read (SystemExit: parameters gone)"),
])
def test_topology_attributes_that_fail_after_registration_are_one_sentence(fails, message):
    _AttributesLater.fails = fails
    _AttributesLater.reads = {"coordinate_spaces": 0, "parameters": 0}
    registry = _registry(("fragile", _Registers()))
    with pytest.raises(CipsError) as caught:
        render_detailed(coordinates_backend.Coordinates(None), "attributes-later", 4, 4, registry=registry)
    assert str(caught.value).startswith(message), caught.value


@pytest.mark.runtime
def test_a_chunkers_settings_that_fail_are_named(registry):
    with pytest.raises(CipsError, match=r"Chunker 'no-settings' \(plugin 'fragile'\) failed in reading settings \(KeyError"):
        render_detailed(coordinates_backend.Coordinates(None), "flat", 4, 4, registry=registry, chunker="no-settings", chunk_size=4)


@pytest.mark.runtime
def test_messages_use_the_registered_name_not_the_items(registry):
    assert registry.topologies["later"].name == "later"
    # a bad parameter value: the sentence names the topology without asking it again
    with pytest.raises(CipsError, match="later") as caught:
        render_detailed(coordinates_backend.Coordinates(None), "later", 4, 4, registry=registry, u_min="left")
    assert "read again" not in str(caught.value)
    with pytest.raises(CipsError, match="The later topology has no parameter angle"):
        render_detailed(coordinates_backend.Coordinates(None), "later", 4, 4, registry=registry, angle=3)
    rendered = render_detailed(coordinates_backend.Coordinates(None), "later", 4, 6, registry=registry, u_min=-0.5)
    assert rendered.image.shape == (4, 6, 3)
    # a video's checks and frames too
    animation = Animation(mode="walk", seeds=(0, 1), frames=3, topology="later", ramps={"u_max": ("0.5", "x")})
    with pytest.raises(CipsError, match="later"):
        check_animation(animation, "plane", registry)
    animation = Animation(mode="walk", seeds=(0, 1), frames=3, topology="later", ramps={"u_max": ("0.5", "1")})
    check_animation(animation, "plane", registry)
    assert frame_parameters(animation, 2, registry)["u_max"] == 1.0


# --------------------------------------------------------------------------- a family's module, imported on first use


class _ThirdFamily(Family):
    name = "Third"
    archs = {"third": "Third"}
    presets = ("third-tiny",)

    def preset_config(self, preset, arch, coordinate_space, **overrides):
        raise CipsError("not needed here")

    def activation_floats_per_point(self, config, per_point_style=False):
        return 1


def _family_plugin(generator: str):
    class Plugin:
        @hookimpl
        def register_families(self, register):
            family = _ThirdFamily()
            family.generator = generator
            register(family)

    return Plugin()


@pytest.fixture
def family_modules(tmp_path, monkeypatch):
    (tmp_path / "loud_family_module.py").write_text(textwrap.dedent("""
        import os, sys
        print("python print at import")
        os.write(1, b"fd write at import\\n")
        class Gen:
            pass
        """))
    (tmp_path / "raising_family_module.py").write_text("raise SystemExit(0)\n")
    (tmp_path / "interrupting_family_module.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("loud_family_module", "raising_family_module", "interrupting_family_module"):
        sys.modules.pop(name, None)
    load_registry(entry_points=False)  # the families table and its importer back to the built-in ones


@pytest.mark.runtime
def test_a_family_module_that_prints_at_import_keeps_stdout_clean(family_modules, capfd):
    registry = _registry(("loud-family", _family_plugin("loud_family_module:Gen")))
    capfd.readouterr()
    cls = families.family_of("third").generator_class()
    assert cls.__name__ == "Gen" and registry.families["Third"].plugin == "loud-family"
    out, err = capfd.readouterr()
    assert out == ""
    assert "Plugin 'loud-family' printed while importing family 'Third''s generator: python print at import" in err
    assert "Plugin 'loud-family' printed while importing family 'Third''s generator: fd write at import" in err


@pytest.mark.runtime
@pytest.mark.parametrize("module, cause", [("raising_family_module", "SystemExit: 0"),
                                           ("interrupting_family_module", "KeyboardInterrupt"),
                                           ("no_such_family_module", "ModuleNotFoundError"),
                                           ("loud_family_module:NoSuchClass", "AttributeError"),
                                           (None, "AttributeError")])  # a generator that is not text
def test_a_family_module_that_fails_at_import_is_named(family_modules, module, cause):
    generator = None if module is None else module if ":" in module else f"{module}:Gen"
    _registry(("bad-family", _family_plugin(generator)))
    with pytest.raises(CipsError) as caught:
        families.family_of("third").generator_class()
    assert str(caught.value).startswith(f"Family 'Third' (plugin 'bad-family') failed in importing its generator ({cause}")


# --------------------------------------------------------------------------- a legacy storage's claimed size


def _legacy_blob(values) -> bytes:
    """A storage as the official pickles nest it: a legacy torch.save stream of ``values``' storage."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated
        torch.save(values.storage(), buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def _claiming(blob: bytes, count: int, elements: int) -> bytes:
    """``blob`` (a storage of ``elements`` values) with its persistent id claiming ``count`` instead."""
    old = b"K" + bytes([elements]) + b"N"
    assert blob.count(old) == 1
    return blob.replace(old, b"\x8a\x08" + count.to_bytes(8, "little") + b"N")


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "uint8"])
def test_real_legacy_storages_pass(dtype):
    import torch

    dtype = getattr(torch, dtype)
    for values in (torch.ones(3, dtype=dtype), torch.zeros(0, dtype=dtype)):
        check_torch_stream(io.BytesIO(_legacy_blob(values)), slack=0)


@pytest.mark.parametrize("count", [2**40, 2**62, 4])  # 4 floats is 16 bytes; the blob holds 12
def test_a_legacy_storage_claiming_more_than_it_holds_is_refused_before_allocating(count):
    import torch

    blob = _claiming(_legacy_blob(torch.ones(3)), count, 3)
    with pytest.raises(PickleRefused, match="claims .* of tensor storage but holds"):
        check_torch_stream(io.BytesIO(blob), slack=0)


def test_a_truncated_legacy_storage_is_refused():
    import torch

    blob = _legacy_blob(torch.ones(3, dtype=torch.float64))
    with pytest.raises(PickleRefused, match="claims 32 bytes of tensor storage but holds 31 bytes"):
        check_torch_stream(io.BytesIO(blob[:-1]), slack=0)


def test_a_snapshot_whose_storage_claims_a_terabyte_is_refused_by_info(tmp_path, official_creps_dir):
    import torch

    from .test_attacks_pickles import KWARGS, _SourceReader, assert_refused, generator, official_tree, parameter, snapshot

    with open(official_creps_dir / "creps_r16_snapshot.pkl", "rb") as handle:
        source = _SourceReader(handle).load()["G_ema"]["module_src"]
    blob = _claiming(_legacy_blob(torch.zeros(3)), 2**38, 3)  # 2**38 floats: 1 TiB
    tree = official_tree(source, KWARGS, replace={"mapping.fc0.weight": parameter((3,), (1,), blob=blob)})
    hostile = snapshot(tmp_path / "claims.pkl", generator(source, modules=tree))
    scratch = tmp_path / "runs"
    scratch.mkdir()
    assert_refused(hostile, "claims 1,024.0 GiB of tensor storage", scratch)


# --------------------------------------------------------------------------- serve-web --port


@pytest.mark.runtime
@pytest.mark.parametrize("port, message", [("65536", "--port must be at most 65,535"), ("-1", "--port must be at least 0"),
                                           ("1e3", "is not a whole number"), ("99999999999999999999999", "--port must be at most")])
def test_serve_web_port_goes_through_the_number_parser(tmp_path, port, message):
    result = CliRunner().invoke(cli, ["serve-web", str(tmp_path), "--port", port])
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
    assert message in result.output, result.output


# --------------------------------------------------------------------------- one output guard: training run folders


TRAIN = ["--resolution", "16", "--batch", "2", "--checkpoint-every", "2", "--sample-every", "1000", "--steps", "1"]


def _user_run_folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A folder of the user's own that happens to hold files named like a training's."""
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "generator.safetensors").write_bytes(b"the user's own generator")
    (run / "log.jsonl").write_text('{"step": 7}\n')
    (run / "samples" / "step-0000007.png").write_bytes(b"the user's picture")
    return run, _snapshot(tmp_path)


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        found[key] = ("link:" + str(path.readlink())) if path.is_symlink() else path.read_bytes() if path.is_file() else "folder"
    return found


def _forge(run: Path, how: str, tmp_path: Path) -> None:
    from cips_deploy.runtime.atomic import MARKER, MARKER_TEXT
    from cips_deploy.train.run_files import RUN_MARKER_TEXT

    if how == "another output's marker":  # a Deep Zoom pyramid's marker, not a training's
        (run / MARKER).write_text(MARKER_TEXT)
    elif how == "a link to a real marker":
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / MARKER).write_text(RUN_MARKER_TEXT)
        (run / MARKER).symlink_to(tmp_path / "real" / MARKER)
    elif how == "a marker folder":
        (run / MARKER).mkdir()
    elif how == "a marker with more text":
        (run / MARKER).write_text(RUN_MARKER_TEXT + "and more\n")


@pytest.mark.parametrize("how", [None, "another output's marker", "a link to a real marker", "a marker folder",
                                 "a marker with more text"])
def test_force_never_replaces_run_files_in_a_folder_no_training_marked(images, tmp_path, how):
    from ..helpers.attack_tools import refused

    run, _ = _user_run_folder(tmp_path)
    if how is not None:
        _forge(run, how, tmp_path)
    before = _snapshot(tmp_path)
    refused(["train", str(images), "--out", "run", "--force", *TRAIN], "was not written by cips-deploy", cwd=tmp_path)
    assert _snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_training_marks_its_folder_and_force_then_replaces_only_its_files(images, tmp_path):
    from cips_deploy.runtime.atomic import MARKER, marker_problem
    from cips_deploy.train.run_files import RUN_MARKER_TEXT

    from ..helpers.attack_tools import invoke

    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("the user's notes")  # a folder of the user's, used for a run
    first = invoke(["train", str(images), "--out", "run", *TRAIN], tmp_path)
    assert first.exit_code == 0, first.output
    assert marker_problem(run, RUN_MARKER_TEXT) is None
    again = invoke(["train", str(images), "--out", "run", "--force", *TRAIN], tmp_path)
    assert again.exit_code == 0, again.output
    assert (run / "notes.txt").read_text() == "the user's notes" and (run / MARKER).is_file()


# --------------------------------------------------------------------------- one output guard: Triton repositories


def _repository(repo: Path, **options):
    from cips_deploy.exporters.triton import write_engine_repository

    return write_engine_repository(repo, DEMO_ENGINE, name="pano", backend="python", **options)


@pytest.mark.runtime
def test_a_written_model_folder_is_marked_and_replaced_only_with_force(tmp_path):
    from cips_deploy.exporters.triton import model_folder_owner

    written = _repository(tmp_path / "repo")
    assert written and all(model_folder_owner(folder) is None for folder in written)
    with pytest.raises(CipsError, match="already exists; pass --force to replace it"):
        _repository(tmp_path / "repo")
    (written[0] / "config.pbtxt").write_text("stale")
    _repository(tmp_path / "repo", overwrite=True)
    assert (written[0] / "config.pbtxt").read_text().startswith('name: "pano"')


def _plant(repo: Path, how: str, elsewhere: Path) -> None:
    from cips_deploy.runtime.atomic import MARKER, MARKER_TEXT

    folder = repo / "pano"
    if how == "a hand-written model folder":
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text('name: "pano"\nbackend: "python"\n')
        (folder / "1" / "model.py").write_text("# the user's own model\n")
    elif how == "a forged marker beside the user's notes":
        _repository(repo)
        (folder / "NOTES.md").write_text("the user's notes")
    elif how == "a link inside the version folder":
        _repository(repo)
        (folder / "1" / "extra.onnx").symlink_to(elsewhere / "precious.onnx")
    elif how == "a forged marker in the user's folder, linked away":
        (folder / "1").mkdir(parents=True)
        (folder / MARKER).write_text(MARKER_TEXT)
        (folder / "config.pbtxt").symlink_to(elsewhere / "precious.onnx")
    elif how == "the mapping folder is the user's":
        (repo / "pano_mapping" / "1").mkdir(parents=True)
        (repo / "pano_mapping" / "config.pbtxt").write_text("the user's mapping")


@pytest.mark.runtime
@pytest.mark.parametrize("how", ["a hand-written model folder", "a forged marker beside the user's notes",
                                 "a link inside the version folder", "a forged marker in the user's folder, linked away",
                                 "the mapping folder is the user's"])
def test_force_never_replaces_a_model_folder_cips_deploy_did_not_write(tmp_path, how):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.onnx").write_bytes(b"precious")
    (tmp_path / "repo").mkdir()
    _plant(tmp_path / "repo", how, elsewhere)
    before = _snapshot(tmp_path)
    with pytest.raises(CipsError, match="was not written by cips-deploy .*so --force does not replace it"):
        _repository(tmp_path / "repo", overwrite=True)
    assert _snapshot(tmp_path) == before


@pytest.mark.runtime
def test_a_repository_under_a_missing_folder_is_refused_and_nothing_is_created(tmp_path):
    with pytest.raises(CipsError, match="does not exist"):
        _repository(tmp_path / "missing" / "deeper" / "repo")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- what the hostile-file pass found


@pytest.mark.runtime
@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_serve_web_never_opens_what_is_not_a_regular_file(tmp_path, kind):
    """A FIFO in the site blocked the request's thread forever (the client hung); now a 404."""
    import json
    import os
    import threading
    import urllib.error
    import urllib.request

    from cips_deploy.exporters.web.server import make_server
    from cips_deploy.exporters.web.site import SITE_FORMAT

    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text(json.dumps({"format": SITE_FORMAT}))
    (site / "page.txt").write_text("served")
    if kind == "fifo":
        os.mkfifo(site / "model.onnx")
    else:
        (site / "model.onnx").mkdir()
        os.mkfifo(site / "model.onnx" / "index.html")  # a folder's page that is a FIFO
    server = make_server(site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/page.txt", timeout=10) as answer:
            assert answer.read() == b"served"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{base}/model.onnx", timeout=10)
        assert caught.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.runtime
@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_serve_reads_a_repositorys_configs_only_when_they_are_small_regular_files(tmp_path, kind):
    """A FIFO config.pbtxt hung `serve REPO` before the server started; a link to /dev/zero flooded it."""
    import os

    from cips_deploy.exporters import triton_server

    model = tmp_path / "repo" / "m"
    model.mkdir(parents=True)
    config = model / "config.pbtxt"
    if kind == "fifo":
        os.mkfifo(config)
    elif kind == "device":
        config.symlink_to("/dev/zero")
    else:
        with open(config, "wb") as handle:
            handle.truncate(triton_server.MAX_CONFIG_BYTES + 1)

    class Install:
        def available_backends(self):
            return {"python"}

    with pytest.raises(CipsError, match="config.pbtxt is (a FIFO|a device|more than)"):
        triton_server.missing_backends(tmp_path / "repo", Install())


@pytest.mark.parametrize("out", ["", " ", "\t"])
def test_an_empty_out_is_refused_not_the_current_folder(images, tmp_path, out):
    from ..helpers.attack_tools import refused

    refused(["train", str(images), "--out", out, *TRAIN], "names no folder", cwd=tmp_path)


@pytest.mark.runtime
def test_a_repository_that_is_a_dangling_link_is_one_clear_sentence(tmp_path):
    (tmp_path / "repo").symlink_to(tmp_path / "gone")
    with pytest.raises(CipsError, match="a symbolic link to a folder that does not exist"):
        _repository(tmp_path / "repo")
    assert not (tmp_path / "gone").exists()


# ------------------------------------------------------------------ a file where a folder should be


@pytest.mark.runtime
@pytest.mark.parametrize("name", ["afile/x.png", "afile/deeper/x.png"])
def test_a_path_under_a_file_names_the_file_not_a_missing_folder(tmp_path, monkeypatch, name):
    from cips_deploy.contracts.command_options import output_location

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("the user's")
    with pytest.raises(CipsError) as caught:
        output_location(name)
    assert str(caught.value) == f"Cannot write {name}: afile is not a folder."
    with pytest.raises(CipsError, match="the folder nope does not exist"):
        output_location("nope/x.png")
    assert (tmp_path / "afile").read_text() == "the user's" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
