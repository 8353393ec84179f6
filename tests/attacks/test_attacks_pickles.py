"""Attack family: hostile official pickles (issue 26). No code runs from them (an allow-list
unpickler, weights_only loads), but the structure alone could crash, hang or flood the reader:
a dict key nested 300,000 deep, a "billion laughs" of shared memo entries, a module tree that
is a DAG, stride-0 tensors claiming billions of elements, zip bombs inside storage blobs, config
values of the wrong type. Each must end in exit 1 and one ``Error:`` sentence, in bounded time
and memory: every file that once crashed, hung or flooded is read by the real executable in a
subprocess with a timeout and an address-space limit, and its peak resident memory is checked.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import cips_deploy
from cips_deploy.contracts import limits
from cips_deploy.contracts.limits import MAX_PICKLE_DEPTH, MAX_PICKLE_EXPANDED, PickleRefused, check_pickle
from cips_deploy.errors import CipsError

from ..helpers.attack_tools import CLI, refused

# The CLI with torch imported maps about 3 GiB of address space and holds about 400 MiB; the
# floods these files caused reached 1.3 to 6.5 GB resident.
ADDRESS_SPACE = 6 << 30
PEAK_RSS = 1 << 30
SECONDS = 90  # a refusal takes a few seconds (most of it importing torch); the hangs never ended

# ----------------------------------------------------------------- running the CLI, bounded


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_info(path: Path, scratch: Path) -> tuple[int, str, int]:
    """``cips-deploy info path`` in a subprocess under RLIMIT_AS, killed after SECONDS:
    (exit status, output, peak resident bytes of that process)."""
    log = scratch / f"{path.name}.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [CLI, "info", str(path)], cwd=scratch, stdout=sink, stderr=subprocess.STDOUT,
            preexec_fn=_limit_address_space, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        deadline = time.monotonic() + SECONDS
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)  # wait4: this child's own peak memory
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                os.wait4(process.pid, 0)
                process.returncode = -9
                pytest.fail(f"`cips-deploy info {path.name}` ran longer than {SECONDS} s (a hang)")
            time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, log.read_text(errors="replace"), usage.ru_maxrss * 1024


def assert_refused(path: Path, message: str, scratch: Path) -> str:
    """Exit 1, one ``Error:`` line holding ``message``, no traceback, bounded memory."""
    code, output, peak = run_info(path, scratch)
    lines = output.strip().splitlines()
    assert code == 1, f"exit {code}: {output[-2000:]}"
    assert "Traceback" not in output and len(lines) == 1 and lines[0].startswith("Error: "), output[-2000:]
    assert message in lines[0], lines[0]
    assert peak < PEAK_RSS, f"peak resident memory {peak / 2**20:,.0f} MiB"
    return lines[0]


@pytest.fixture
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


# ------------------------------------------------------------------------ writing pickles


class Global:
    """A global by name, pickled as GLOBAL without importing anything."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args):  # save_reduce insists on a callable
        raise AssertionError("only ever pickled")


class Call:
    """An object pickled as REDUCE(func, args), then SETITEMS of ``items`` and BUILD of ``state``."""

    def __init__(self, func: Global, args: tuple = (), state=None, items: dict | None = None) -> None:
        self.func, self.args, self.state, self.items = func, args, state, items

    def __reduce__(self):
        return self.func, tuple(self.args), self.state, None, iter(self.items.items()) if self.items else None


class Raw:
    """Opcodes written as they are (they must push exactly one object)."""

    def __init__(self, ops: bytes) -> None:
        self.ops = ops


