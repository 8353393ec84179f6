"""The setup every render shares: the layout of the request and the styles it is drawn with.

The in-memory renderer (:func:`cips_deploy.runtime.render.render_detailed`) and the streamed one
(:class:`cips_deploy.runtime.cells.CellRenderer`) both start here, so a model, a topology and
a seed give the same points and styles whichever writes the image.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from cips_deploy.contracts.backend import Backend
from cips_deploy.errors import CipsError
from cips_deploy.runtime.plugin_calls import call
from cips_deploy.runtime.plugin_manager import Registered
from cips_deploy.runtime.render_request import check_style
from cips_deploy.runtime.styles import latent
from cips_deploy.contracts.topology import TopologyRequest


class Prepared(NamedTuple):
    layout: Any  # the topology's Layout for the request
    w: Tensor  # [1, S]: the seed's style (or the caller's)
    w_blend: Tensor | None  # [1, S]: the blend seed's style, for per-point styles


def prepare(
    runner: Backend,
    backend: Registered,
    topology: Registered,
    height: int,
    width: int,
    params: dict[str, Any],
    seed: int,
    truncation: float,
    blend_seed: int | None = None,
    style: Tensor | None = None,
) -> Prepared:
    """The layout for ``height x width`` in the model's coordinate space, and the styles:
    the seed's (or ``style``, already [1, S]) and the blend seed's, through the backend's mapping."""
    config = runner.config
    if config.coordinate_space not in topology.item.coordinate_spaces:
        raise CipsError(topology.item.unsupported_space(config.coordinate_space))
    request = TopologyRequest(height, width, config.coordinate_space, params)
    layout = call(topology, "layout", topology.item.layout, request)
    with torch.inference_mode():
        if style is None:
            w = call(backend, "map", runner.map, latent(seed, config), truncation)  # [1, S]
        else:
            w = check_style(style, config.style_dim)
        w_blend = None
        if blend_seed is not None:
            w_blend = call(backend, "map", runner.map, latent(blend_seed, config), truncation)
    return Prepared(layout, w, w_blend)
