"""Generators: ``(coordinates [B, N, 2], style) -> colours [B, N, 3]``.

:class:`Generator` is the common base and the factory: ``Generator(config)`` builds the
family the config names. :class:`CipsGenerator` covers CIPSskip (the paper's default),
CIPSres and CIPS-NE (no embedding grid); CREPS lives in :mod:`cips_deploy.families.creps`. Each
works on a ``plane`` or a ``cylinder`` coordinate space. Every pixel is computed from its own
coordinate and the sample's style alone, so any set of points, in any number of chunks,
gives the same colours.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError
from cips_deploy.families.layers import CoordinateEmbedding, FourierFeatures, MappingNetwork, ResidualBlock, StyledLayer, ToRGB
from cips_deploy.families.separable_inputs import input_features as separable_input_features


class SkipBlock(nn.Module):
    """CIPSskip block: two styled layers; the generator adds this block's ToRGB to the image."""

    def __init__(self, in_features: int, out_features: int, style_dim: int) -> None:
        super().__init__()
        self.layer1 = StyledLayer(in_features, out_features, style_dim)
        self.layer2 = StyledLayer(out_features, out_features, style_dim)
        self.to_rgb = ToRGB(out_features, style_dim)

    def forward(self, x: Tensor, w: Tensor, noise: bool = False, w2: Tensor | None = None) -> Tensor:
        """``w`` styles both layers, or the first only when ``w2`` (per-layer styles) styles the second."""
        return self.layer2(self.layer1(x, w, noise), w if w2 is None else w2, noise)


