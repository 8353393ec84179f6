"""Building blocks of a CIPS generator, written for pixel-major activations.

Every activation here is ``[B, N, C]``: B samples, N sample points, C channels. Because a
style is shared by all points of a sample, a modulated layer folds its style into one
``[in, out]`` weight per sample and runs a plain batched matrix product (the fast path;
official numerics in docs/models.md). A per-point style ``[B, N, S]`` (spatially varying styles) takes the
mathematically identical unfolded path instead.

Equalized learning rate (StyleGAN): parameters are stored at unit scale and multiplied by
``lr_mul / sqrt(fan_in)`` at use, so that Adam sees every layer alike. Operation order
follows the official implementation, so that results agree to float32 rounding.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SQRT2 = math.sqrt(2.0)


def building_on_meta() -> bool:
    """True while a model is built under ``torch.device("meta")`` (shapes only).

    :func:`cips_deploy.contracts.limits.check_model_size` builds every model so before loading it.
    There ``randn``, arithmetic and most factories run Python references that import sympy
    and dynamo, about a second of every process's start (the CLI's and each worker's), so
    initialisers skip their values on meta.
    """
    return torch.get_default_device().type == "meta"


def initial_normal(*shape: int, divisor: float = 1.0) -> Tensor:
    """``torch.randn(*shape) / divisor``, the initial value of a weight (only its shape on meta)."""
    if building_on_meta():
        return torch.empty(*shape)
    return torch.randn(*shape) / divisor


def scaled_leaky_relu(x: Tensor) -> Tensor:
    """Leaky ReLU(0.2) times sqrt(2), which keeps the activations' second moment at 1."""
    return F.leaky_relu(x, negative_slope=0.2) * SQRT2


