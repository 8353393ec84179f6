"""The setup every render shares: the layout of the request and the styles it is drawn with.

The in-memory renderer (:func:`cips_deploy.runtime.render.render_detailed`) and the streamed one
(:class:`cips_deploy.runtime.cells.CellRenderer`) both start here, so a model, a topology and
a seed give the same points and styles whichever writes the image.

:class:`Controls` are what StyleGAN's ``gen_images.py`` users steer a render with besides the
seed: a camera move of the coordinates (``transform``: :class:`~cips_deploy.runtime.coords.CoordinateTransform`),
style mixing (``mix_seed``'s w for the style inputs ``mix_from`` and later), a class label
(``class_index``) and a saved style (``w``: ``render --w proj.npz``). Styles are ``[1, S]``,
or per-layer ``[1, L, S]`` (``L = config.family.style_layers(config)``) once they differ between
layers; those need a backend that runs per-layer styles (``Backend.run_layers``).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from cips_deploy.contracts.backend import Backend, layer_styles_refusal, takes_layer_styles
from cips_deploy.contracts.topology import TopologyRequest
from cips_deploy.errors import CipsError
from cips_deploy.runtime.backend_arrays import from_backend, inference_mode, to_backend
from cips_deploy.runtime.coords import CoordinateTransform, coordinate_transform
from cips_deploy.runtime.plugin_calls import call
from cips_deploy.runtime.plugin_manager import Registered
from cips_deploy.runtime.render_request import check_style
from cips_deploy.runtime.seeds import check_seed
from cips_deploy.runtime.styles import class_label, latent
from cips_deploy.runtime.transformed import TransformedLayout

MAX_CLASS = 2**31 - 1


class Prepared(NamedTuple):
    layout: Any  # the topology's Layout for the request (seen through the transform, if any)
    w: np.ndarray  # float32 [1, S]: the seed's style (or the caller's); [1, L, S]: per-layer styles
    w_blend: np.ndarray | None  # float32 [1, S]: the blend seed's style, for per-point styles


@dataclass(frozen=True)
class Controls:
    """What steers a render besides seed and truncation (module text). Picklable: streamed
    renders hand it to their worker processes. Build it with :meth:`make`, which checks it."""

    transform: CoordinateTransform | None = None
    mix_seed: int | None = None
    mix_from: int | None = None
    class_index: int | None = None
    w: np.ndarray | None = field(default=None, compare=False)  # float32 [1, S] or [1, L, S]; not truncated
    w_source: str | None = None  # where ``w`` came from (a file), for the sentence when its shape is wrong
    announce: bool = True  # say on stderr when a family was not trained for per-layer styles

    @classmethod
    def make(
        cls, transform: Any = None, mix_seed: Any = None, mix_from: Any = None, class_index: Any = None, w: Any = None,
        w_source: str | None = None,
    ) -> "Controls":
        """Checked controls (one sentence for a bad value); ``transform`` as :func:`coordinate_transform` takes it."""
        if mix_seed is not None:
            check_seed(mix_seed, "mix seed")
            if mix_from is None:
                raise CipsError("Style mixing needs the first style input to take from the mix seed: give --mix-from K with --mix-seed.")
        if mix_from is not None:
            if mix_seed is None:
                raise CipsError("--mix-from names where the mix seed's style starts; give --mix-seed too.")
            if not isinstance(mix_from, (int, np.integer)) or isinstance(mix_from, bool) or mix_from < 0:
                raise CipsError(f"--mix-from must be a whole number from 0, not {mix_from!r}.")
        if class_index is not None and (
            not isinstance(class_index, (int, np.integer)) or isinstance(class_index, bool) or not 0 <= class_index <= MAX_CLASS
        ):
            raise CipsError(f"The class must be a whole number from 0, not {class_index!r}.")
        return cls(
            coordinate_transform(transform), None if mix_seed is None else int(mix_seed),
            None if mix_from is None else int(mix_from), None if class_index is None else int(class_index), w, w_source,
        )

    def fields(self) -> dict[str, Any]:
        """JSON-ready facts that change pixels (a streamed render's manifest: --resume must match them)."""
        facts: dict[str, Any] = {}
        if self.transform is not None:
            facts["transform"] = self.transform.as_dict()
        if self.mix_seed is not None:
            facts["mix"] = [self.mix_seed, self.mix_from]
        if self.class_index is not None:
            facts["class"] = self.class_index
        if self.w is not None:
            array = np.ascontiguousarray(np.asarray(self.w, dtype=np.float32))
            facts["w"] = hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()
        return facts


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
    controls: Controls | None = None,
) -> Prepared:
    """The layout for ``height x width`` in the model's coordinate space (through the transform
    of ``controls``), and the styles: the seed's (or ``style`` / ``controls.w``, numpy or torch
    ``[1, S]`` or ``[1, L, S]``), mixed with the mix seed's, and the blend seed's, through the backend's mapping."""
    controls = controls or Controls()
    config = runner.config
    if config.coordinate_space not in topology.attribute("coordinate_spaces", (), tuple):  # plugin code: named on failure
        raise CipsError(call(topology, "unsupported_space", topology.item.unsupported_space, config.coordinate_space))
    request = TopologyRequest(height, width, config.coordinate_space, params)
    layout = call(topology, "layout", topology.item.layout, request)
    if controls.transform is not None:
        layout = TransformedLayout(layout, controls.transform)
    layers = style_layers(config)
    source = None
    if style is None:
        style, source = controls.w, controls.w_source
    with inference_mode():
        if style is None:
            w = mapped_style(runner, backend, seed, truncation, controls.class_index)
        elif source is None:
            w = check_style(style, config.style_dim, layers if layers > 1 else None)
        else:
            try:
                w = check_style(style, config.style_dim, layers if layers > 1 else None)
            except CipsError:
                wanted = f"[1, {config.style_dim}]" + (f" or [1, {layers}, {config.style_dim}]" if layers > 1 else "")
                raise CipsError(
                    f"{source} holds a style of shape {list(getattr(style, 'shape', ()))}, but this {config.arch} model takes {wanted}."
                ) from None
        w_blend = None if blend_seed is None else mapped_style(runner, backend, blend_seed, truncation, controls.class_index)
        if controls.mix_seed is not None:
            w = mixed(w, mapped_style(runner, backend, controls.mix_seed, truncation, controls.class_index), controls.mix_from, layers, config)
    if w.ndim == 3 and (w == w[:, :1]).all():
        w = np.ascontiguousarray(w[:, 0])  # every layer the same style: one style, which any backend runs
    if w.ndim == 3:
        if w_blend is not None:
            raise CipsError(
                "--blend-seed gives every point its own style, which does not combine with per-layer styles "
                "(--mix-seed, a per-layer --w); use one or the other."
            )
        if not takes_layer_styles(runner):
            raise CipsError(layer_styles_refusal(runner))
        family = getattr(config, "family", None)
        if controls.announce and not getattr(family, "trained_with_layer_styles", True):
            print(
                f"Note: the {family.name} family was trained with one style for all layers; per-layer styles "
                "(style mixing) run, but are outside what the model learned.",
                file=sys.stderr,
            )
    return Prepared(layout, w, w_blend)


