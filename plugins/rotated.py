"""The ``rotated`` topology: the grid rotated by an angle and scaled about a centre.

Pixel p of the output, on a square-pixel grid whose longer side spans [-1, 1], samples
``centre + scale * R(angle) @ p``. In (u, v) with v pointing down, R(angle) =
[[cos, -sin], [sin, cos]] turns the sampling grid clockwise on screen, so the content
appears turned counter-clockwise by ``angle``. Multiples of 90 degrees use exact 0/1/-1
entries, so a quarter turn of a square image is exactly ``np.rot90`` of the flat render.
"""

from __future__ import annotations

import math

from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.contracts.topology import GridLayout, Parameter, Topology, TopologyRequest
from cips_deploy.runtime.coords import linspace


def rotation(angle_degrees: float) -> tuple[float, float]:
    """(cos, sin) of the angle, exact at multiples of 90 degrees (cos(pi/2) is not 0 in floats)."""
    quarter_turns, remainder = divmod(angle_degrees, 90.0)
    if remainder == 0.0:
        return [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][int(quarter_turns) % 4]
    radians = math.radians(angle_degrees)
    return math.cos(radians), math.sin(radians)


class Rotated(Topology):
    name = "rotated"
    description = "The view turned by an angle and scaled about a centre point (content turns counter-clockwise)."
    parameters = (
        Parameter("angle", float, 30.0, "degrees; the content turns counter-clockwise"),
        Parameter("scale", float, 1.0, "extent of the view relative to the training image (2 zooms out)", minimum=1e-6, maximum=1e6),
        Parameter("centre_u", float, 0.0, "u of the point shown at the image centre"),
        Parameter("centre_v", float, 0.0, "v of the point shown at the image centre"),
    )

    def layout(self, request: TopologyRequest) -> GridLayout:
        p = request.params
        # Square pixels: the longer side spans [-1, 1]; a square image is the flat grid.
        longest = max(request.height, request.width)
        half_u, half_v = request.width / longest, request.height / longest
        u = linspace(-half_u, half_u, request.width)  # [W]
        v = linspace(-half_v, half_v, request.height)  # [H]
        cos, sin = rotation(p["angle"])
        s = p["scale"]
        matrix = (s * cos, -s * sin, s * sin, s * cos)
        return GridLayout(u, v, matrix=matrix, offset=(p["centre_u"], p["centre_v"]))


@hookimpl
def register_topologies(register):
    register(Rotated())
