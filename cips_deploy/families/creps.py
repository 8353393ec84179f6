"""CREPS (Column-Row Entangled Pixel Synthesis, Nguyen, Le and Tran, CVPR 2023) as published.

The architecture of the official code (VinAIResearch/CREPS, ``training/networks_creps.py``),
written independently for pixel-major activations; ``docs/creps.md`` states the formulas.
The module tree mirrors the official one, so state-dict keys map one to one onto the
official keys (dead parameters ``synthesis.b4.tores.*`` and ``synthesis.decoder_8.*``
included) with one renaming: the official ``mapping.w_avg`` is our top-level ``w_avg``
(every family keeps its centre of truncation there).

Notation: R = size, blocks q = 4, 8, ..., R with widths C_q (``config.widths``), r = rank 8
slots per axis, bc = ``biline_channels``, num_ws = 2 log2(R) - 1 per-layer styles.

A pixel at (u, v) depends on two *lines*: the row line of its v and the column line of its u.
Official coordinates t in [0, 1] are ours through ``u = 2 t_col - 1`` (columns) and
``v = 2 t_row - 1`` (rows). Per axis a and coordinate t, the line part runs the input layer
and the modulated line blocks on r "slot vectors" of C channels and yields, per block q >= 8,
the scaled cumulative bi-line ``L_q(t) [r, bc]``; the pixel part composes
``F_q = sum_k L_q(t_row)[k] * L_q(t_col)[k]`` ([bc]) and runs the decoders and the two
per-pixel modulated blocks. :meth:`CrepsGenerator.line_features` and
:meth:`CrepsGenerator.compose_points` / :meth:`~CrepsGenerator.compose_block` are those two
parts: the per-point path evaluates both lines at every point, the torch backend's line
cache evaluates each distinct row and column once, and a line engine can export them.

Mixed precision (``dtype=torch.float16``): as the official default (without ``force_fp32``),
block0/block1 and the line blocks at q >= max(2^(log2 R + 1 - num_fp16_res), 8) run their
products, bias, activation and clamp in float16, with the official pre-normalisation of
weight and style; everything else stays float32. ``dtype=torch.bfloat16`` (our option, for
CPUs with bfloat16 products): every line block, decoder and per-pixel block runs its products
in bfloat16 (float32 accumulation); the input layer's phases and sines, the bi-lines and the
colours stay float32.

Cylinder (our extension, not in the paper): u is an angle; the coordinate is wrapped into
[-1, 1) and the input frequencies are integers, so every column line is exactly periodic in u.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError
from cips_deploy.families.generator import Generator
from cips_deploy.families.layers import FUSE_BF16_CPU, EqualLinear, building_on_meta, initial_normal

RANK = 8  # slots per axis: hard-wired in the official SynthesisInput
BANDWIDTH = 10.0  # std of the random input frequencies at initialisation
PIXEL_CLAMP = 256.0  # block0 / block1 clamp, hard-wired officially
AXES = ("row", "column")


def to_unit(coordinate: Tensor) -> Tensor:
    """Our u or v in [-1, 1] -> the official t in [0, 1] (float32: (x + 1) * 0.5 is exact)."""
    return (coordinate + 1) * 0.5


# --------------------------------------------------------------------------- layers


def _bias_act(x: Tensor, bias: Tensor, activate: bool, clamp: float | None) -> Tensor:
    """Official bias_act: x + b, then lrelu(0.2) * sqrt(2) (if ``activate``), then clamp.

    ``x`` must be a fresh product: without gradients the steps run in place (the same
    operations, so the same bits, without three more per-pixel buffers).
    """
    if torch.is_grad_enabled():
        x = x + bias.to(x.dtype)
        if activate:
            x = F.leaky_relu(x, 0.2) * math.sqrt(2.0)
        return x.clamp(-clamp, clamp) if clamp is not None else x
    x = x.add_(bias.to(x.dtype))
    if activate:
        x = F.leaky_relu_(x, 0.2).mul_(math.sqrt(2.0))
    return x.clamp_(-clamp, clamp) if clamp is not None else x


def _decode(decoder: nn.Sequential, x: Tensor) -> Tensor:
    """A decoder's fully connected lrelu layers (official FullyConnectedLayer, lr multiplier 1)."""
    for layer in decoder:
        if _fused(x):
            x = _fused_lrelu(x, *_fused_parameters(layer.weight * layer.scale, layer.bias, x.dtype))
        else:
            x = _bias_act(F.linear(x, (layer.weight * layer.scale).to(x.dtype)), layer.bias, True, None)
    return x


