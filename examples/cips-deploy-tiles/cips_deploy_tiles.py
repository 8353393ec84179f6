"""A third-party cips-deploy topology: the training image repeated as a wallpaper of tiles.

The image is cut into ``columns x rows`` tiles; each tile samples the whole training
square [-1, 1]^2. With ``mirror`` every other tile is flipped, so neighbouring tiles meet
edge to edge (the pattern is continuous, like a kaleidoscope's).
"""

from __future__ import annotations

import torch

from cips_deploy import hookimpl
from cips_deploy.topology import Parameter, PointLayout, Topology, TopologyRequest


def tile_axis(length: int, tiles: int, mirror: bool) -> torch.Tensor:
    """Coordinates along one axis, float32 [length]: [-1, 1] once per tile, mirrored alternately."""
    position = (torch.arange(length, dtype=torch.float64) + 0.5) * tiles / length  # tile units
    index = torch.floor(position)
    local = 2.0 * (position - index) - 1.0  # [-1, 1) inside the tile
    if mirror:
        local = torch.where(index % 2 == 1, -local, local)
    return local.float()


class Tiles(Topology):
    name = "tiles"
    description = "The training image as a wallpaper of columns x rows tiles, mirrored so the seams match."
    parameters = (
        Parameter("columns", int, 3, "tiles across", minimum=1, maximum=64),
        Parameter("rows", int, 2, "tiles down", minimum=1, maximum=64),
        Parameter("mirror", bool, True, "flip every other tile so that neighbours meet edge to edge"),
    )
    coordinate_spaces = ("plane",)

    def layout(self, request: TopologyRequest) -> PointLayout:
        p = request.params
        u = tile_axis(request.width, p["columns"], p["mirror"])  # [W]
        v = tile_axis(request.height, p["rows"], p["mirror"])  # [H]
        vv, uu = torch.meshgrid(v, u, indexing="ij")  # [H, W] each
        points = torch.stack([uu, vv], dim=-1).reshape(-1, 2)  # [H*W, 2], row-major
        return PointLayout(points, request.height, request.width)


@hookimpl
def register_topologies(register):
    register(Tiles())
