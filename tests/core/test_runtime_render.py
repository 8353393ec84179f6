"""The torch-free runtime: seeds, coordinates, layouts and renders on numpy arrays.

Every test here runs in the base install (no torch) except those that compare with torch
itself or drive a backend written against the legacy torch-tensor contract; those import
torch inside and skip without it. This module must import without torch.
"""

from __future__ import annotations

import math
import platform
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cips_deploy import hookimpl
from cips_deploy.contracts.backend import Backend
from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.contracts.topology import PointLayout, TopologyRequest, check_points, resolve_parameters
from cips_deploy.errors import CipsError
from cips_deploy.plugins.chunkers import RowsChunker
from cips_deploy.contracts.chunking import ChunkRequest
from cips_deploy.runtime.coords import fma32, grid_coords, linspace, panorama_u
from cips_deploy.runtime.images import rgb_to_uint8
from cips_deploy.runtime.plugin_manager import PluginWarning, load_registry
from cips_deploy.runtime.render import render, render_detailed
from cips_deploy.runtime.seeds import MAX_SEED, seed_latent

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
sys.path.insert(0, str(HELPERS))
import coordinates_backend  # noqa: E402  (tests/helpers: a plugin module, imported by name)


class Waves(Backend):
    """A numpy backend whose colours depend on the point and its style, each point on its own:
    ``rgb_c = sin(a_c u + b_c v + w . k_c)``, w = tanh(z[:4]) * truncation (no matrix product,
    whose kernel could depend on the batch size)."""

    name = "waves"
    description = "sin of the coordinates and the style, elementwise"
    options = coordinates_backend.Coordinates.options
    A = np.array([3.1, -2.3, 1.7], dtype=np.float32)
    B = np.array([1.3, 2.9, -3.7], dtype=np.float32)
    K = np.array([[0.9, -0.4, 0.3, 0.8], [-0.7, 0.6, 0.5, -0.2], [0.2, 0.8, -0.9, 0.4]], dtype=np.float32)  # [3, S]

    def __init__(self, model, *, device="cpu", space="plane"):
        self.config = GeneratorConfig(arch="skip", size=32, hidden=8, style_dim=4, widths=(8,), coordinate_space=space)
        self.batches = []

    def map(self, z, truncation=1.0):
        return (np.tanh(z[:, :4]) * np.float32(truncation)).astype(np.float32)  # w [B, 4]

    def run(self, coords, w):
        self.batches.append((type(coords), coords.dtype, coords.shape, w.shape))
        styles = w[:, None, :] if w.ndim == 2 else w  # [B, 1 or N, S]
        phase = (styles[..., None, :] * self.K).sum(-1)  # [B, 1 or N, 3]
        return np.sin(coords[..., :1] * self.A + coords[..., 1:] * self.B + phase).astype(np.float32)

    def bytes_per_point(self, per_point_style=False):
        return 64


class WavesPlugin:
    @hookimpl
    def register_backends(self, register):
        register(Waves)