def _fused(x: Tensor) -> bool:
    """bfloat16 inference on a CPU, one sample: product, bias and lrelu in one oneDNN call
    (as CIPS's :func:`~cips_deploy.families.layers.fused_product_available`). In bfloat16 the bias and
    activation passes over ``[N, out]`` cost more than the products of CREPS's narrow
    decoders; float32 and float16 never take this path."""
    return (
        FUSE_BF16_CPU and x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.shape[0] == 1
        and not torch.is_grad_enabled()
    )


def _fused_parameters(weight: Tensor, bias: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """weight [out, in] and bias [out] (float32) -> sqrt 2 times each, rounded to ``dtype``
    (the gain rides on them: lrelu is positively homogeneous)."""
    gain = math.sqrt(2.0)
    return (weight * gain).to(dtype).contiguous(), (bias * gain).to(dtype)


def _fused_lrelu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """lrelu_0.2(x @ weight.T + bias) as one oneDNN call: x [1, ..., in] bfloat16, weight
    [out, in] and bias [out] from :func:`_fused_parameters` -> [1, ..., out]."""
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias, "leaky_relu", [0.2], "")
    return out.reshape(*x.shape[:-1], out.shape[-1])


class ModulatedFC(nn.Module):
    """Official SynthesisLayer (``demodulate``) or ToResLayer (not): x [B, ..., in] -> [B, ..., out].

    Parameters: ``weight [out, in]`` (randn), ``bias [out]``, ``affine`` (w -> style [in], bias 1).
    Per-sample styles fold into W[b, o, i] = weight[o, i] s[b, i] (then demodulated);
    per-point styles (s broadcastable to x) modulate the input instead, the same in exact
    arithmetic. A float16 ``x`` runs the product, bias, activation and clamp in float16 after
    the official pre-normalisation (weight rows by their max / sqrt(in), style by its max).
    """

    def __init__(self, in_features: int, out_features: int, style_dim: int, *, demodulate: bool, clamp: float | None) -> None:
        super().__init__()
        self.affine = EqualLinear(style_dim, in_features, bias_init=1.0)
        self.weight = nn.Parameter(initial_normal(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.demodulate = demodulate
        self.clamp = clamp

    def forward(self, x: Tensor, w: Tensor, folds: dict | None = None) -> Tensor:
        """x [B, P, in] with w [B, S], or x [B, ..., in] with w [B, ..., S] broadcastable to x.

        ``folds``: a dict that lives as long as one set of per-sample styles (the line cache's
        style, one per-point call): the folded weight [B, out, in] is computed once per layer
        and kept there, instead of at every call (at paper256 a 1024 x 1024 fold costs as much
        as the products of 8 line values).
        """
        if self.demodulate and w.dim() == 2 and _fused(x):  # bfloat16 on a CPU, one sample
            key = (id(self), "fused")
            parameters = folds.get(key) if folds is not None else None
            if parameters is None:
                parameters = _fused_parameters(self.fold(w, x.dtype)[0], self.bias, x.dtype)  # [out, in], [out]
                if folds is not None:
                    folds[key] = parameters
            y = _fused_lrelu(x, *parameters)
            return y.clamp_(-self.clamp, self.clamp) if self.clamp is not None else y
        if w.dim() == 2:  # one style per sample: fold it into the weight
            key = (id(self), x.dtype)
            folded = folds.get(key) if folds is not None else None
            if folded is None:
                folded = self.fold(w, x.dtype).transpose(1, 2).to(x.dtype)  # [B, in, out] view
                if folds is not None:
                    folds[key] = folded
            shape = x.shape
            y = torch.bmm(x.reshape(shape[0], -1, shape[-1]), folded)
            y = y.reshape(*shape[:-1], y.shape[-1])
        else:  # per-point styles: modulate the input, demodulate the output
            weight, styles = self._prepared(w, x.dtype)
            y = F.linear((x * styles).to(x.dtype), weight.to(x.dtype))
            if self.demodulate:
                y = y * (F.linear(styles.square(), weight.square()) + 1e-8).rsqrt().to(x.dtype)
        return _bias_act(y, self.bias, self.demodulate, self.clamp)

    def _prepared(self, w: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """weight [out, in] and styles [..., in] as the product in ``dtype`` takes them."""
        weight, styles = self.weight, self.affine(w)
        if not self.demodulate:
            styles = styles * (1 / np.sqrt(weight.shape[1]))
        elif dtype == torch.float16:
            weight = weight * (1 / np.sqrt(weight.shape[1]) / weight.norm(float("inf"), dim=1, keepdim=True))
            styles = styles / styles.norm(float("inf"), dim=-1, keepdim=True)
        return weight, styles

    def fold(self, w: Tensor, dtype: torch.dtype) -> Tensor:
        """Per-sample styles w [B, S] -> the folded (and demodulated) weight [B, out, in] (float32)."""
        weight, styles = self._prepared(w, dtype)
        folded = weight.unsqueeze(0) * styles.unsqueeze(1)  # [B, out, in]
        if self.demodulate:
            folded = folded * (folded.square().sum(dim=2) + 1e-8).rsqrt().unsqueeze(2)
        return folded


class SynthesisInput(nn.Module):
    """Official SynthesisInput: one coordinate per axis -> r slot vectors of C channels.

    Buffers ``freqs [1, C/2 * r]`` (N(0, 1) x bandwidth; integers on a cylinder) and
    ``coords [1, R, 2, 1]`` (the official training grid, kept for a one-to-one state dict;
    not used: coordinates are inputs here); ``weight [1, C, 1, 2r]``; ``affine`` w -> [C * 2r].
    """

    def __init__(self, channels: int, style_dim: int, size: int, cylinder: bool) -> None:
        super().__init__()
        self.channels = channels
        freqs = initial_normal(1, channels // 2 * RANK)
        if not building_on_meta():  # see building_on_meta
            freqs = torch.round(freqs * BANDWIDTH) if cylinder else freqs * BANDWIDTH
        self.register_buffer("freqs", freqs)
        grid = torch.empty(size) if building_on_meta() else torch.linspace(0, 1, size)
        self.register_buffer("coords", grid.reshape(1, -1, 1, 1).expand(1, size, 2, 1).contiguous())
        self.weight = nn.Parameter(initial_normal(1, channels, 1, 2 * RANK))
        self.affine = EqualLinear(style_dim, channels * 2 * RANK, bias_init=1.0)

    def forward(self, axis: int, t: Tensor, w: Tensor, folds: dict | None = None) -> Tensor:
        """t [B, K] official coordinates of ``axis`` (0 rows, 1 columns), w [B, S] or [B, K, S] -> [B, K, r, C].

        ``folds`` (per-sample styles only) keeps the modulated weight [B, 1, r, C] per axis:
        the affine that makes it reads a [C 2r, S] matrix (16 MB at paper256) per call.
        """
        half = self.channels // 2
        phase = (t[..., None] * self.freqs[0]) * (np.pi * 2)  # [B, K, C/2 * r], official order
        phase = phase.reshape(*t.shape, half, RANK).transpose(-1, -2)  # [B, K, r, C/2]
        x = torch.sin(torch.cat([phase, phase + np.pi / 2], dim=-1))  # [B, K, r, C]
        key = (id(self), axis)
        weight = folds.get(key) if folds is not None and w.dim() == 2 else None
        if weight is None:
            slots = slice(axis * RANK, (axis + 1) * RANK)
            styles = self.affine(w).reshape(*w.shape[:-1], self.channels, 2 * RANK)[..., slots]  # [B, (K,) C, r]
            weight = self.weight[0, :, 0, slots] * styles  # [B, (K,) C, r]
            if w.dim() == 2:
                weight = weight[:, None]
                if folds is not None:
                    folds[key] = weight
        return x * weight.transpose(-1, -2) / np.sqrt(self.channels)


class LineBlock(nn.Module):
    """One official SynthesisBlock at q: ``fc0`` (C_{q/2} -> C_q; b4: ``input`` instead), ``fc1``, ``tores`` (-> bc)."""

    def __init__(self, in_channels: int, channels: int, config: GeneratorConfig, first: bool) -> None:
        super().__init__()
        S, clamp = config.style_dim, config.fc_clamp
        if first:
            self.input = SynthesisInput(channels, S, config.size, config.coordinate_space == "cylinder")
        else:
            self.fc0 = ModulatedFC(in_channels, channels, S, demodulate=True, clamp=clamp)
        self.fc1 = ModulatedFC(channels, channels, S, demodulate=True, clamp=clamp)
        self.tores = ModulatedFC(channels, config.biline_channels, S, demodulate=False, clamp=clamp)


class PixelBlock(nn.Module):
    """block0 / block1: per-pixel modulated ``fc0``, ``fc1`` and ``tores`` (-> rgb), clamp 256."""

    def __init__(self, in_channels: int, channels: int, style_dim: int) -> None:
        super().__init__()
        self.fc0 = ModulatedFC(in_channels, channels, style_dim, demodulate=True, clamp=PIXEL_CLAMP)
        self.fc1 = ModulatedFC(channels, channels, style_dim, demodulate=True, clamp=PIXEL_CLAMP)
        self.tores = ModulatedFC(channels, 3, style_dim, demodulate=False, clamp=PIXEL_CLAMP)


def _decoder(bc: int) -> nn.Sequential:
    """bc -> 2bc -> 4bc -> 2bc -> bc, fully connected with lrelu * sqrt(2)."""
    widths = [bc, 2 * bc, 4 * bc, 2 * bc, bc]
    return nn.Sequential(*(EqualLinear(a, b, activate=True) for a, b in zip(widths, widths[1:])))


class CrepsSynthesis(nn.Module):
    """The official SynthesisNetwork's modules: ``b4 .. bR``, ``decoder_8 .. decoder_R``,
    ``decoder_last``, ``decoder_img``, ``block0``, ``block1``."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.resolutions = [4 * 2**i for i in range(len(config.widths))]
        previous = None
        for q, channels in zip(self.resolutions, config.widths):
            setattr(self, f"b{q}", LineBlock(previous or channels, channels, config, first=previous is None))
            previous = channels
        bc = config.biline_channels
        for q in self.resolutions[1:]:
            setattr(self, f"decoder_{q}", _decoder(bc))
        self.decoder_last = _decoder(bc)
        self.decoder_img = EqualLinear(bc, 3)
        self.block0 = PixelBlock(bc, 4 * bc, config.style_dim)
        self.block1 = PixelBlock(4 * bc, 2 * bc, config.style_dim)


class CrepsMapping(nn.Module):
    """Official MappingNetwork (``fc0 .. fc{n-1}``, lr multiplier 0.01): z [B, S] -> w [B, S]."""

    def __init__(self, style_dim: int, n_layers: int, lr_mul: float) -> None:
        super().__init__()
        for index in range(n_layers):
            setattr(self, f"fc{index}", EqualLinear(style_dim, style_dim, lr_mul=lr_mul, activate=True))
        self.n_layers = n_layers

    def forward(self, z: Tensor) -> Tensor:
        x = z.float()
        x = x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for index in range(self.n_layers):
            x = getattr(self, f"fc{index}")(x)
        return x


# ------------------------------------------------------------------------ generator


class CrepsGenerator(Generator):
    """The official CREPS generator behind the common contract: coords [B, N, 2], w -> rgb [B, N, 3].

    Styles: ``w [B, S]`` (every layer), ``w [B, N, S]`` (one per point) or, through
    :meth:`synthesize_ws`, per-layer styles ``ws [B, num_ws, S]`` (style mixing).
    """

    @classmethod
    def check_config(cls, c: GeneratorConfig) -> None:
        """The official architecture's constraints: power-of-two size, one width per block, rank 8."""
        if c.size < 8 or c.size & (c.size - 1):
            raise CipsError(f"A CREPS generator's size must be a power of two of at least 8, not {c.size}.")
        blocks = int(math.log2(c.size)) - 1
        if len(c.widths) != blocks:
            raise CipsError(f"A CREPS generator of size {c.size} has {blocks} block widths (4 .. {c.size}), not {len(c.widths)}.")
        if c.widths[0] % 2:
            raise CipsError(f"A CREPS input layer needs an even width, not {c.widths[0]}.")
        if c.line_rank != 8:
            raise CipsError(f"The official CREPS rank is 8 slots per axis, not {c.line_rank}.")
        if c.biline_channels < 4 or c.num_fp16_res < 0 or c.n_mlp < 1:
            raise CipsError("A CREPS generator needs biline_channels >= 4, num_fp16_res >= 0 and at least one mapping layer.")

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__(config)
        self.mapping = CrepsMapping(config.style_dim, config.n_mlp, config.lr_mlp)
        self.synthesis = CrepsSynthesis(config)
        self.num_ws = 2 * len(config.widths) + 1
        log2 = int(math.log2(config.size))
        first_fp16 = max(2 ** (log2 + 1 - config.num_fp16_res), 8)
        self.fp16_blocks = {q for q in self.synthesis.resolutions if q >= first_fp16}

    # ------------------------------------------------------------------ synthesis

    def _synthesize(self, coords: Tensor, w: Tensor, noise: bool, dtype: torch.dtype = torch.float32) -> Tensor:
        """The per-point path: both lines at every point, then the pixel part."""
        return self._points(coords, self.layer_styles(w), dtype)

    def synthesize_ws(self, coords: Tensor, ws: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
        """coords [B, N, 2] and per-layer styles ws [B, num_ws, S] (official ``ws``) -> rgb [B, N, 3]."""
        if ws.dim() != 3 or ws.shape[1] != self.num_ws or ws.shape[0] != coords.shape[0]:
            raise CipsError(f"Per-layer styles must have shape [B, {self.num_ws}, S] matching the coordinates, not {list(ws.shape)}.")
        self._check_width(ws, "ws")
        if coords.dim() != 3 or coords.shape[-1] != 2:
            raise CipsError(f"Coordinates must have shape [B, N, 2], not {list(coords.shape)}.")
        return self._points(coords, ws, self._dtype(dtype))

    def _points(self, coords: Tensor, ws: Tensor, dtype: torch.dtype | None) -> Tensor:
        dtype = self._dtype(dtype)
        folds: dict = {}  # both axes and the pixel part fold each layer's weight once
        rows = self.line_features("row", coords[..., 1], ws, dtype=dtype, folds=folds)
        columns = self.line_features("column", coords[..., 0], ws, dtype=dtype, folds=folds)
        return self.compose_points(rows, columns, ws, dtype=dtype, folds=folds)

    def _dtype(self, dtype: torch.dtype | None) -> torch.dtype:
        if dtype is None:
            return torch.float32
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise CipsError(f"CREPS synthesizes in float32, bfloat16 or the official float16 mixed precision, not {dtype}.")
        return dtype

    def layer_styles(self, w: Tensor) -> Tensor:
        """w [B, S] -> ws [B, num_ws, S]; w [B, N, S] (per point) -> [B, N, num_ws, S] (views)."""
        return w.unsqueeze(-2).expand(*w.shape[:-1], self.num_ws, w.shape[-1])

    def line_features(
        self, axis: str, coordinate: Tensor, ws: Tensor, *, dtype: torch.dtype = torch.float32, folds: dict | None = None
    ) -> list[Tensor]:
        """Lines of one axis (``"row"``: v values, ``"column"``: u values).

        coordinate [B, K] in our [-1, 1] convention; ws [B, num_ws, S] (per sample) or
        [B, K, num_ws, S] (per point) -> ``[L_q [B, K, r, bc] for q = 8 .. R]``, the scaled
        cumulative bi-lines (float32). ``folds``: an empty dict per style that calls for the
        same ``ws`` share (each layer's folded weight is computed once; the same bits).
        """
        if self.config.coordinate_space == "cylinder" and axis == "column":
            coordinate = torch.remainder(coordinate + 1, 2) - 1  # u is an angle: wrap it
        t = to_unit(coordinate)
        s = self.synthesis
        per_point = ws.dim() == 4
        style = (lambda i: ws[:, :, i]) if per_point else (lambda i: ws[:, i])

        def slot_style(i: int) -> Tensor:  # a point's style serves its r slots
            return style(i)[:, :, None] if per_point else style(i)

        x = s.b4.input(AXES.index(axis), t, style(0), folds)  # [B, K, r, C]
        lines, res = [], None
        for index, q in enumerate(s.resolutions):
            block = getattr(s, f"b{q}")
            block_dtype = _block_dtype(dtype, q in self.fp16_blocks)
            x = x.to(block_dtype)
            if q == 4:
                x = block.fc1(x, slot_style(1), folds)
                continue
            x = block.fc0(x, slot_style(2 * index - 1), folds)
            x = block.fc1(x, slot_style(2 * index), folds)
            y = block.tores(x, slot_style(2 * index + 1), folds).float()  # [B, K, r, bc]
            res = y if res is None else res.add(y)
            lines.append(res * np.sqrt(0.5))
        return lines

    def compose_points(
        self, rows: list[Tensor], columns: list[Tensor], ws: Tensor, *, dtype: torch.dtype = torch.float32, folds: dict | None = None
    ) -> Tensor:
        """Per-point lines (each [B, N, r, bc]) -> rgb [B, N, 3]."""
        return self.pixels([_bi_line(row, column) for row, column in zip(rows, columns)], ws, dtype=dtype, folds=folds)

    def compose_block(
        self, rows: list[Tensor], columns: list[Tensor], ws: Tensor, *, dtype: torch.dtype = torch.float32, folds: dict | None = None
    ) -> Tensor:
        """Lines of h rows and w columns (each [B, h, r, bc], [B, w, r, bc]) -> rgb [B, h * w, 3], row-major.

        Every pixel takes exactly the operations of :meth:`compose_points`, so the two agree bitwise.
        """
        composed = [_bi_line(row[:, :, None], column[:, None, :]).flatten(1, 2) for row, column in zip(rows, columns)]
        return self.pixels(composed, ws, dtype=dtype, folds=folds)

    def pixels(
        self, composed: list[Tensor], ws: Tensor, *, dtype: torch.dtype = torch.float32, folds: dict | None = None
    ) -> Tensor:
        """The pixel part: F_q [B, N, bc] for q = 8 .. R -> rgb [B, N, 3] (float32)."""
        s = self.synthesis
        # The decoders (90% of the per-pixel products at paper256) run in bfloat16 when asked;
        # float16 is the official mixed precision, whose decoders stay float32.
        decoder_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        feature = composed[0].to(decoder_dtype)
        for q, new in zip(s.resolutions[2:], composed[1:]):
            feature = _decode(getattr(s, f"decoder_{q}"), feature) + new.to(decoder_dtype)
        feature = _decode(s.decoder_last, feature)
        img = s.decoder_img(feature.float())
        w_last = ws[:, :, -1] if ws.dim() == 4 else ws[:, -1]
        x = feature.to(dtype).contiguous()
        for block in (s.block0, s.block1):
            x = block.fc1(block.fc0(x, w_last, folds), w_last, folds)
            img = img.add(block.tores(x, w_last, folds).float())
        return img

    # --------------------------------------------------------------- the interface

    line_factored = True

    line_slots = RANK  # rows of the line products per coordinate value

    def compose_floats_per_point(self) -> int:
        """Peak floats per point of composing from cached lines (counted from the code, not measured).

        Point by point, a point gathers its row's and column's lines, 2 (K - 1) r bc; a block
        gathers h + w lines for h w points (negligible). Then the composed levels (K - 1) bc,
        a decoder's input and output (at most 4 bc + 2 bc), block0's 4 bc input and output
        and the colours.
        """
        levels, bc = len(self.config.widths) - 1, self.config.biline_channels
        return 2 * levels * RANK * bc + levels * bc + 8 * bc + 9

    def folded_bytes_per_sample(self) -> int:
        """Bytes a ``folds`` dict holds per sample at most: every modulated layer's folded
        float32 weight (paper256: 40.6 MiB, a third of the model) and the input layer's modulation."""
        layers = sum(module.weight.numel() for module in self.modules() if isinstance(module, ModulatedFC))
        return 4 * (layers + 2 * RANK * self.config.widths[0])

    def line_floats_per_value(self) -> int:
        """Floats a cached line value holds per sample: (blocks - 1) x r x bc."""
        return (len(self.config.widths) - 1) * RANK * self.config.biline_channels

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float32, torch.bfloat16, torch.float16)

    def line_macs(self) -> int:
        """Multiply-adds of one line position (r slots through every line block; the official count)."""
        widths, s = self.config.widths, self.synthesis
        macs = widths[0] // 2 * RANK  # the phase products t x freqs (the official 4,096 at paper256)
        per_slot = widths[0] ** 2  # b4.fc1
        for index in range(1, len(s.resolutions)):
            per_slot += widths[index - 1] * widths[index] + widths[index] ** 2 + widths[index] * self.config.biline_channels
        return macs + RANK * per_slot

    def pixel_macs(self) -> int:
        """Multiply-adds per pixel after the lines: bi-line products, decoders, decoder_img, block0/1."""
        bc, blocks = self.config.biline_channels, len(self.config.widths) - 1
        decoder = 2 * bc * bc + 8 * bc * bc + 8 * bc * bc + 2 * bc * bc
        pixel_blocks = bc * 4 * bc + 16 * bc * bc + 4 * bc * 3 + 4 * bc * 2 * bc + 4 * bc * bc + 2 * bc * 3
        return blocks * bc * RANK + blocks * decoder + bc * 3 + pixel_blocks

    def flops_per_point(self) -> int:
        """FLOPs of the per-point path (both lines at every point: what a per-point engine runs)."""
        return 2 * (2 * self.line_macs() + self.pixel_macs())

    def grid_flops_per_point(self, height: int, width: int) -> float:
        """FLOPs per pixel of a height x width grid with lines shared: (H + W) lines, H W pixels."""
        return 2 * (self.line_macs() * (height + width) / (height * width) + self.pixel_macs())

    def reference_synthesize(self, coords: Tensor, w: Tensor) -> Tensor:
        """The official way of computing (:mod:`cips_deploy.families.creps_reference`): coords [B, 2, N, N] -> rgb [B, 3, N, N]."""
        from cips_deploy.families.creps_reference import creps_reference

        return creps_reference(self, coords, w)

    @classmethod
    def seed_latent(cls, seed: int, style_dim: int) -> Tensor:
        """z [1, S] as the official ``gen_images.py --seeds N``: ``np.random.RandomState(N).randn(1, S)``."""
        if not 0 <= seed < 2**32:
            raise CipsError(f"A CREPS seed is a numpy RandomState seed, from 0 to 2**32 - 1, not {seed}.")
        return torch.from_numpy(np.random.RandomState(seed).randn(1, style_dim)).float()

    @classmethod
    def activation_floats_per_point(cls, config: GeneratorConfig, per_point_style: bool = False) -> int:
        """Peak floats per point of the per-point path (counted from the code, not measured).

        The input layer holds about 4 r C (phases, both halves, sines, modulated); a line
        layer in -> out holds r (in + 3 out) (input, product, biased and activated copies);
        both axes' finished lines 2 (K - 1) r bc; the pixel part at most 16 bc. Per-point
        styles add the input layer's per-point modulation 2 r C, a layer's style and
        modulated input r in + in, and 2 S.
        """
        widths, bc = config.widths, config.biline_channels
        layers = [(widths[0], widths[0])] + [(a, b) for a, b in zip(widths, widths[1:])] + [(b, b) for b in widths[1:]]
        worst = max(RANK * (i + 3 * o) + (RANK * i + i if per_point_style else 0) for i, o in layers)
        first = 4 * RANK * widths[0] + (2 * RANK * widths[0] if per_point_style else 0)
        lines = 2 * (len(widths) - 1) * RANK * bc
        return max(worst, first) + lines + 16 * bc + (2 * config.style_dim if per_point_style else 0) + 9

    def info_facts(self) -> dict:
        c = self.config
        return {
            "biline_channels": c.biline_channels,
            "line_rank": RANK,
            "num_ws": self.num_ws,
            "fp16_line_blocks": sorted(self.fp16_blocks),
            "line_flops_per_position": 2 * self.line_macs(),
            "pixel_flops_per_pixel": 2 * self.pixel_macs(),
            "grid_flops_per_pixel_at_training_size": round(self.grid_flops_per_point(c.size, c.size)),
        }


def _block_dtype(dtype: torch.dtype, official_fp16_block: bool) -> torch.dtype:
    """The dtype of a line block's products: float16 in the official mixed precision's
    blocks, bfloat16 in every block when asked (our option: bfloat16 keeps float32's range,
    so no block needs float32 to avoid overflow), float32 otherwise."""
    if dtype == torch.bfloat16:
        return dtype
    return torch.float16 if dtype == torch.float16 and official_fp16_block else torch.float32


def _bi_line(row: Tensor, column: Tensor) -> Tensor:
    """sum_k row[..., k, :] * column[..., k, :] in a fixed order: [..., r, bc] x [..., r, bc] -> [..., bc].

    Elementwise products added one slot at a time (no reduction kernel whose order could
    depend on the shape), so a pixel composed alone or in a block gets the same bits.
    """
    total = row[..., 0, :] * column[..., 0, :]
    for k in range(1, RANK):
        total = total.add_(row[..., k, :] * column[..., k, :]) if not torch.is_grad_enabled() else total + row[..., k, :] * column[..., k, :]
    return total
