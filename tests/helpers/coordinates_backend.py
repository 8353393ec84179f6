"""A backend that colours points by their coordinates: ``rgb = (u, v, u * v)``, no network.

Synthesis then costs nothing and what runs is the output pipeline (layout, chunker, cells,
sink), whose memory the streamed-render test and ``benchmarks/gigapixel.py`` measure at sizes
a real model would take hours to render. A plugin module: register it with
``load_registry(extra_plugins=[("coordinates", coordinates_backend)])``; it needs only
``cips_deploy`` (scripts put this folder on ``sys.path`` and import it by name).
"""

import torch

from cips_deploy import hookimpl
from cips_deploy.contracts.backend import Backend
from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.contracts.topology import Parameter


class Coordinates(Backend):
    name = "coordinates"
    description = "rgb = (u, v, u * v): no synthesis, the output pipeline alone"
    options = (Parameter("space", str, "plane", "the coordinate space the fake model declares", choices=("plane", "cylinder")),)

    def __init__(self, model, *, device="cpu", space="plane"):
        self.config = GeneratorConfig(arch="skip", size=32, hidden=8, style_dim=4, widths=(8,), coordinate_space=space)

    def map(self, z, truncation=1.0):
        return torch.zeros(z.shape[0], 4)  # w [B, 4]

    def run(self, coords, w):
        return torch.cat([coords, coords[..., :1] * coords[..., 1:]], dim=-1)  # [B, N, 2] -> [B, N, 3]

    def bytes_per_point(self, per_point_style=False):
        return 64


@hookimpl
def register_backends(register):
    register(Coordinates)
