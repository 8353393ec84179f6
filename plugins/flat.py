"""The ``flat`` topology: the official sampling grid, at any size, over any viewport.

Pixel (r, c) of an H x W image samples u = linspace(u_min, u_max, W)[c] and
v = linspace(v_min, v_max, H)[r], exactly the grid of the official code, so the default
viewport [-1, 1]^2 reproduces the training framing at any resolution (super-resolution:
the official FFHQ-1024 release is a 256 model rendered on a 1024 grid). Other viewports
crop, translate or zoom; ranges beyond [-1, 1] extrapolate.
"""

from __future__ import annotations

from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.contracts.topology import GridLayout, Parameter, Topology, TopologyRequest
from cips_deploy.errors import CipsError
from cips_deploy.runtime.coords import linspace

VIEWPORT = (
    Parameter("u_min", float, -1.0, "u of the leftmost column (-1 is the training image's left edge)"),
    Parameter("u_max", float, 1.0, "u of the rightmost column"),
    Parameter("v_min", float, -1.0, "v of the top row (-1 is the training image's top edge)"),
    Parameter("v_max", float, 1.0, "v of the bottom row"),
)


def check_viewport(topology: str, params: dict) -> None:
    """An empty viewport is a mistake: u_min == u_max renders one colour column."""
    for axis in ("u", "v"):
        low, high = params[f"{axis}_min"], params[f"{axis}_max"]
        if low == high:
            raise CipsError(f"The {topology} topology's {axis}_min and {axis}_max are both {low:g}; the viewport is empty.")


class Flat(Topology):
    name = "flat"
    description = "The training framing at any resolution; a viewport (u/v ranges) crops, pans or zooms."
    parameters = VIEWPORT

    def layout(self, request: TopologyRequest) -> GridLayout:
        p = request.params
        check_viewport(self.name, p)
        u = linspace(p["u_min"], p["u_max"], request.width)  # [W]: torch.linspace's float32 bits
        v = linspace(p["v_min"], p["v_max"], request.height)  # [H]
        return GridLayout(u, v)


@hookimpl
def register_topologies(register):
    register(Flat())