@pytest.fixture(scope="module")
def registry():
    """The built-ins and the two numpy backends (without torch the torch backend's plugin is
    reported missing: expected in the base install)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        return load_registry(entry_points=False, extra_plugins=[("coordinates", coordinates_backend), ("waves", WavesPlugin())])


def torch_or_skip():
    return pytest.importorskip("torch", reason="compares with torch or drives a legacy torch backend")


# --------------------------------------------------------------------------------- seeds


@pytest.mark.runtime
@pytest.mark.parametrize("seed", [0, 1, 7, 12345, MAX_SEED, np.int64(42), np.uint32(2**31 + 5)])
def test_a_seed_is_the_randomstate_gaussian_of_stylegan_and_creps(seed):
    z = seed_latent(seed, 64)
    assert z.dtype == np.float32 and z.shape == (1, 64)
    assert np.array_equal(z, np.random.RandomState(int(seed)).randn(1, 64).astype(np.float32))
    assert np.array_equal(seed_latent(seed, SimpleNamespace(latent_dim=64, style_dim=32)), z)  # a config: its z width
    assert np.array_equal(seed_latent(seed, SimpleNamespace(style_dim=64)), z)  # an older config: one width for z and w


@pytest.mark.runtime
@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**63 - 1, True, 1.0, "3", None])
def test_a_bad_seed_is_one_sentence(seed):
    with pytest.raises(CipsError) as caught:
        seed_latent(seed, 8)
    assert str(caught.value) == f"The seed must be a whole number from 0 to 2**32 - 1, not {seed!r}."


@pytest.mark.runtime
def test_the_renderer_draws_the_seeds_z(registry):
    seen = {}

    class Recording(Waves):
        def map(self, z, truncation=1.0):
            seen.setdefault("z", []).append(z.copy())
            return super().map(z, truncation)

    backend = Recording(None)
    render(backend, "flat", 4, 4, seed=MAX_SEED, blend_seed=3, registry=registry)
    assert [z.dtype for z in seen["z"]] == [np.float32, np.float32]
    assert np.array_equal(seen["z"][0], np.random.RandomState(MAX_SEED).randn(1, 4).astype(np.float32))
    assert np.array_equal(seen["z"][1], np.random.RandomState(3).randn(1, 4).astype(np.float32))
    with pytest.raises(CipsError, match=r"The blend seed must be a whole number from 0 to 2\*\*32 - 1, not 4294967296\."):
        render(backend, "flat", 4, 4, blend_seed=MAX_SEED + 1, registry=registry)


# ----------------------------------------------------------------------------- coordinates


@pytest.mark.runtime
def test_fma32_rounds_once_where_rounding_twice_breaks_the_tie():
    """(64 - 2**-17) * (1 + 2**-23) + (2**30 + 128): the float64 sum lands on a float32
    midpoint, which the exact value lies just below; a double rounding would go up."""
    a, b, c = (np.array([value], dtype=np.float32) for value in (64 - 2**-17, 1 + 2**-23, 2**30 + 128))
    exact = Fraction(float(a[0])) * Fraction(float(b[0])) + Fraction(float(c[0]))
    twice = (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)
    once = fma32(a, b, c)
    assert once.dtype == np.float32
    assert abs(Fraction(float(once[0])) - exact) < abs(Fraction(float(twice[0])) - exact)
    rng = np.random.default_rng(0)
    for _ in range(2000):  # and everywhere else the correctly rounded value
        a, b, c = (np.array([rng.standard_normal()], dtype=np.float32) * np.float32(10.0 ** rng.integers(-6, 6)) for _ in range(3))
        got = fma32(a, b, c)[0]
        exact = Fraction(float(a[0])) * Fraction(float(b[0])) + Fraction(float(c[0]))
        for neighbour in (np.nextafter(got, np.float32(np.inf)), np.nextafter(got, np.float32(-np.inf))):
            assert abs(Fraction(float(got)) - exact) <= abs(Fraction(float(neighbour)) - exact)


@pytest.mark.runtime
def test_linspace_keeps_both_ends_and_is_monotonic():
    for start, end, steps in [(-1.0, 1.0, 2), (-1.0, 1.0, 1001), (0.25, -3.5, 37), (5.0, 5.0, 4)]:
        values = linspace(start, end, steps)
        assert values.dtype == np.float32 and values.shape == (steps,)
        assert values[0] == np.float32(start) and values[-1] == np.float32(end)
        assert np.all(np.diff(values) >= 0) if end >= start else np.all(np.diff(values) <= 0)
    assert linspace(0.5, 2.0, 1).tolist() == [0.5] and linspace(0.5, 2.0, 0).shape == (0,)


def test_linspace_is_torch_linspace_bit_for_bit():
    torch = torch_or_skip()
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT" and platform.machine().lower() in ("x86_64", "amd64"):
        pytest.skip("this torch runs its kernel without FMA instructions, rounding twice")
    rng = np.random.default_rng(1)
    cases = [(-1.0, 1.0, n) for n in range(0, 1200)] + [(-1 + 1 / n, 1 - 1 / n, n) for n in range(1, 600)]
    cases += [(float(a), float(b), int(n)) for a, b, n in zip(rng.uniform(-50, 50, 3000), rng.uniform(-50, 50, 3000), rng.integers(0, 3000, 3000))]
    cases += [(-0.3, 0.7, 100_001), (1e-3, 1e5, 777), (0.5, 0.5, 10)]
    for start, end, steps in cases:
        expected = torch.linspace(start, end, steps).numpy()
        assert np.array_equal(linspace(start, end, steps).view(np.uint32), expected.view(np.uint32)), (start, end, steps)


def test_the_grid_and_the_panorama_columns_are_torchs_bit_for_bit():
    torch = torch_or_skip()
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT" and platform.machine().lower() in ("x86_64", "amd64"):
        pytest.skip("this torch runs its kernel without FMA instructions, rounding twice")
    for height, width in [(1, 1), (37, 53), (256, 256)]:
        v, u = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        expected = torch.stack([u, v], dim=-1).reshape(1, -1, 2).numpy()
        assert np.array_equal(grid_coords(height, width).view(np.uint32), expected.view(np.uint32))
    for width in (1, 2, 3, 255, 1024, 4099):
        for heading in (0.0, 90.0, -33.3, 720.25):
            column = torch.arange(width, dtype=torch.float64)
            u = -1.0 + (2.0 * column + 1.0) / width + heading / 180.0
            expected = (torch.remainder(u + 1.0, 2.0) - 1.0).float().numpy()
            assert np.array_equal(panorama_u(width, heading).view(np.uint32), expected.view(np.uint32))


@pytest.mark.runtime
def test_topologies_hand_out_numpy_float32_points(registry):
    for name, space, params in [("flat", "plane", {}), ("cylinder", "cylinder", {}), ("rotated", "plane", {}), ("foveated", "plane", {})]:
        topology = registry.topologies[name].item
        layout = topology.layout(TopologyRequest(30, 41, space, resolve_parameters(topology, params)))
        points = layout.points(0, layout.n_points)
        assert isinstance(points, np.ndarray) and points.dtype == np.float32 and points.shape == (layout.n_points, 2), name
    flat = registry.topologies["flat"].item.layout(TopologyRequest(30, 41, "plane", resolve_parameters(registry.topologies["flat"].item, {})))
    assert np.array_equal(flat.points(0, 30 * 41), grid_coords(30, 41)[0])
    assert np.array_equal(flat.rectangle_points(3, 9, 5, 20), grid_coords(30, 41)[0].reshape(30, 41, 2)[3:9, 5:20].reshape(-1, 2))


@pytest.mark.runtime
def test_check_points_takes_floating_arrays_and_names_the_rest():
    points = check_points(np.zeros((5, 2), dtype=np.float64), 5, "Topology 't'")
    assert points.dtype == np.float32 and points.flags.c_contiguous
    for bad, message in [
        (np.zeros((5, 2), dtype=np.int64), "returned points of dtype int64"),
        (np.zeros((5, 3), dtype=np.float32), r"returned points of shape \[5, 3\]; expected \[5, 2\]"),
        (np.array([[0, 0]] * 4 + [[np.nan, 0]], dtype=np.float32), r"returned 1 point\(s\) with NaN"),
        ([[0.0, 0.0]] * 5, "returned list instead of a tensor or array of points"),
    ]:
        with pytest.raises(CipsError, match=f"Topology 't' {message}"):
            check_points(bad, 5, "Topology 't'")


@pytest.mark.runtime
def test_rows_chunker_cuts_only_at_row_starts():
    boundaries = np.array([0, 3, 3, 9, 10, 16])  # the second row has no points
    spans = list(RowsChunker().spans(ChunkRequest(n_points=16, chunk_size=2, row_boundaries=boundaries)))
    assert spans == [(0, 3), (3, 10), (10, 16)]
    with pytest.raises(CipsError, match="rows chunker needs a topology whose points come in image rows"):
        list(RowsChunker().spans(ChunkRequest(n_points=16, chunk_size=2)))


# --------------------------------------------------------------------------------- images


@pytest.mark.runtime
def test_rgb_to_uint8_maps_the_range_and_clamps():
    rgb = np.array([[-1.0, 0.0, 1.0], [-5.0, 5.0, np.inf], [-np.inf, -0.999, 0.999]], dtype=np.float32)
    pixels = rgb_to_uint8(rgb)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 3)
    assert pixels[0].tolist() == [0, 128, 255] and pixels[1].tolist() == [0, 255, 255] and pixels[2, 0] == 0
    before = rgb.copy()
    rgb_to_uint8(rgb)
    assert np.array_equal(rgb, before)  # the caller's colours are left alone


def test_rgb_to_uint8_rounds_exactly_as_the_torch_version_did():
    torch = torch_or_skip()
    rng = np.random.default_rng(2)
    values = [rng.standard_normal(400_000).astype(np.float32) * 2, rng.uniform(-1.01, 1.01, 400_000).astype(np.float32)]
    boundaries = ((np.arange(-2, 258) - 0.5) / 127.5 - 1.0).astype(np.float32).view(np.int32)  # where a level changes
    values.append(np.concatenate([boundaries + step for step in range(-40, 41)]).view(np.float32))
    values.append(np.array([-1, 1, 0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45], dtype=np.float32))
    rgb = np.concatenate(values)
    rgb = rgb[: len(rgb) // 3 * 3].reshape(-1, 3)
    expected = ((torch.from_numpy(rgb) + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8).numpy()  # the old rgb_to_uint8
    assert np.array_equal(rgb_to_uint8(rgb), expected)
    assert np.array_equal(rgb_to_uint8(torch.from_numpy(rgb)), expected)  # tensors are taken too


# --------------------------------------------------------------------------------- renders


@pytest.mark.runtime
@pytest.mark.parametrize("topology", ["flat", "rotated", "foveated"])
def test_a_numpy_backend_renders_the_colours_of_its_points(registry, topology):
    """The coordinates backend: rgb = (u, v, u v) of each pixel's own point."""
    backend = coordinates_backend.Coordinates(None)
    result = render_detailed(backend, topology, 29, 47, registry=registry, chunk_size=100)
    params = resolve_parameters(registry.topologies[topology].item, {})
    layout = registry.topologies[topology].item.layout(TopologyRequest(29, 47, "plane", params))
    points = layout.points(0, layout.n_points)
    layout.accept(0, np.concatenate([points, points[:, :1] * points[:, 1:]], axis=-1))
    assert result.image.dtype == np.uint8 and result.image.shape == (29, 47, 3)
    assert np.array_equal(result.image, layout.image())
    if topology == "flat":
        grid = grid_coords(29, 47)[0]
        expected = rgb_to_uint8(np.concatenate([grid, grid[:, :1] * grid[:, 1:]], axis=-1)).reshape(29, 47, 3)
        assert np.array_equal(result.image, expected)