def pixel_norm(z: Tensor) -> Tensor:
    """z [B, Z] scaled to unit root-mean-square per sample."""
    return z * torch.rsqrt(torch.mean(z**2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate.

    weight [out, in] stored as randn / lr_mul, used as weight * lr_mul / sqrt(in);
    bias [out] used as bias * lr_mul. With ``activate``: scaled leaky ReLU after the bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activate: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(initial_normal(out_features, in_features, divisor=lr_mul))
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in] -> [..., out]"""
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activate:
            out = F.linear(x, self.weight * self.scale)
            return scaled_leaky_relu(out + bias) if bias is not None else scaled_leaky_relu(out)
        return F.linear(x, self.weight * self.scale, bias)


class MappingNetwork(nn.Module):
    """z [B, S] -> w [B, S]: PixelNorm, then ``n_layers`` equalized layers with activation."""

    def __init__(self, style_dim: int, n_layers: int, lr_mul: float = 0.01) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EqualLinear(style_dim, style_dim, lr_mul=lr_mul, activate=True) for _ in range(n_layers)
        )

    def forward(self, z: Tensor) -> Tensor:
        x = pixel_norm(z)
        for layer in self.layers:
            x = layer(x)
        return x


def sine_layer_parameters(hidden: int, in_features: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Weight [hidden, in] and bias [hidden] of a Fourier layer, initialised as the official
    code does (a SIREN-style first layer): U(-sqrt(9/in), sqrt(9/in)) and U(-1/sqrt(in), 1/sqrt(in))."""
    bound = math.sqrt(9.0 / in_features)
    weight = nn.Parameter(torch.empty(hidden, in_features).uniform_(-bound, bound))
    bias = nn.Parameter(torch.empty(hidden).uniform_(-1 / math.sqrt(in_features), 1 / math.sqrt(in_features)))
    return weight, bias


class FourierFeatures(nn.Module):
    """Coordinates [B, N, 2] -> sin(features @ A.T + b) [B, N, hidden].

    On a plane the features are (u, v). On a cylinder u is an angle, so the features are
    (cos pi*u, sin pi*u, v): periodic in u with period 2, hence seamless at u = +-1.
    """

    def __init__(self, hidden: int, cylinder: bool = False) -> None:
        super().__init__()
        self.cylinder = cylinder
        self.weight, self.bias = sine_layer_parameters(hidden, 3 if cylinder else 2)

    def forward(self, coords: Tensor) -> Tensor:
        if self.cylinder:
            angle = math.pi * coords[..., 0:1]
            coords = torch.cat([torch.cos(angle), torch.sin(angle), coords[..., 1:2]], dim=-1)
        return torch.sin(F.linear(coords, self.weight, self.bias))


class CoordinateEmbedding(nn.Module):
    """A learned ``size x size`` grid of ``hidden``-wide vectors, read bilinearly at (u, v).

    grid [size, size, hidden] (row = v, column = u), stored pixel-major so that a read is
    four row gathers. On a plane this equals ``F.grid_sample(..., padding_mode='border',
    align_corners=False)`` of the official code; on a cylinder the columns wrap around.
    Gathers instead of GridSample keep the exported graph to ops every runtime supports.
    """

    def __init__(self, hidden: int, size: int, cylinder: bool = False) -> None:
        super().__init__()
        self.grid = nn.Parameter(initial_normal(size, size, hidden))
        self.cylinder = cylinder

    def forward(self, coords: Tensor) -> Tensor:
        """coords [B, N, 2] -> [B, N, hidden]"""
        size, _, hidden = self.grid.shape
        table = self.grid.reshape(size * size, hidden)
        # Unnormalise as grid_sample does with align_corners=False: -1 and +1 are the outer
        # edges of the outer texels, so texel centres sit at (2i + 1) / size - 1.
        x = ((coords[..., 0] + 1) * size - 1) / 2
        y = ((coords[..., 1] + 1) * size - 1) / 2
        y = y.clamp(0, size - 1)
        if not self.cylinder:
            x = x.clamp(0, size - 1)
        x0, y0 = torch.floor(x), torch.floor(y)
        x1, y1 = x0 + 1, y0 + 1
        # Weights written as grid_sample writes them, so that rounding agrees too.
        w00 = ((x1 - x) * (y1 - y)).unsqueeze(-1)
        w01 = ((x - x0) * (y1 - y)).unsqueeze(-1)
        w10 = ((x1 - x) * (y - y0)).unsqueeze(-1)
        w11 = ((x - x0) * (y - y0)).unsqueeze(-1)
        x0, x1, y1 = neighbour_texels(x0, x1, y1, size, self.cylinder)

        def read(row: Tensor, column: Tensor) -> Tensor:
            index = (row * size + column).long()
            return table[index]

        return read(y0, x0) * w00 + read(y0, x1) * w01 + read(y1, x0) * w10 + read(y1, x1) * w11


# Whether modulated layers scale their inputs by the style instead of folding it into the weight.
_STYLES_ON_INPUTS = contextvars.ContextVar("styles_on_inputs", default=False)


@contextlib.contextmanager
def styles_on_inputs() -> Iterator[None]:
    """Within this block a modulated layer with one style per sample computes
    ``((x * s) @ W.T) * d`` (the per-point path, the style broadcast over the points) instead of
    ``x @ fold(W, s)``: the same numbers to float32 rounding, but the product's weight is the
    constant ``W``. int8 exports trace the generator so (exporters/quantize.py): a quantiser
    sees a product with a constant weight (per-channel int8 scales, quantised once) where the
    folded weight is an activation it cannot quantise ahead of time."""
    token = _STYLES_ON_INPUTS.set(True)
    try:
        yield
    finally:
        _STYLES_ON_INPUTS.reset(token)


def per_point_styles(x: Tensor, w: Tensor) -> Tensor:
    """``w [B, S]`` as ``[B, 1, ..., 1, S]`` (broadcast over ``x [B, ..., in]``'s points) inside
    :func:`styles_on_inputs`; ``w`` unchanged elsewhere or when it already is per point."""
    if w.dim() == 2 and _STYLES_ON_INPUTS.get():
        return w.reshape(w.shape[0], *([1] * (x.dim() - 2)), w.shape[1])
    return w


class ModulatedLinear(nn.Module):
    """StyleGAN2's modulated 1x1 convolution as a fully connected layer.

    weight [out, in]; the affine map w [.., S] -> s [.., in] starts at bias 1. Per sample:
    W' = W / sqrt(in) * s (scaling input channels), then, with ``demodulate``, every output
    row of W' is scaled to unit norm. Input x [B, N, in] -> output [B, N, out].

    Precision: the product runs in ``x``'s dtype. The style and the folded weight are
    always computed in float32 (w's dtype) and rounded once to a bfloat16 or float16 ``x``'s
    dtype just before the product; a float32 ``x`` takes exactly the float32 code path.
    Without gradients the rounded weight is kept for the next call with the same style
    (the chunks of one image): folding every chunk cost paper256 13-20% of its bfloat16
    time at 4,096-2,048-point chunks (BENCHMARKS.md).
    """

    def __init__(self, in_features: int, out_features: int, style_dim: int, *, demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(initial_normal(out_features, in_features))
        self.affine = EqualLinear(style_dim, in_features, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_features)
        self.demodulate = demodulate

    def fold(self, w: Tensor, gain: float = 1.0) -> Tensor:
        """w [B, S] -> this layer's per-sample weight times ``gain``, laid out for x @ W: [B, in, out]."""
        style = self.affine(w)
        weight = self.scale * self.weight * style[:, None, :]
        if self.demodulate:
            factor = torch.rsqrt(weight.pow(2).sum(dim=2, keepdim=True) + 1e-8)
            weight = weight * (factor * gain if gain != 1.0 else factor)
        elif gain != 1.0:
            weight = weight * gain
        return weight.transpose(1, 2)

    def _rounded_fold(self, w: Tensor, gain: float, dtype: torch.dtype) -> Tensor:
        """``fold(w, gain)`` rounded to ``dtype``; reused while w, gain and the parameters stay the same."""
        try:  # parameters made under inference mode have no version counter: then no reuse
            versions = tuple(p._version for p in (self.weight, self.affine.weight, self.affine.bias))
        except RuntimeError:
            versions = None
        key = (dtype, gain, w.shape, w.device, self.weight.data_ptr(), versions)
        cached = getattr(self, "_rounded", None)
        if versions is not None and cached is not None and cached[0] == key and torch.equal(cached[1], w):
            return cached[2]
        weight = self.fold(w, gain).to(dtype)
        if versions is not None and not torch.is_grad_enabled():
            self._rounded = (key, w.clone(), weight)
        return weight

    def fused_leaky_relu(self, x: Tensor, w: Tensor, bias: Tensor, gain: float) -> Tensor:
        """leaky_relu_0.2(gain * (modulated(x) + bias)) in one oneDNN call: x [1, N, in]
        (bfloat16, CPU), w [1, S] -> [1, N, out]; see :func:`fused_product_available`."""
        weight = self._rounded_fold(w, gain, x.dtype)[0].t()  # [out, in], contiguous: fold's own layout
        bias = (bias * gain).to(x.dtype)
        out = torch.ops.mkldnn._linear_pointwise(x[0], weight.contiguous(), bias, "leaky_relu", [0.2], "")
        return out[None]

    def forward(self, x: Tensor, w: Tensor, bias: Tensor | None = None, gain: float = 1.0) -> Tensor:
        """gain * (modulated(x) + bias): x [B, N, in], w [B, S] (one style per sample) or [B, N, S].

        Taking the bias and a gain here lets the per-sample path run as one fused
        ``baddbmm`` (matrix product plus bias) over the folded weight.
        """
        w = per_point_styles(x, w)
        if w.dim() == 2:
            if x.dtype == w.dtype:
                weight = self.fold(w, gain)
            else:  # low precision: fold in float32, round once
                weight = self._rounded_fold(w, gain, x.dtype)
            if bias is None:
                return torch.bmm(x, weight)
            bias = bias * gain if gain != 1.0 else bias
            return torch.baddbmm(bias.to(x.dtype), x, weight)
        # Per-point styles: modulating the weight's columns is modulating the input, and the
        # demodulation factor of output o is rsqrt(sum_i (W[o,i] s_i / sqrt(in))^2).
        style = self.affine(w)
        weight = self.scale * self.weight
        if x.dtype == weight.dtype:
            out = F.linear(x * style, weight)
        else:  # low precision: only the product in x's dtype, the factors in float32
            out = F.linear((x * style).to(x.dtype), weight.to(x.dtype)).float()
        if self.demodulate:
            out = out * torch.rsqrt(F.linear(style.pow(2), weight.pow(2)) + 1e-8)
        if bias is not None:
            out = out + bias
        out = out * gain if gain != 1.0 else out
        return out.to(x.dtype)


# bfloat16 inference on a CPU: the product, its bias and the leaky ReLU as one oneDNN call
# (``torch.ops.mkldnn._linear_pointwise``: bias and activation applied as the product's
# tiles are written) instead of ``baddbmm`` (which first copies the bias into the output)
# and an in-place leaky ReLU: two passes over [N, out] fewer per layer. Those passes are
# memory-bound, and took 20-45% of a paper256 bfloat16 render's time (BENCHMARKS.md). The
# operator is internal to torch (it backs torch.compile's CPU fusions), so it is used only
# where it exists, and the float32 path never takes it. oneDNN builds the bf16 primitive only
# on CPUs with bf16 instructions (AVX512-BF16, AMX): elsewhere (an AVX2 EPYC) it raises
# "could not create a primitive descriptor", so such CPUs take the unfused path.
FUSE_BF16_CPU = (
    hasattr(torch.ops.mkldnn, "_linear_pointwise")
    and torch.backends.mkldnn.is_available()
    and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
)


def fused_product_available(x: Tensor, w: Tensor) -> bool:
    """Whether a styled layer may take the fused oneDNN path: bfloat16 ``x [1, N, in]`` on a
    CPU, one style ``w [1, S]``, no gradients."""
    return (
        FUSE_BF16_CPU
        and x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and x.shape[0] == 1
        and w.dim() == 2
        and not torch.is_grad_enabled()
    )


class StyledLayer(nn.Module):
    """Modulated layer, optional noise, bias, scaled leaky ReLU: [B, N, in] -> [B, N, out].

    ``noise_strength`` is learned; noise is added only when asked (training): synthesis is
    deterministic, so that every chunk and every engine produce the same pixels. The output
    has ``x``'s dtype (see :class:`ModulatedLinear` for bfloat16 and float16).
    """

    def __init__(self, in_features: int, out_features: int, style_dim: int) -> None:
        super().__init__()
        self.linear = ModulatedLinear(in_features, out_features, style_dim, demodulate=True)
        self.noise_strength = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor, w: Tensor, noise: bool = False) -> Tensor:
        if noise:
            out = self.linear(x, w)
            out = out + self.noise_strength.to(out.dtype) * torch.randn_like(out[..., :1])
            return scaled_leaky_relu(out + self.bias.to(out.dtype))
        # Leaky ReLU is positively homogeneous: lrelu(y + b) * sqrt(2) == lrelu(sqrt(2) * (y + b)),
        # so the gain rides on the folded weight and the bias, and the activation is one pass.
        if fused_product_available(x, w):
            return self.linear.fused_leaky_relu(x, w, self.bias, SQRT2)
        out = self.linear(x, w, bias=self.bias, gain=SQRT2)
        if torch.is_grad_enabled():
            return F.leaky_relu(out, negative_slope=0.2)
        return F.leaky_relu_(out, negative_slope=0.2)


class ToRGB(nn.Module):
    """Modulated (not demodulated) projection to colour plus bias: [B, N, in] -> [B, N, 3]."""

    def __init__(self, in_features: int, style_dim: int) -> None:
        super().__init__()
        self.linear = ModulatedLinear(in_features, 3, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return self.linear(x, w, bias=self.bias)


class ResidualBlock(nn.Module):
    """CIPSres block: two styled layers plus a skip, (out + skip) / sqrt(2).

    The skip is a bias-free equalized projection where the width changes, else identity.
    A bfloat16 or float16 ``x`` runs every product, the skip's too, in that dtype.
    """

    def __init__(self, in_features: int, out_features: int, style_dim: int) -> None:
        super().__init__()
        self.layer1 = StyledLayer(in_features, out_features, style_dim)
        self.layer2 = StyledLayer(out_features, out_features, style_dim)
        self.skip = EqualLinear(in_features, out_features, bias=False) if in_features != out_features else None

    def forward(self, x: Tensor, w: Tensor, noise: bool = False, w2: Tensor | None = None) -> Tensor:
        """``w`` styles both layers, or the first only when ``w2`` (per-layer styles) styles the second."""
        out = self.layer2(self.layer1(x, w, noise), w if w2 is None else w2, noise)
        if self.skip is None:
            skip = x
        elif x.dtype == self.skip.weight.dtype:
            skip = self.skip(x)
        else:  # low precision: the equalized weight (bias-free) rounded once to x's dtype
            skip = F.linear(x, (self.skip.weight * self.skip.scale).to(x.dtype))
        return (out + skip) / SQRT2


def neighbour_texels(x0: Tensor, x1: Tensor, y1: Tensor, size: int, cylinder: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The texel columns x0, x1 and the far row y1 of a bilinear read, in range (float, integer-valued)."""
    if cylinder:
        # Wrap in floating point (exact for integers below 2**24): u = -1 and u = +1
        # then read the same texels.
        x0 = x0 - size * torch.floor(x0 / size)
        x1 = x1 - size * torch.floor(x1 / size)
    else:
        # At the right and bottom edges the far neighbour has weight 0; clamp its index.
        x1 = x1.clamp(max=size - 1)
    return x0, x1, y1.clamp(max=size - 1)
