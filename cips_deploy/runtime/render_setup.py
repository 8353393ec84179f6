"""The setup every render shares: the layout of the request and the styles it is drawn with.

The in-memory renderer (:func:`cips_deploy.runtime.render.render_detailed`) and the streamed one
(:class:`cips_deploy.runtime.cells.CellRenderer`) both start here, so a model, a topology and
a seed give the same points and styles whichever writes the image.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from cips_deploy.contracts.backend import Backend
from cips_deploy.contracts.topology import TopologyRequest
from cips_deploy.errors import CipsError
from cips_deploy.runtime.backend_arrays import from_backend, inference_mode, to_backend
from cips_deploy.runtime.plugin_calls import call
from cips_deploy.runtime.plugin_manager import Registered
from cips_deploy.runtime.render_request import check_style
from cips_deploy.runtime.styles import latent


class Prepared(NamedTuple):
    layout: Any  # the topology's Layout for the request
    w: np.ndarray  # float32 [1, S]: the seed's style (or the caller's)
    w_blend: np.ndarray | None  # float32 [1, S]: the blend seed's style, for per-point styles


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
    style: Any = None,
) -> Prepared:
    """The layout for ``height x width`` in the model's coordinate space, and the styles:
    the seed's (or ``style``, numpy or torch ``[1, S]``) and the blend seed's, through the backend's mapping."""
    config = runner.config
    if config.coordinate_space not in topology.item.coordinate_spaces:
        raise CipsError(topology.item.unsupported_space(config.coordinate_space))
    request = TopologyRequest(height, width, config.coordinate_space, params)
    layout = call(topology, "layout", topology.item.layout, request)
    with inference_mode():
        w = mapped_style(runner, backend, seed, truncation) if style is None else check_style(style, config.style_dim)
        w_blend = None if blend_seed is None else mapped_style(runner, backend, blend_seed, truncation)
    return Prepared(layout, w, w_blend)


def mapped_style(runner: Backend, backend: Registered, seed: int, truncation: float) -> np.ndarray:
    """The seed's z ``[1, Z]`` through the backend's mapping and truncation: w float32 ``[1, S]``."""
    z = latent(seed, runner.config)
    w = from_backend(call(backend, "map", runner.map, *to_backend(runner, z), truncation), backend.label, "map")
    if w.ndim != 2 or w.shape[0] != 1:
        raise CipsError(f"{backend.label} mapped one latent to a style of shape {list(w.shape)}; expected [1, S].")
    return w