class Generator(nn.Module, metaclass=ABCMeta):
    """Base class of every generator family: ``(coords [B, N, 2], w) -> rgb [B, N, 3]``.

    ``Generator(config)`` builds the class of the family registered for ``config.arch``
    (``register_families``; :class:`CipsGenerator` for CIPS, :class:`~cips_deploy.families.creps.CrepsGenerator`
    for CREPS). Every family has a ``mapping`` network (z -> w) and a buffer ``w_avg [S]``,
    the average w and the centre of truncation, and implements :meth:`synthesize`.
    """

    def __new__(cls, config: GeneratorConfig | None = None, *args: Any, **kwargs: Any) -> "Generator":
        if cls is Generator and config is not None:
            cls = config.family.generator_class()  # the registered family of config.arch
        return super().__new__(cls)

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.mapping = MappingNetwork(config.style_dim, config.n_mlp, config.lr_mlp)  # CIPS: z as wide as w, no labels
        self.register_buffer("w_avg", torch.zeros(config.style_dim))
        # Facts about where the weights came from; saved with the checkpoint.
        self.provenance: dict[str, Any] = {}

    # ----------------------------------------------------------------- public API

    @property
    def device(self) -> torch.device:
        return self.w_avg.device

    @property
    def num_parameters(self) -> int:
        """Learned parameters (the official count: ``w_avg`` is a statistic, not a parameter)."""
        return sum(p.numel() for p in self.parameters())

    def map(self, z: Tensor, truncation: float = 1.0, c: Tensor | None = None) -> Tensor:
        """z [B, Z] (and, for a class-conditional model, c [B, C]) -> w [B, S], truncated towards
        ``w_avg`` (in W, as StyleGAN does; the official conditional code truncates towards the
        same single average, whatever the class).

        c is float32 one-hot labels as the official code takes them (:func:`cips_deploy.runtime.styles.class_label`);
        required when ``config.c_dim > 0`` and refused otherwise. z and c may be numpy arrays
        (the runtime's seeds, :func:`cips_deploy.seed_latent`)."""
        z = self._tensor(z)
        if z.dim() < 2 or z.shape[-1] != self.config.latent_dim:  # [B, N, Z]: one latent per point
            raise CipsError(f"z must have shape [B, {self.config.latent_dim}] for this generator, not {list(z.shape)}.")
        c = self._label(c, tuple(z.shape[:-1]))
        w = self.mapping(z) if c is None else self.mapping(z, c)
        if truncation != 1.0:
            w = self.w_avg.lerp(w, truncation)
        return w

    def _label(self, c: Any, batch: tuple[int, ...]) -> Tensor | None:
        """c [B, C] (``batch`` + [C]) as a float32 tensor, checked against ``config.c_dim``; None
        for an unconditional model."""
        classes = self.config.c_dim
        if c is None:
            if classes:
                raise CipsError(f"This model is class-conditional ({classes} classes): give a label c [B, {classes}].")
            return None
        if not classes:
            raise CipsError("This model is unconditional: it takes no class label c.")
        c = self._tensor(c)
        if tuple(c.shape) != (*batch, classes):
            raise CipsError(f"The label c must have shape {[*batch, classes]}, not {list(c.shape)}.")
        return c.float()

    def synthesize(self, coords: Tensor, w: Tensor, *, noise: bool = False, dtype: torch.dtype | None = None) -> Tensor:
        """coords [B, N, 2] (u, v) and w [B, S] or [B, N, S] -> raw rgb [B, N, 3] (about [-1, 1]).

        A per-sample w is folded into each layer's weights once; a per-point w [B, N, S]
        (spatially varying styles) modulates each point's activations instead.
        ``noise`` adds fresh per-point noise (training only). ``dtype`` (CIPS families only):
        ``torch.bfloat16`` or ``torch.float16`` runs the layers' products in that precision
        (see :meth:`CipsGenerator._synthesize`); None or ``torch.float32``: float32 throughout.
        """
        coords, w = self._tensor(coords), self._tensor(w)  # numpy inputs (the runtime's) as tensors, no copy on CPU
        self._check_inputs(coords, w)
        return self._synthesize(coords, w, noise, dtype=torch.float32 if dtype is None else dtype)

    @abstractmethod
    def _synthesize(self, coords: Tensor, w: Tensor, noise: bool, dtype: torch.dtype = torch.float32) -> Tensor:
        """The family's synthesis, inputs already checked."""

    def synthesize_layers(self, coords: Tensor, ws: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
        """coords [B, N, 2] and per-layer styles ws [B, L, S] -> raw rgb [B, N, 3]: style input i
        takes ``ws[:, i]`` (style mixing, a per-layer projection); L = ``config.family.style_layers(config)``,
        the style inputs in the order the layers run. ``ws`` of L equal rows is :meth:`synthesize` of that w."""
        coords, ws = self._tensor(coords), self._tensor(ws)
        layers = self.config.family.style_layers(self.config)
        if coords.dim() != 3 or coords.shape[-1] != 2:
            raise CipsError(f"Coordinates must have shape [B, N, 2], not {list(coords.shape)}.")
        if ws.dim() != 3 or ws.shape[0] != coords.shape[0] or ws.shape[1] != layers:
            raise CipsError(f"Per-layer styles must have shape [B, {layers}, S] matching coordinates {list(coords.shape)}, not {list(ws.shape)}.")
        self._check_width(ws, "ws")
        return self._synthesize_layers(coords, ws, torch.float32 if dtype is None else dtype)

    def _synthesize_layers(self, coords: Tensor, ws: Tensor, dtype: torch.dtype) -> Tensor:
        """The family's synthesis with per-layer styles ws [B, L, S], inputs checked; the default: one style only."""
        raise CipsError(f"The {self.config.family.name} family takes one style for all layers, not one per layer.")

    def forward(self, coords: Tensor, w: Tensor) -> Tensor:
        return self.synthesize(coords, w)

    def mean_w(self, n_samples: int = 10_000, seed: int = 0) -> Tensor:
        """The mean of w over ``n_samples`` z ~ N(0, I) drawn with ``seed``: [S]; a conditional
        model draws a class for each uniformly (official training averages over its data's labels)."""
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n_samples, self.config.latent_dim, generator=generator).to(self.device)
        c = None
        if self.config.c_dim:
            classes = torch.randint(self.config.c_dim, (n_samples,), generator=generator)
            c = torch.nn.functional.one_hot(classes, self.config.c_dim).float().to(self.device)
        with torch.no_grad():
            return (self.mapping(z) if c is None else self.mapping(z, c)).mean(dim=0)

    def save(self, path: str | Path, *, overwrite: bool = True) -> None:
        """Write the generator as one safetensors file with its config and provenance."""
        from cips_deploy.families.weights import save_generator

        save_generator(self, path, overwrite=overwrite)

    # ------------------------------------------------------------------- helpers

    def _tensor(self, value: Any) -> Tensor:
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).to(self.device)
        return value

    def _check_inputs(self, coords: Tensor, w: Tensor) -> None:
        if coords.dim() != 3 or coords.shape[-1] != 2:
            raise CipsError(f"Coordinates must have shape [B, N, 2], not {list(coords.shape)}.")
        if w.dim() not in (2, 3) or w.shape[0] != coords.shape[0] or (w.dim() == 3 and w.shape[1] != coords.shape[1]):
            raise CipsError(
                f"w must have shape [B, S] or [B, N, S] matching coordinates {list(coords.shape)}, not {list(w.shape)}."
            )
        self._check_width(w, "w")

    def _check_width(self, tensor: Tensor, name: str) -> None:
        if tensor.shape[-1] != self.config.style_dim:
            raise CipsError(
                f"{name} has width {tensor.shape[-1]} but this generator's style width is {self.config.style_dim}."
            )

    @abstractmethod
    def flops_per_point(self) -> int:
        """Floating-point operations (2 per multiply-add) to synthesize one point, per sample."""

    # ------------------------------------------------- the family interface (defaults: CIPS)

    # Whether pixels factor through per-row and per-column lines (``line_features``,
    # ``compose_block``, ``compose_points``, ``line_floats_per_value``): backends then cache lines.
    line_factored: bool = False

    def grid_flops_per_point(self, height: int, width: int) -> float:
        """FLOPs per pixel when a height x width grid is rendered by the fastest path."""
        return float(self.flops_per_point())

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        """The ``dtype`` values :meth:`synthesize` accepts."""
        return (torch.float32, torch.bfloat16, torch.float16)

    def reference_synthesize(self, coords: Tensor, w: Tensor) -> Tensor:
        """The official code's way of computing: coords [B, 2, H, W], w [B, S] -> rgb [B, 3, H, W]."""
        from cips_deploy.families.reference import reference_synthesize

        return reference_synthesize(self, coords, w)

    def info_facts(self) -> dict[str, Any]:
        """Family-specific facts for ``cips-deploy info``."""
        return {}

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"arch={c.arch}, size={c.size}, coordinate_space={c.coordinate_space}, "
            f"params={self.num_parameters:,}, flops/point={self.flops_per_point():,}"
        )