HEIGHT, WIDTH = 37, 53  # 1961 points: a count almost no chunk size divides


@pytest.mark.runtime
@pytest.mark.parametrize(
    "chunking",
    [dict(chunk_size=1), dict(chunk_size=7), dict(chunk_size=1000), dict(chunker="rows", chunk_size=3), dict(memory_budget=0.01)],
    ids=lambda chunking: "-".join(str(value) for value in chunking.values()),
)
@pytest.mark.parametrize(
    "topology, space, extra",
    [("flat", "plane", {}), ("rotated", "plane", {"angle": 20.0}), ("cylinder", "cylinder", {"blend_seed": 9}),
     ("foveated", "plane", {})],
    ids=["flat", "rotated", "cylinder-blend", "foveated"],
)
def test_renders_are_bitwise_identical_whatever_the_chunking(registry, chunking, topology, space, extra):
    options = dict(backend="waves", backend_options={"space": space}, registry=registry, seed=5, **extra)
    whole = render(None, topology, HEIGHT, WIDTH, chunk_size=HEIGHT * WIDTH, **options)
    chunked = render_detailed(None, topology, HEIGHT, WIDTH, **chunking, **options)
    assert np.array_equal(chunked.image, whole)
    assert whole.std() > 5  # a picture, not a flat colour
    if chunking.get("chunk_size") == 7 and "chunker" not in chunking:
        assert chunked.chunks == math.ceil(chunked.points_evaluated / 7)