class Pickler(pickle._Pickler):
    """The pure-Python pickler, writing :class:`Global` as the GLOBAL opcode and :class:`Raw` as is."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_named_global(self, obj: Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def save_raw(self, obj: Raw) -> None:
        self.write(obj.ops)

    dispatch[Global] = save_named_global
    dispatch[Raw] = save_raw


def dumps(obj) -> bytes:
    buffer = io.BytesIO()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # the pure-Python pickler recurses about 15 frames a module
    try:
        Pickler(buffer, protocol=4).dump(obj)
    finally:
        sys.setrecursionlimit(limit)
    return buffer.getvalue()


PERSISTENT = Global("torch_utils.persistence", "_reconstruct_persistent_obj")
PARAMETER = Global("torch._utils", "_rebuild_parameter")
TENSOR = Global("torch._utils", "_rebuild_tensor_v2")
FROM_BYTES = Global("torch.storage", "_load_from_bytes")
ORDERED_DICT = Global("collections", "OrderedDict")
SEQUENTIAL = Global("torch.nn.modules.container", "Sequential")

KWARGS = dict(z_dim=64, w_dim=64, mapping_kwargs={"num_layers": 2}, channel_base=512, channel_max=64, c_dim=0,
              img_resolution=16, img_channels=3)


class _Anything(dict):
    """Stands in for every global while the official source text is read from a fixture."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        pass


class _SourceReader(pickle.Unpickler):
    def find_class(self, module, name):
        return (lambda meta: meta) if name == "_reconstruct_persistent_obj" else _Anything


@pytest.fixture(scope="module")
def source(official_creps_dir) -> str:
    """The official networks_creps.py text (from a fixture), so that crafted files warn of nothing."""
    with open(official_creps_dir / "creps_r16_snapshot.pkl", "rb") as handle:
        return _SourceReader(handle).load()["G_ema"]["module_src"]


def module(class_name: str, source: str, modules: dict | None = None, parameters: dict | None = None, **extra) -> Call:
    state = {"training": False, "_parameters": dict(parameters or {}), "_buffers": {},
             "_non_persistent_buffers_set": set(), "_modules": dict(modules or {}), **extra}
    meta = {"type": "class", "version": 6, "module_src": source, "class_name": class_name, "state": state}
    return Call(PERSISTENT, (meta,))


def generator(source: str, kwargs: dict | None = None, **parts) -> Call:
    return module("Generator", source, _init_args=(), _init_kwargs=dict(KWARGS if kwargs is None else kwargs), **parts)


def official_tree(source: str, kwargs: dict, *, stride0: bool = False, replace: dict | None = None) -> dict[str, Call]:
    """G_ema's child modules for ``kwargs``, with every tensor an official generator of that config
    has (under the official names), so that a reader gets past the tensors to what a test plants.

    The values come from this project's generator of the same config; with ``stride0`` every
    tensor is instead a stride-0 view of one stored zero (the shapes from the meta device), so
    that a paper-size generator fits in a few KB. ``replace``: official key -> a planted tensor.
    """
    from cips_deploy.families.creps_spec import creps_config
    from cips_deploy.families.official_creps import config_kwargs, to_official

    fields = config_kwargs(kwargs, source="test")
    base, cap = fields.pop("channel_base"), fields.pop("channel_max")
    with torch.device("meta" if stride0 else "cpu"):
        state = to_official(cips_deploy.Generator(creps_config("tiny", channel_base=base, channel_max=cap, **fields)).state_dict())
    root: dict = {"modules": {}, "parameters": {}}
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            node = node["modules"].setdefault(part, {"modules": {}, "parameters": {}})
        if key in (replace or {}):
            node["parameters"][leaf] = replace[key]
        elif stride0:
            node["parameters"][leaf] = parameter(value.shape, (0,) * value.dim())
        else:
            node["parameters"][leaf] = parameter(value.shape, value.contiguous().stride(), values=value.detach().flatten().clone())

    def build(node: dict) -> Call:
        return module("SynthesisLayer", source, {name: build(child) for name, child in node["modules"].items()}, node["parameters"])

    assert not root["parameters"]
    return {name: build(child) for name, child in root["modules"].items()}


@pytest.fixture(scope="module")
def tree(source) -> dict[str, Call]:
    return official_tree(source, KWARGS)


def snapshot(path: Path, g_ema) -> Path:
    path.write_bytes(dumps({"G": None, "D": None, "G_ema": g_ema, "augment_pipe": None, "training_set_kwargs": {}}))
    return path


