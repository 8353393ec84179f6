"""CREPS's layers (PyTorch): the modulated layer, the input, line and pixel blocks, the mapping.

:mod:`.creps` composes them into :class:`~cips_deploy.families.creps.CrepsGenerator`;
:mod:`.creps_reference` runs the same weights the official way. Shapes are in each docstring.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError
from cips_deploy.families.creps_spec import RANK  # hard-wired in the official SynthesisInput
from cips_deploy.families.layers import FUSE_BF16_CPU, EqualLinear, building_on_meta, initial_normal, per_point_styles

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
        w = per_point_styles(x, w)  # inside layers.styles_on_inputs (int8 exports): the per-point path
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
    """Official MappingNetwork (``embed``, ``fc0 .. fc{n-1}``, lr multiplier 0.01): z [B, Z] (, c [B, C]) -> w [B, S].

    z is normalised to unit second moment; a conditional model (``c_dim > 0``) also embeds the
    label (``embed``: C -> S, linear, lr 1), normalises the embedding the same way and
    concatenates it after z, so ``fc0`` takes Z + S features (official ``embed_features = w_dim``).
    """

    def __init__(self, style_dim: int, n_layers: int, lr_mul: float, z_dim: int | None = None, c_dim: int = 0) -> None:
        super().__init__()
        z_dim = style_dim if z_dim is None else z_dim
        self.c_dim = c_dim
        if c_dim > 0:
            self.embed = EqualLinear(c_dim, style_dim)
        widths = [z_dim + (style_dim if c_dim > 0 else 0)] + [style_dim] * n_layers
        for index in range(n_layers):
            setattr(self, f"fc{index}", EqualLinear(widths[index], style_dim, lr_mul=lr_mul, activate=True))
        self.n_layers = n_layers

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        x = _normalize_2nd_moment(z.float())
        if self.c_dim > 0:
            if c is None:
                raise CipsError(f"This CREPS mapping is class-conditional ({self.c_dim} classes) and needs a label c.")
            x = torch.cat([x, _normalize_2nd_moment(self.embed(c.float()))], dim=-1)
        for index in range(self.n_layers):
            x = getattr(self, f"fc{index}")(x)
        return x


def _normalize_2nd_moment(x: Tensor) -> Tensor:
    """x [..., F] scaled to a mean square of 1 over F (the official normalize_2nd_moment, eps 1e-8;
    over the last axis, which for the official z [B, F] is its dim 1, so that per-point latents
    [B, N, F] are normalised each on its own)."""
    return x * (x.square().mean(dim=-1, keepdim=True) + 1e-8).rsqrt()