@pytest.mark.runtime
def test_a_backend_gets_numpy_float32_and_per_point_styles_when_blending(registry):
    backend = Waves(None)
    render(backend, "flat", 10, 10, chunk_size=40, seed=1, registry=registry)
    assert backend.batches == [(np.ndarray, np.float32, (1, 40, 2), (1, 4))] * 2 + [(np.ndarray, np.float32, (1, 20, 2), (1, 4))]
    render(backend, "flat", 4, 4, blend_seed=3, registry=registry)
    assert backend.batches[-1][3] == (1, 16, 4)
    first, second = (render(backend, "flat", 16, 16, seed=seed, registry=registry) for seed in (1, 2))
    assert not np.array_equal(first, second)


@pytest.mark.runtime
def test_a_style_array_renders_instead_of_the_seed(registry):
    backend = Waves(None)
    w = backend.map(seed_latent(6, 4))
    assert np.array_equal(render(backend, "flat", 12, 12, seed=0, style=w, registry=registry), render(backend, "flat", 12, 12, seed=6, registry=registry))
    for bad, message in [(np.zeros((1, 5), np.float32), r"shape \[1, 4\], not \[1, 5\]"), (np.zeros((1, 4), np.int32), "float array"),
                         (np.full((1, 4), np.nan, np.float32), "NaN or infinite")]:
        with pytest.raises(CipsError, match=message):
            render(backend, "flat", 4, 4, style=bad, registry=registry)