def storage_blob(values: torch.Tensor) -> bytes:
    """A storage as the official pickles nest it: a legacy torch.save stream."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated
        torch.save(values.storage(), buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def parameter(size, stride, *, offset: int = 0, values: torch.Tensor | None = None, blob: bytes | None = None) -> Call:
    blob = storage_blob(torch.zeros(1) if values is None else values) if blob is None else blob
    tensor = Call(TENSOR, (Call(FROM_BYTES, (blob,)), offset, tuple(size), tuple(stride), False, Call(ORDERED_DICT)))
    return Call(PARAMETER, (tensor, False, Call(ORDERED_DICT)))


def deep_tuple(depth: int) -> bytes:
    """Opcodes of a tuple nested ``depth`` deep: EMPTY_TUPLE, then TUPLE1 ``depth`` times."""
    return b")" + b"\x85" * depth


def laughs(levels: int, first_memo: int) -> bytes:
    """Opcodes of a "billion laughs" tuple: each level holds the one below twice (a memo
    reference and its DUP), so ``levels`` levels take 6 bytes each and stand for 2**levels objects."""
    ops = bytearray(b"K\x00\x85\x94")  # (0,), memoized
    for level in range(levels):  # POP the level below, GET it back, DUP, TUPLE2, MEMOIZE
        ops += b"0h" + bytes([first_memo + level]) + b"2\x86\x94"
    return bytes(ops)


def raw_pickle(path: Path, body: bytes) -> Path:
    """PROTO 4, an empty dict (memo 0), ``body`` pushing a key and a value, SETITEM, STOP."""
    path.write_bytes(b"\x80\x04}\x94" + body + b"s.")
    return path


def key_value(key: bytes, value: bytes = b"K\x01") -> bytes:
    return key + value


def g_ema_value(value: bytes) -> bytes:
    return key_value(b"\x8c\x05G_ema\x94", value)  # memo 1 is the key


# ------------------------------------------------------- the official files still load exactly


@pytest.mark.parametrize("name", ["creps_r16_snapshot", "creps_r16_released_numpy1", "creps_r32_fp16_snapshot",
                                  "malicious_module_src"])
def test_official_snapshots_pass_far_inside_the_pickle_limits(official_creps_dir, monkeypatch, name):
    monkeypatch.setattr(limits, "MAX_PICKLE_DEPTH", MAX_PICKLE_DEPTH // 2)
    monkeypatch.setattr(limits, "MAX_PICKLE_EXPANDED", MAX_PICKLE_EXPANDED // 100)
    monkeypatch.setattr(limits, "MAX_PICKLE_OBJECTS", limits.MAX_PICKLE_OBJECTS // 10)
    with open(official_creps_dir / f"{name}.pkl", "rb") as handle:
        check_pickle(handle)
        assert handle.read(1) == b""  # the whole file is the one pickle


def test_official_files_still_load_exactly(official_creps_dir, official_dir):
    from cips_deploy.families.official_creps import read_snapshot, to_official

    facts = json.loads((official_creps_dir / "fixtures.json").read_text())["files"]
    for name in ("creps_r16_snapshot", "creps_r16_released_numpy1", "creps_r32_fp16_snapshot"):
        generator = cips_deploy.load(official_creps_dir / f"{name}.pkl")
        official = read_snapshot(official_creps_dir / f"{name}.pkl").state_dict
        ours = to_official(generator.state_dict())
        assert set(ours) == set(official) and all(torch.equal(ours[key], official[key]) for key in ours)
        assert generator.provenance["official_init_kwargs"] == facts[f"{name}.pkl"]["G_ema_init_kwargs"]
    for name in ("cipsskip_s8.pt", "cipsres_s8_g_ema.pt"):
        assert cips_deploy.load(official_dir / name).num_parameters > 0


def test_a_crafted_snapshot_with_valid_options_loads(tmp_path, source, tree):
    """The kit writes what the reader accepts: a full G_ema loads, also with every option set."""
    plain = snapshot(tmp_path / "plain.pkl", generator(source, modules=tree))
    assert cips_deploy.load(plain).num_parameters == 257_353  # the official r16 snapshot's count
    kwargs = dict(KWARGS, biline_channels=16, num_fp16_res=1, fc_clamp=None, fp16_channels_last=True,
                  mapping_kwargs={"num_layers": 2, "lr_multiplier": 0.01, "w_avg_beta": 0.998})
    options = snapshot(tmp_path / "options.pkl", generator(source, kwargs, modules=official_tree(source, kwargs)))
    loaded = cips_deploy.load(options)
    assert (loaded.config.biline_channels, loaded.config.num_fp16_res, loaded.config.fc_clamp) == (16, 1, None)


# ------------------------------------------------------------------- nesting: a crash before


def test_a_key_nested_300000_deep_is_refused_not_a_segfault(tmp_path, scratch):
    hostile = raw_pickle(tmp_path / "deep.pkl", key_value(deep_tuple(300_000)))
    assert 300_000 < hostile.stat().st_size < 310_000
    assert_refused(hostile, f"it nests containers deeper than {MAX_PICKLE_DEPTH} levels", scratch)


def test_a_list_nested_300000_deep_in_the_kwargs_is_refused(tmp_path, scratch, source, tree):
    depth = 300_000  # EMPTY_LIST depth times, then APPEND each into the one below
    deep = Raw(b"]" * depth + b"a" * (depth - 1))
    hostile = snapshot(tmp_path / "deep-list.pkl", generator(source, dict(KWARGS, fp16_channels_last=deep), modules=tree))
    assert_refused(hostile, f"it nests containers deeper than {MAX_PICKLE_DEPTH} levels", scratch)


def test_a_deep_tuple_inside_a_set_is_refused(tmp_path, scratch):
    # set([((((...)))),]) is built by REDUCE(builtins.set, ...), which hashes its members
    value = b"cbuiltins\nset\n" + b"]" + deep_tuple(300_000) + b"a\x85R"
    hostile = raw_pickle(tmp_path / "set.pkl", g_ema_value(value))
    assert_refused(hostile, f"it nests containers deeper than {MAX_PICKLE_DEPTH} levels", scratch)


def test_a_key_that_is_a_shallow_tuple_is_refused_as_not_plain(tmp_path):
    hostile = raw_pickle(tmp_path / "tuple-key.pkl", key_value(b"K\x01K\x02\x86"))
    refused(["info", str(hostile)], "a dict key or set member that is not a plain number or string", cwd=tmp_path)


# ----------------------------------------------------------- shared objects: a hang before


def test_a_309_byte_billion_laughs_key_is_refused_not_a_hang(tmp_path, scratch):
    hostile = raw_pickle(tmp_path / "laughs.pkl", key_value(laughs(60, first_memo=1)))
    assert hostile.stat().st_size < 400
    assert_refused(hostile, f"it expands to more than {MAX_PICKLE_EXPANDED:,} objects", scratch)


def test_a_billion_laughs_dict_key_of_30_levels_is_refused(tmp_path, scratch):
    hostile = raw_pickle(tmp_path / "laughs30.pkl", key_value(laughs(30, first_memo=1)))
    assert_refused(hostile, f"it expands to more than {MAX_PICKLE_EXPANDED:,} objects", scratch)


@pytest.mark.parametrize("option", ["fp16_channels_last", "w_avg_beta"])
def test_a_billion_laughs_in_an_accepted_kwarg_is_refused_not_a_flood(tmp_path, scratch, source, tree, option):
    kwargs = dict(KWARGS, mapping_kwargs=dict(KWARGS["mapping_kwargs"]))
    where = kwargs["mapping_kwargs"] if option == "w_avg_beta" else kwargs
    value = [0]
    for _ in range(60 if option == "fp16_channels_last" else 40):  # a list of 2**60 (2**40) values
        value = [value, value]
    where[option] = value
    hostile = snapshot(tmp_path / f"{option}.pkl", generator(source, kwargs, modules=tree))
    assert_refused(hostile, f"it expands to more than {MAX_PICKLE_EXPANDED:,} objects", scratch)


def test_a_small_shared_list_in_a_kwarg_is_a_config_refusal(tmp_path, source, tree):
    value = [0]
    for _ in range(10):  # 2**10 values: inside the pickle limits, but not a flag
        value = [value, value]
    hostile = snapshot(tmp_path / "small.pkl", generator(source, dict(KWARGS, fp16_channels_last=value), modules=tree))
    refused(["info", str(hostile)], "fp16_channels_last must be True or False, not a list", cwd=tmp_path)


def test_a_module_tree_that_is_a_wide_dag_is_refused_not_a_hang(tmp_path, scratch, source):
    child = module("FullyConnectedLayer", source)
    for _ in range(15):  # every level holds the one below four times: 4**15 modules to walk
        child = module("SynthesisBlock", source, modules={name: child for name in "abcd"})
    hostile = snapshot(tmp_path / "dag.pkl", generator(source, modules={"synthesis": child}))
    assert_refused(hostile, "objects (shared ones counted at every use)", scratch)


@pytest.mark.parametrize("levels", [1, 3])
def test_a_module_tree_sharing_a_child_is_walked_as_a_tree_and_refused(tmp_path, source, levels):
    child = module("FullyConnectedLayer", source)
    for _ in range(levels):  # small enough for the pickle limits; the walk refuses the second visit
        child = module("SynthesisBlock", source, modules={"a": child, "b": child})
    hostile = snapshot(tmp_path / "shared.pkl", generator(source, modules={"synthesis": child}))
    refused(["info", str(hostile)], "a second time (a shared or looping module)", cwd=tmp_path)


def test_a_module_that_contains_itself_is_refused(tmp_path, source):
    # A Sequential (NEWOBJ + BUILD) whose state lists the Sequential itself as its child.
    cyclic = Call(SEQUENTIAL)
    cyclic.state = {"_parameters": {}, "_buffers": {}, "_modules": {"0": cyclic}}
    hostile = snapshot(tmp_path / "cycle.pkl", generator(source, modules={"decoder": cyclic}))
    refused(["info", str(hostile)], "it pickles a cycle, or changes an object after nesting it", cwd=tmp_path)


def test_a_memo_entry_stored_far_out_of_order_is_refused(tmp_path, scratch):
    # LONG_BINPUT 2**30: the C unpickler would grow its memo table to 2**31 entries (16 GiB).
    hostile = raw_pickle(tmp_path / "memo.pkl", key_value(b"K\x01r\x00\x00\x00\x40"))
    assert_refused(hostile, "it stores pickle memo entry 1,073,741,824 out of order", scratch)


def test_truncated_and_garbled_pickles_are_corrupt(tmp_path):
    refused(["info", str(raw_pickle(tmp_path / "short.pkl", b"\x8c\x05G_e"))], "is corrupt or truncated", cwd=tmp_path)
    blob = tmp_path / "blob.pkl"
    blob.write_bytes(b"\x80\x04B\xff\xff\xff\x7f" + b"x" * 100)  # a 2 GiB string in 108 bytes
    refused(["info", str(blob)], "past the end of the data", cwd=tmp_path)


# --------------------------------------------------------------- stride-0 tensors: a flood before


# Official-format configs whose every tensor is a stride-0 view: 297,362,185 parameters (under
# MAX_PARAMETERS: it used to load and render) and about 4.7e9 (over it: 6.5 GB, then a traceback).
BIG = dict(KWARGS, z_dim=512, w_dim=512, img_resolution=256, channel_base=1 << 20, channel_max=4096,
           mapping_kwargs={"num_layers": 8})
HUGE = dict(BIG, channel_base=1 << 22, channel_max=16384)


@pytest.mark.parametrize("kwargs", [BIG, HUGE], ids=["3e8", "5e9"])
def test_a_snapshot_of_stride_0_tensors_is_refused_before_anything_is_materialised(tmp_path, scratch, source, kwargs):
    g_ema = generator(source, kwargs, modules=official_tree(source, kwargs, stride0=True))
    hostile = snapshot(tmp_path / "stride0.pkl", g_ema)
    assert hostile.stat().st_size < 200_000
    assert_refused(hostile, "elements but its storage holds 1 (a stride-0 or overlapping view", scratch)


@pytest.mark.parametrize(
    "size, stride, values, message",
    [
        ((17199, 17199), (0, 0), 1, "claims 295,805,601 elements but its storage holds 1 "),
        ((86023, 86023), (0, 0), 1, "claims 7,399,956,529 elements but its storage holds 1 "),
        ((1000, 1000), (1, 1), 2000, "claims 1,000,000 elements but its storage holds 2,000 "),  # overlapping rows
        ((10,), (1,), 10, None),  # in bounds: refused later, as a tensor of the wrong shape
    ],
)
def test_one_planted_view_is_refused_by_what_it_claims(tmp_path, source, size, stride, values, message):
    planted = {"mapping.fc0.weight": parameter(size, stride, values=torch.zeros(values))}
    hostile = snapshot(tmp_path / "planted.pkl", generator(source, modules=official_tree(source, KWARGS, replace=planted)))
    refused(["info", str(hostile)], message or "tensor 'mapping.fc0.weight' has shape [10]", cwd=tmp_path)


def test_a_view_past_the_end_of_its_storage_is_refused(tmp_path, source):
    weight = parameter((10,), (1,), offset=5, values=torch.zeros(10))
    hostile = snapshot(tmp_path / "past.pkl", generator(source, parameters={"weight": weight}))
    refused(["info", str(hostile)], "a tensor in it reaches element 14 of a storage of 10", cwd=tmp_path)


def test_every_element_of_a_snapshot_counts_against_max_parameters(official_creps_dir, monkeypatch):
    import cips_deploy.families.official_creps as official_creps

    monkeypatch.setattr(official_creps, "MAX_PARAMETERS", 100_000)  # the r16 snapshot claims about 500,000
    with pytest.raises(CipsError, match="its tensors claim more than 100,000 elements") as refusal:
        cips_deploy.load(official_creps_dir / "creps_r16_snapshot.pkl")
    assert "\n" not in str(refusal.value)


def cips_paper1024_state(official_dir) -> dict[str, torch.Tensor]:
    """A state dict shaped like the official CIPSskip 1024 (5.5e8 parameters), every tensor a
    stride-0 view of one stored zero: the file is a few KB."""
    shapes = json.loads((official_dir / "official_paper_shapes.json").read_text())["CIPSskip_size1024"]
    one = torch.zeros(1)
    return {key: one.expand(shape) for key, shape in shapes["state_dict_shapes"].items()}


@pytest.mark.parametrize("layout", ["zip", "legacy training checkpoint"])
def test_stride_0_cips_pt_files_shaped_like_paper1024_are_refused(official_dir, tmp_path, scratch, layout):
    state = cips_paper1024_state(official_dir)
    hostile = tmp_path / "paper1024.pt"
    if layout == "zip":
        torch.save(state, hostile)
    else:
        torch.save({"g_ema": state}, hostile, _use_new_zipfile_serialization=False)
    assert hostile.stat().st_size < 64_000
    assert_refused(hostile, "lff.ffm.conv.weight' claims 1,024 elements but its storage holds 1 ", scratch)


def test_an_overlapping_view_in_a_cips_pt_file_is_refused(official_dir, tmp_path):
    state = torch.load(official_dir / "cipsskip_s8.pt", weights_only=True)["g_ema"]
    emb = state["emb.input"]
    state["emb.input"] = torch.zeros(emb.shape[-1]).as_strided(emb.shape, (0, 0, 1, 0))
    torch.save(state, tmp_path / "overlap.pt")
    refused(["info", "overlap.pt"], f"tensor 'emb.input' claims {emb.numel():,} elements but its storage holds", cwd=tmp_path)


def test_every_element_of_a_pt_file_counts_against_max_parameters(official_dir, monkeypatch):
    import cips_deploy.families.official as official

    monkeypatch.setattr(official, "MAX_PARAMETERS", 1000)
    with pytest.raises(CipsError, match="its tensors claim more than 1,000 elements"):
        cips_deploy.load(official_dir / "cipsskip_s8.pt")


# ------------------------------------------------------------ pickles inside PyTorch files


def _replace_members(source: bytes, replace: dict[str, bytes]) -> bytes:
    """A copy of a zip with the members whose names end as in ``replace`` rewritten (stored)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(source)) as original, zipfile.ZipFile(out, "w") as copy:
        for info in original.infolist():
            ending = next((end for end in replace if info.filename.endswith(end)), None)
            copy.writestr(info, replace[ending] if ending else original.read(info))
    return out.getvalue()


