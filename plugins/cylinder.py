"""The ``cylinder`` topology: a seamless 360-degree panorama of any width.

On a cylinder-space model u is an angle with period 2 (u = -1 and u = +1 are the same
meridian). Column c of a W-wide panorama samples the centre of the c-th of W equal
sectors, u = -1 + (2c + 1) / W (shifted by ``heading``), NOT linspace(-1, 1, W): linspace
puts u = -1 and u = +1 in the first and last columns, i.e. the same meridian twice, a
visible duplicated seam. With sector centres, column W-1 and column 0 are neighbours
exactly 2/W apart, like every other pair, so the image wraps around without a seam.
"""

from __future__ import annotations

from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.contracts.topology import GridLayout, Parameter, Topology, TopologyRequest
from cips_deploy.errors import CipsError
from cips_deploy.runtime.coords import linspace, panorama_u


class Cylinder(Topology):
    name = "cylinder"
    description = "A seamless 360-degree panorama of any width on a cylinder-space model."
    parameters = (
        Parameter("heading", float, 0.0, "degrees to turn the panorama (0: the left edge looks at u = -1)"),
        Parameter("v_min", float, -1.0, "v of the top row"),
        Parameter("v_max", float, 1.0, "v of the bottom row"),
    )
    coordinate_spaces = ("cylinder",)
    # Its width covers the full 360 degrees: cips-deploy tags the PNG as a panorama (GPano XMP)
    # and `render --viewer` can show it (see cips_deploy.media.render_files).
    panorama = True

    def unsupported_space(self, coordinate_space: str) -> str:
        return (
            "The cylinder topology needs a cylinder-space model (u is an angle there), but this "
            f"generator's coordinate space is {coordinate_space}; use --topology flat for a {coordinate_space} model."
        )

    def layout(self, request: TopologyRequest) -> GridLayout:
        p = request.params
        if p["v_min"] == p["v_max"]:
            raise CipsError(f"The cylinder topology's v_min and v_max are both {p['v_min']:g}; the viewport is empty.")
        v = linspace(p["v_min"], p["v_max"], request.height)  # [H]
        return GridLayout(panorama_u(request.width, p["heading"]), v)


@hookimpl
def register_topologies(register):
    register(Cylinder())
