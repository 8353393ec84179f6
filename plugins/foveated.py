"""The ``foveated`` topology: full detail at the gaze point, fewer samples further out.

Sampling. The fovea is a disc of radius r (a fraction of the shorter side) around the gaze
point. A pixel at distance d from the gaze gets the level

    level = floor(log2(1 + falloff * max(0, d - r) / r)),   capped at log2(max_stride),

so sample spacing grows about linearly with eccentricity, as visual acuity falls. A pixel
is evaluated when it lies on the lattice of its own level: rows and columns that are
multiples of 2**level, plus the last row and column (so every lattice reaches the image
edges and nothing has to be extrapolated). Lattices nest: a coarse lattice node is also a
node of every finer lattice, so level-L nodes are evaluated everywhere.

Reconstruction, coarse to fine. Start from the bilinear interpolation of the coarsest
lattice (complete everywhere). At each finer level, take the evaluated colour where the
node was evaluated and the current reconstruction where it was not, and interpolate that
lattice bilinearly. Inside a region of one level this reproduces the bilinear interpolant
of the region's own samples exactly (a bilinear function sampled at half spacing and
re-interpolated is the same function), transitions between levels are continuous, and
every evaluated pixel keeps its exact colour: the fovea is identical to a flat render.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.contracts.topology import Layout, Parameter, Topology, TopologyRequest
from cips_deploy.errors import CipsError
from cips_deploy.runtime.coords import linspace
from cips_deploy.runtime.images import rgb_to_uint8

from .flat import VIEWPORT, check_viewport


def sample_levels(height: int, width: int, gaze: tuple[float, float], radius: float, falloff: float, max_level: int) -> np.ndarray:
    """Level of every pixel, int64 [H, W]; ``gaze`` (x, y) and ``radius`` in pixels."""
    y = np.arange(height, dtype=np.float64)[:, None]
    x = np.arange(width, dtype=np.float64)[None, :]
    distance = np.hypot(x - gaze[0], y - gaze[1])
    eccentricity = falloff * np.maximum(0.0, distance - radius) / radius
    return np.minimum(np.floor(np.log2(1.0 + eccentricity)), max_level).astype(np.int64)


def lattice(length: int, stride: int) -> np.ndarray:
    """Node positions of one axis at ``stride``: multiples of it plus the last index, int64."""
    nodes = np.arange(0, length, stride, dtype=np.int64)
    return nodes if nodes[-1] == length - 1 else np.append(nodes, length - 1)


def on_lattice(length: int, levels: np.ndarray) -> np.ndarray:
    """Whether index i (broadcast against ``levels``) is a node of the lattice of its level."""
    index = np.arange(length, dtype=np.int64)  # broadcasts along the last axis of levels
    return (index % (1 << levels) == 0) | (index == length - 1)


def interpolate_axis(values: np.ndarray, nodes: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` from samples at ``nodes`` to every index 0..length-1.

    values: [..., len(nodes), ...] float32 -> [..., length, ...]. At a node the weights are
    exactly 1 and 0, so node values come out unchanged.
    """
    if len(nodes) == 1:
        return np.repeat(values, length, axis=axis)
    index = np.arange(length)
    left = np.clip(np.searchsorted(nodes, index, side="right") - 1, 0, len(nodes) - 2)
    t = ((index - nodes[left]) / (nodes[left + 1] - nodes[left])).astype(np.float32)
    shape = [1] * values.ndim
    shape[axis] = length
    t = t.reshape(shape)
    return np.take(values, left, axis=axis) * (1 - t) + np.take(values, left + 1, axis=axis) * t