def test_a_deep_key_in_a_pt_files_pickle_is_refused(tmp_path, scratch):
    buffer = io.BytesIO()
    torch.save({"lff.ffm.conv.weight": torch.zeros(2)}, buffer)
    data = b"\x80\x02}q\x00" + deep_tuple(300_000) + b"K\x01s."
    (tmp_path / "deep.pt").write_bytes(_replace_members(buffer.getvalue(), {"data.pkl": data}))
    assert_refused(tmp_path / "deep.pt", f"it nests containers deeper than {MAX_PICKLE_DEPTH} levels", scratch)


def test_billion_laughs_in_a_legacy_pt_file_is_refused(tmp_path, scratch):
    buffer = io.BytesIO()
    torch.save({}, buffer, _use_new_zipfile_serialization=False)
    stream = io.BytesIO(buffer.getvalue())
    for _ in range(3):  # torch's own magic number, protocol and system-info pickles
        pickle.Unpickler(stream).load()
    main = b"\x80\x02}\x94" + laughs(60, first_memo=1) + b"K\x01s."
    (tmp_path / "laughs.pt").write_bytes(buffer.getvalue()[:stream.tell()] + main + pickle.dumps([], protocol=2))
    assert_refused(tmp_path / "laughs.pt", f"it expands to more than {MAX_PICKLE_EXPANDED:,} objects", scratch)