class CipsGenerator(Generator):
    """A CIPS generator: CIPSskip, CIPSres or CIPS-NE.

    Modules: ``mapping`` (z -> w), ``fourier`` and ``embedding`` (coordinates -> input
    features), ``first`` (input features -> widths[0]), ``blocks`` and, for CIPSres,
    ``to_rgb``. The module names are the official ones, so official weights map one to one.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__(config)
        c = config
        cylinder = c.coordinate_space == "cylinder"
        self.fourier = FourierFeatures(c.hidden, cylinder=cylinder)
        self.embedding = CoordinateEmbedding(c.hidden, c.size, cylinder=cylinder) if c.has_embedding else None
        input_features = 2 * c.hidden if c.has_embedding else c.hidden
        self.first = StyledLayer(input_features, c.widths[0], c.style_dim)
        block_type = ResidualBlock if c.arch == "res" else SkipBlock
        in_features = c.widths[0]
        blocks = []
        for width in c.widths:
            blocks.append(block_type(in_features, width, c.style_dim))
            in_features = width
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = ToRGB(in_features, c.style_dim) if c.arch == "res" else None

    def _synthesize(self, coords: Tensor, w: Tensor, noise: bool, dtype: torch.dtype = torch.float32) -> Tensor:
        """One style w [B, S] (or per point [B, N, S]) for every layer; see :meth:`_styled`."""
        return self._styled(coords, lambda index: w, noise, dtype)

    def _synthesize_layers(self, coords: Tensor, ws: Tensor, dtype: torch.dtype) -> Tensor:
        """Style input i (:meth:`CipsFamily.style_layers`' order) takes ws[:, i]. The official
        CIPS was trained with one style for all layers; the modules take one per layer all the same."""
        return self._styled(coords, lambda index: ws[:, index], False, dtype)

    def _styled(self, coords: Tensor, style: Any, noise: bool, dtype: torch.dtype) -> Tensor:
        """``style(i)``: the style [B, S] or [B, N, S] of style input i, in the order the layers run.
        The layers' products in ``dtype``; always float32: the input features (sines and
        bilinear reads; in low precision computed per distinct row and column, then rounded),
        every folded weight (rounded once to ``dtype``), the colour sum and the returned rgb."""
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise CipsError(f"A CIPS generator synthesizes in float32, bfloat16 or float16, not {dtype}.")
        if dtype == torch.float32:
            x = self.fourier(coords)
            if self.embedding is not None:
                x = torch.cat([x, self.embedding(coords)], dim=-1)
        else:  # per distinct row and column, straight into dtype (cips_deploy.families.separable_inputs)
            parts = [separable_input_features(self.fourier, self.embedding, points, dtype) for points in coords]
            x = parts[0][None] if len(parts) == 1 else torch.stack(parts)  # [B, N, F (+ F)]; B = 1: no copy
        x = self.first(x, style(0), noise)
        if self.to_rgb is not None:  # CIPSres: residual blocks, one ToRGB at the end
            for index, block in enumerate(self.blocks):
                x = block(x, style(1 + 2 * index), noise, style(2 + 2 * index))
            return self.to_rgb(x, style(1 + 2 * len(self.blocks))).float()
        rgb = None  # CIPSskip: every block adds its colours (summed in float32)
        for index, block in enumerate(self.blocks):
            x = block(x, style(1 + 3 * index), noise, style(2 + 3 * index))
            block_rgb = block.to_rgb(x, style(3 + 3 * index))
            rgb = block_rgb.float() if rgb is None else block_rgb + rgb
        return rgb

    def flops_per_point(self) -> int:
        macs = self.fourier.weight.numel()
        for module in self.modules():
            if isinstance(module, (StyledLayer, ToRGB)):
                macs += module.linear.weight.numel()
            elif isinstance(module, ResidualBlock) and module.skip is not None:
                macs += module.skip.weight.numel()
        return 2 * macs