class FoveatedLayout(Layout):
    """Evaluated pixels in row-major order; colours reconstructed to the full image at the end."""

    def __init__(self, u: np.ndarray, v: np.ndarray, levels: np.ndarray) -> None:
        self.height, self.width = levels.shape
        self.u, self.v = u, v  # float32 [W], [H]: the flat grid's tables
        self.levels = levels  # [H, W]
        column_on = on_lattice(self.width, levels)  # [H, W]: column is a node of its level
        row_on = on_lattice(self.height, levels.T).T  # [H, W]: row is a node of its level
        self.mask = column_on & row_on
        rows, columns = np.nonzero(self.mask)  # row-major, so rows come in order
        self.rows, self.columns = rows, columns  # int64 [n_points] each
        self.n_points = len(rows)
        self._colours = np.zeros((self.n_points, 3), dtype=np.float32)
        self._row_counts = self.mask.sum(axis=1)

    def points(self, start: int, stop: int) -> np.ndarray:
        """float32 ``[stop - start, 2]``: the flat grid's (u, v) of the evaluated pixels."""
        return np.stack([self.u[self.columns[start:stop]], self.v[self.rows[start:stop]]], axis=-1)

    def accept(self, start: int, rgb: np.ndarray) -> None:
        self._colours[start : start + len(rgb)] = rgb

    def row_boundaries(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self._row_counts)]).astype(np.int64)

    def reconstruct(self) -> np.ndarray:
        """Raw colours of every pixel, float32 [H, W, 3], by coarse-to-fine interpolation."""
        evaluated = np.zeros((self.height, self.width, 3), dtype=np.float32)
        evaluated[self.mask] = self._colours
        current = None
        for level in range(int(self.levels.max()), -1, -1):
            ys, xs = lattice(self.height, 1 << level), lattice(self.width, 1 << level)
            known = self.mask[np.ix_(ys, xs)][..., None]
            nodes = evaluated[np.ix_(ys, xs)]
            if current is not None:
                nodes = np.where(known, nodes, current[np.ix_(ys, xs)])
            current = interpolate_axis(interpolate_axis(nodes, xs, self.width, axis=1), ys, self.height, axis=0)
        return current

    def image(self) -> np.ndarray:
        return rgb_to_uint8(self.reconstruct())

    def report(self) -> dict[str, Any]:
        pixels = self.height * self.width
        return {
            "evaluated_points": self.n_points,
            "image_pixels": pixels,
            "evaluated_fraction": round(self.n_points / pixels, 4),
        }


class Foveated(Topology):
    # float64 distances, int64 levels, float32 colours and reconstructions [H, W, 3]: a
    # 2000 x 2000 render of the tiny preset raised the peak RSS by 111 bytes a pixel.
    working_bytes_per_pixel = 112
    name = "foveated"
    description = "Full detail around a gaze point, sparser samples outside; reconstructs the full image."
    parameters = (
        Parameter("gaze_x", float, 0.5, "gaze point, fraction of the width from the left", minimum=0.0, maximum=1.0),
        Parameter("gaze_y", float, 0.5, "gaze point, fraction of the height from the top", minimum=0.0, maximum=1.0),
        Parameter("radius", float, 0.1, "fovea radius, fraction of the shorter side", minimum=0.001, maximum=2.0),
        Parameter("falloff", float, 1.0, "how fast spacing grows outside the fovea", minimum=0.01, maximum=100.0),
        Parameter("max_stride", int, 16, "largest spacing between samples in pixels (a power of two)", minimum=1, maximum=256),
    ) + VIEWPORT

    def layout(self, request: TopologyRequest) -> FoveatedLayout:
        p = request.params
        check_viewport(self.name, p)
        stride = p["max_stride"]
        if stride & (stride - 1):
            raise CipsError(f"The foveated topology's max_stride must be a power of two, not {stride}.")
        height, width = request.height, request.width
        gaze = (p["gaze_x"] * (width - 1), p["gaze_y"] * (height - 1))
        radius = p["radius"] * min(height, width)
        levels = sample_levels(height, width, gaze, radius, p["falloff"], int(math.log2(stride)))
        u = linspace(p["u_min"], p["u_max"], width)  # the flat grid's tables: same points
        v = linspace(p["v_min"], p["v_max"], height)
        return FoveatedLayout(u, v, levels)


@hookimpl
def register_topologies(register):
    register(Foveated())