# ------------------------------------------------------------- zip bombs inside storage blobs


def bomb_blob(inflated: int, member: str) -> bytes:
    """A storage saved in torch's zip format whose ``member`` is ``inflated`` zero bytes, deflated."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(torch.zeros(4).storage(), buffer)
    out = io.BytesIO()
    chunk = bytes(16 << 20)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as original, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bomb:
        for info in original.infolist():
            if not info.filename.endswith(member):
                bomb.writestr(info, original.read(info))
                continue
            target = zipfile.ZipInfo(info.filename)
            target.compress_type = zipfile.ZIP_DEFLATED
            with bomb.open(target, "w", force_zip64=True) as sink:
                for _ in range(inflated // len(chunk)):
                    sink.write(chunk)
    return out.getvalue()


def test_a_storage_blob_that_is_a_1_gib_zip_bomb_is_refused(tmp_path, scratch, source):
    blob = bomb_blob(1 << 30, "data/0")
    assert len(blob) < 2 << 20
    weight = parameter((4,), (1,), blob=blob)
    hostile = snapshot(tmp_path / "bomb.pkl", generator(source, parameters={"weight": weight}))
    assert_refused(hostile, "a tensor storage in it declares 1.0 GiB of content in a", scratch)


def test_a_zip_bomb_blob_two_modules_down_is_refused(tmp_path, scratch, source):
    blob = bomb_blob(128 << 20, "data.pkl")  # this time the pickle member is the bomb
    inner = module("SynthesisLayer", source, parameters={"weight": parameter((4,), (1,), blob=blob)})
    block = module("SynthesisBlock", source, modules={"fc0": inner})
    network = module("SynthesisNetwork", source, modules={"b4": block})
    hostile = snapshot(tmp_path / "bomb2.pkl", generator(source, modules={"synthesis": network}))
    assert_refused(hostile, "a tensor storage in it declares 128.0 MiB of content in a", scratch)


def test_a_storage_blob_with_a_deep_pickle_is_refused(tmp_path, source):
    blob = b"\x80\x02" + deep_tuple(10_000) + b"."
    hostile = snapshot(tmp_path / "blob.pkl", generator(source, parameters={"weight": parameter((1,), (1,), blob=blob)}))
    refused(["info", str(hostile)], f"a tensor storage in it nests containers deeper than {MAX_PICKLE_DEPTH} levels",
            cwd=tmp_path)


# ------------------------------------------------------------------ config values in kwargs


@pytest.mark.parametrize(
    "change, message",
    [
        ({"biline_channels": 2e9}, "biline_channels must be a whole number from 4 to 65,536, not 2000000000.0"),
        ({"biline_channels": 2**62}, "biline_channels must be a whole number from 4 to 65,536, not 4611686018427387904"),
        ({"biline_channels": 1e30}, "not 1e+30"),
        ({"biline_channels": 16.5}, "not 16.5"),
        ({"biline_channels": float("nan")}, "not nan"),
        ({"biline_channels": 2_000_000_000}, "not 2000000000"),
        ({"biline_channels": True}, "not True"),
        ({"num_fp16_res": float("nan")}, "num_fp16_res must be a whole number from 0 to 64, not nan"),
        ({"num_fp16_res": "2"}, "num_fp16_res must be a whole number from 0 to 64, not '2'"),
        ({"num_fp16_res": 1.5}, "not 1.5"),
        ({"num_fp16_res": -1}, "not -1"),
        ({"fc_clamp": float("nan")}, "fc_clamp must be a finite number above 0, or None, not nan"),
        ({"fc_clamp": "256"}, "fc_clamp must be a finite number above 0, or None, not '256'"),
        ({"fc_clamp": float("inf")}, "not inf"),
        ({"fc_clamp": [256]}, "not a list"),
        ({"channel_base": 2**62}, "channel_base must be a whole number from 1 to 2,147,483,648"),
        ({"channel_max": 0}, "channel_max must be a whole number from 1 to 65,536, not 0"),
        ({"img_resolution": 2**40}, "img_resolution must be a whole number from 8 to 65,536"),
        ({"z_dim": 64.0}, "z_dim must be a whole number from 1 to 65,536, not 64.0"),
        ({"mapping_kwargs": {"num_layers": 10**9}}, "mapping_kwargs.num_layers must be a whole number from 1 to 64"),
        ({"mapping_kwargs": {"num_layers": 2, "lr_multiplier": float("nan")}}, "lr_multiplier must be a finite number in (0, 1000]"),
        ({"mapping_kwargs": {"num_layers": 2, "w_avg_beta": "0.99"}}, "w_avg_beta must be a finite number from 0 to 1, or None"),
        ({"mapping_kwargs": [2]}, "the generator's mapping_kwargs is a list, not a dict"),
        ({"fp16_channels_last": "yes"}, "fp16_channels_last must be True or False, not 'yes'"),
    ],
)
def test_official_config_values_are_checked_in_one_sentence(tmp_path, source, tree, change, message):
    hostile = snapshot(tmp_path / "config.pkl", generator(source, dict(KWARGS, **change), modules=tree))
    refused(["info", str(hostile)], message, cwd=tmp_path)


def test_the_pickle_check_is_a_library_function(tmp_path):
    with pytest.raises(PickleRefused, match="nests containers deeper"):
        check_pickle(io.BytesIO(b"\x80\x04" + deep_tuple(200) + b"."))
    check_pickle(io.BytesIO(pickle.dumps({"a": [1, (2, 3)], "b": {"c": b"x" * 100_000}}, protocol=5)))
    check_pickle(io.BytesIO(pickle.dumps({"shared": [[1]] * 1000}, protocol=2)))
