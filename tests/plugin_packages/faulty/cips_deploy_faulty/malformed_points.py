"""Topologies that return malformed points, crash, or assemble nonsense; plus registrations
that are invalid outright."""

import numpy as np
import torch

from cips_deploy import hookimpl
from cips_deploy.contracts.chunking import Chunker
from cips_deploy.contracts.topology import PointLayout, Topology


def grid_points(height, width):
    """[H*W, 2] float32 points of the flat grid."""
    v, u = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack([u, v], dim=-1).reshape(-1, 2)


class WrongShape(Topology):
    name = "wrong-shape"
    description = "Returns [N, 3] points."

    def layout(self, request):
        layout = PointLayout(grid_points(request.height, request.width), request.height, request.width)
        layout.points = lambda start, stop: torch.zeros(stop - start, 3)
        return layout


class WrongDtype(Topology):
    name = "wrong-dtype"
    description = "Returns integer points."

    def layout(self, request):
        points = np.zeros((request.height * request.width, 2), dtype=np.int64)
        return PointLayout(points, request.height, request.width)


class NanPoints(Topology):
    name = "nan-points"
    description = "Returns a NaN among its points."

    def layout(self, request):
        points = grid_points(request.height, request.width)
        points[len(points) // 2, 1] = float("nan")
        return PointLayout(points, request.height, request.width)


class Crashing(Topology):
    name = "crashing"
    description = "Raises while building its layout."

    def layout(self, request):
        return {}["no such key"]


class BadImage(Topology):
    name = "bad-image"
    description = "Assembles a float image of the wrong size."

    def layout(self, request):
        return PointLayout(
            grid_points(request.height, request.width), request.height, request.width,
            assemble=lambda rgb: np.zeros((2, 2, 3), dtype=np.float32),
        )


class NoDescription:
    name = "no-description"
    parameters = ()
    coordinate_spaces = ("plane",)

    def layout(self, request):
        raise AssertionError("never called: registration is refused")


class Overlapping(Chunker):
    name = "overlapping"
    description = "Returns overlapping spans."

    def spans(self, request):
        return [(0, request.n_points), (0, request.n_points)]


@hookimpl
def register_topologies(register):
    for topology in (WrongShape(), WrongDtype(), NanPoints(), Crashing(), BadImage(), NoDescription()):
        register(topology)


@hookimpl
def register_chunkers(register):
    register(Overlapping())
