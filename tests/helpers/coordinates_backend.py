"""A backend that colours points by their coordinates: ``rgb = (u, v, u * v)``, no network.

Synthesis then costs nothing and what runs is the output pipeline (layout, chunker, cells,
sink), whose memory the streamed-render test and ``benchmarks/gigapixel.py`` measure at sizes
a real model would take hours to render. A plugin module: register it with
``load_registry(extra_plugins=[("coordinates", coordinates_backend)])``; it needs only
``cips_deploy`` and numpy (scripts put this folder on ``sys.path`` and import it by name).

Two classes: ``coordinates`` on the numpy contract (:mod:`cips_deploy.contracts.backend`),
and ``coordinates-torch``, the same colours written against the legacy torch-tensor contract
(:mod:`cips_deploy.backend`, ``arrays = "torch"``), which imports torch only when it runs.
"""

import numpy as np

from cips_deploy import hookimpl
from cips_deploy.backend import Backend as LegacyBackend
from cips_deploy.contracts.backend import Backend
from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.contracts.topology import Parameter

STYLE_DIM = 4


def fake_config(space: str) -> GeneratorConfig:
    return GeneratorConfig(arch="skip", size=32, hidden=8, style_dim=STYLE_DIM, widths=(8,), coordinate_space=space)


class Coordinates(Backend):
    name = "coordinates"
    description = "rgb = (u, v, u * v): no synthesis, the output pipeline alone"
    options = (Parameter("space", str, "plane", "the coordinate space the fake model declares", choices=("plane", "cylinder")),)

    def __init__(self, model, *, device="cpu", space="plane"):
        self.config = fake_config(space)

    def map(self, z, truncation=1.0):
        return np.zeros((z.shape[0], STYLE_DIM), dtype=np.float32)  # w [B, 4]

    def run(self, coords, w):
        return np.concatenate([coords, coords[..., :1] * coords[..., 1:]], axis=-1)  # [B, N, 2] -> [B, N, 3]

    def bytes_per_point(self, per_point_style=False):
        return 64


class TorchCoordinates(LegacyBackend):
    """The same colours on the legacy contract: ``map`` and ``run`` receive and return CPU torch
    tensors, and say so in ``received`` (the type of every input they were given)."""

    name = "coordinates-torch"
    description = "rgb = (u, v, u * v) on torch tensors (the legacy backend contract)"
    options = Coordinates.options

    def __init__(self, model, *, device="cpu", space="plane"):
        self.config = fake_config(space)
        self.received = []

    def map(self, z, truncation=1.0):
        import torch

        self.received.append(type(z))
        return torch.zeros(z.shape[0], STYLE_DIM)

    def run(self, coords, w):
        import torch

        self.received += [type(coords), type(w)]
        return torch.cat([coords, coords[..., :1] * coords[..., 1:]], dim=-1)

    def bytes_per_point(self, per_point_style=False):
        return 64


@hookimpl
def register_backends(register):
    register(Coordinates)
    register(TorchCoordinates)