@pytest.mark.runtime
def test_colours_of_another_dtype_are_taken_and_wrong_ones_are_named(registry):
    class Float64(Waves):
        def run(self, coords, w):
            return super().run(coords, w).astype(np.float64)

    assert np.array_equal(render(Float64(None), "flat", 9, 9, registry=registry), render(Waves(None), "flat", 9, 9, registry=registry))

    class Listing(Waves):
        def run(self, coords, w):
            return super().run(coords, w).tolist()

    class Overflowing(Waves):
        def run(self, coords, w):
            return super().run(coords, w) * np.float32(np.inf)

    with pytest.raises(CipsError, match="returned list from run instead of an array"):
        render(Listing(None), "flat", 4, 4, registry=registry)
    with pytest.raises(CipsError, match="computed NaN or infinite colours"):
        render(Overflowing(None), "flat", 4, 4, registry=registry)


@pytest.mark.runtime
def test_streamed_cells_give_the_in_memory_render(registry, tmp_path, monkeypatch):
    from cips_deploy.runtime import gigapixel
    from cips_deploy.runtime.gigapixel import render_to_array, render_to_file

    monkeypatch.setattr(gigapixel, "CELL_COLUMNS", 256)
    options = dict(backend="waves", registry=registry, seed=4)
    expected = render(None, "rotated", 300, 520, angle=15.0, **options)
    assert np.array_equal(render_to_array(None, topology="rotated", height=300, width=520, angle=15.0, **options), expected)
    model = tmp_path / "model.bin"  # what the partial render's manifest names the model by; the fake backend reads nothing
    model.write_bytes(b"weights")
    result = render_to_file(model, tmp_path / "out.dzi", topology="rotated", height=300, width=520, angle=15.0, **options)
    assert result.cells == 6 and result.format == "dzi"
    with Image.open(tmp_path / "out_files" / "10" / "0_0.png") as tile:  # the full-size level's first tile
        assert np.array_equal(np.asarray(tile.convert("RGB")), expected[:256, :256])


@pytest.mark.runtime
def test_rendering_with_a_numpy_backend_never_imports_torch(tmp_path):
    """In a fresh interpreter where importing torch fails (as in the base install), a render,
    blended styles and a streamed file included, runs, and torch is never imported."""
    model = tmp_path / "model.bin"  # names the streamed render's model; the fake backend reads nothing
    model.write_bytes(b"weights")
    script = f"""
import sys, warnings
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
sys.path.insert(0, {str(HELPERS)!r})
import coordinates_backend
from cips_deploy.runtime.plugin_manager import PluginWarning, load_registry
from cips_deploy.runtime.render import render
from cips_deploy.runtime.gigapixel import render_to_file
warnings.simplefilter("ignore")
registry = load_registry(entry_points=False, extra_plugins=[("coordinates", coordinates_backend)])
image = render(None, "cylinder", 20, 64, backend="coordinates", backend_options={{"space": "cylinder"}}, blend_seed=2, registry=registry)
render_to_file({str(model)!r}, {str(tmp_path / "out.dzi")!r}, height=40, width=70, backend="coordinates", registry=registry)
assert image.shape == (20, 64, 3)
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))[:5]
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


# ------------------------------------------------------------------- the legacy torch contract


@pytest.mark.parametrize("topology, space, extra", [("flat", "plane", {}), ("rotated", "plane", {}), ("cylinder", "cylinder", {"blend_seed": 4})])
def test_a_legacy_torch_backend_gets_tensors_and_renders_like_the_numpy_one(registry, topology, space, extra):
    torch = torch_or_skip()
    legacy = coordinates_backend.TorchCoordinates(None, space=space)
    image = render(legacy, topology, 23, 31, chunk_size=100, registry=registry, **extra)
    expected = render(coordinates_backend.Coordinates(None, space=space), topology, 23, 31, registry=registry, **extra)
    assert np.array_equal(image, expected)
    assert legacy.received and all(kind is torch.Tensor for kind in legacy.received)


def test_a_point_layout_of_torch_points_hands_its_assemble_a_tensor(registry):
    torch = torch_or_skip()
    given = []

    def assemble(rgb):
        given.append(rgb)
        return np.zeros((3, 4, 3), dtype=np.uint8)

    points = torch.rand(12, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    layout = PointLayout(points, 3, 4, assemble=assemble)
    assert isinstance(layout.points(0, 12), np.ndarray) and np.array_equal(layout.points(0, 12), points.numpy())
    layout.accept(0, np.ones((12, 3), dtype=np.float32))
    layout.image()
    assert isinstance(given[0], torch.Tensor) and torch.equal(given[0], torch.ones(12, 3))
    numpy_layout = PointLayout(points.numpy(), 3, 4, assemble=assemble)
    numpy_layout.accept(0, np.ones((12, 3), dtype=np.float32))
    numpy_layout.image()
    assert isinstance(given[1], np.ndarray)