def style_layers(config: Any) -> int:
    """L, the model's number of style inputs (1 for a family that takes one style only)."""
    family = getattr(config, "family", None)
    return int(family.style_layers(config)) if family is not None and hasattr(family, "style_layers") else 1


def mixed(w: np.ndarray, w_mix: np.ndarray, mix_from: int, layers: int, config: Any) -> np.ndarray:
    """StyleGAN's style mixing: ``w`` ([1, S] or [1, L, S]) for style inputs before ``mix_from``,
    ``w_mix`` [1, S] from ``mix_from`` on -> per-layer styles float32 [1, L, S]."""
    if layers < 2:
        name = getattr(getattr(config, "family", None), "name", config.arch)
        raise CipsError(f"The {name} family takes one style for all layers, so it has no later layers to mix a style into.")
    if not 0 <= mix_from < layers:
        raise CipsError(f"--mix-from must be from 0 to {layers - 1} (this model has {layers} style inputs), not {mix_from}.")
    ws = np.array(np.broadcast_to(w[:, None, :], (1, layers, w.shape[-1])) if w.ndim == 2 else w, dtype=np.float32)
    ws[:, mix_from:] = w_mix[:, None, :]
    return ws


def mapped_style(runner: Backend, backend: Registered, seed: int, truncation: float, class_index: int | None = None) -> np.ndarray:
    """The seed's z ``[1, Z]`` (and, for a class-conditional model, the one-hot label of
    ``class_index``: :func:`~cips_deploy.runtime.styles.class_label`) through the backend's
    mapping and truncation: w float32 ``[1, S]``."""
    z = latent(seed, runner.config)
    c = class_label(runner.config, class_index)  # None for an unconditional model (then map takes z alone)
    if c is None:
        w = call(backend, "map", runner.map, *to_backend(runner, z), truncation)
    else:
        z, c = to_backend(runner, z, c)
        w = call(backend, "map", runner.map, z, truncation, c=c)
    w = from_backend(w, backend.label, "map")
    if w.ndim != 2 or w.shape[0] != 1:
        raise CipsError(f"{backend.label} mapped one latent to a style of shape {list(w.shape)}; expected [1, S].")
    return w
