"""CIPS's input stage for low-precision synthesis, computed per row and per column.

The float32 input stage (Fourier features and the coordinate embedding's bilinear read,
concatenated and rounded to bfloat16) took about 20% of a paper256 bf16 render at 3,072-point
chunks. Both parts are separable in (u, v):

- Fourier features: sin(a(u) + b(v)) with a(u) = A_u u + bias (on a cylinder
  A_cos cos(pi u) + A_sin sin(pi u) + bias) and b(v) = A_v v, so
  sin(a + b) = sin(a) cos(b) + cos(a) sin(b): sines per distinct u and v, two products and
  a sum per point;
- the embedding: interpolate each needed texel row horizontally once per distinct u,
  H[t, u] = G[t, x0(u)] wx0(u) + G[t, x1(u)] wx1(u), then per point vertically:
  H[y0(v), u] wy0(v) + H[y1(v), u] wy1(v).

A chunk of a grid (a few image rows) meets few distinct u and v values, so the per-value
work is small and the per-point work is a handful of elementwise passes. Any other set of
points runs the same operations on per-point gathers of the same per-value tables: every
point gets the same bits whichever way (and in whichever chunk) it is computed, so chunking
still never changes a pixel. Only the low-precision path uses this; float32 synthesis keeps
its own (official) order of operations.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

from cips_deploy.families.layers import CoordinateEmbedding, FourierFeatures, neighbour_texels

# A chunk is composed as a block of its distinct rows x columns while that block is at most
# this many times its number of points (grid chunks: about 1; scattered points: about N).
MAX_BLOCK_RATIO = 2.0


def _fourier_parts(fourier: FourierFeatures, u: Tensor, v: Tensor) -> tuple[Tensor, ...]:
    """u [U], v [V] -> sin a, cos a [U, F] (column part, with the bias) and sin b, cos b [V, F]."""
    weight, bias = fourier.weight, fourier.bias
    if fourier.cylinder:
        angle = math.pi * u
        a = torch.outer(torch.cos(angle), weight[:, 0]) + torch.outer(torch.sin(angle), weight[:, 1]) + bias
        b = torch.outer(v, weight[:, 2])
    else:
        a = torch.outer(u, weight[:, 0]) + bias
        b = torch.outer(v, weight[:, 1])
    return a.sin(), a.cos(), b.sin(), b.cos()


def _texels(embedding: CoordinateEmbedding, u: Tensor, v: Tensor) -> tuple[Tensor, ...]:
    """Texel indices and bilinear weights as CoordinateEmbedding computes them:
    x0, x1 (long), wx0, wx1 [U]; y0, y1 (long), wy0, wy1 [V]."""
    size = embedding.grid.shape[0]
    x = ((u + 1) * size - 1) / 2
    y = ((v + 1) * size - 1) / 2
    y = y.clamp(0, size - 1)
    if not embedding.cylinder:
        x = x.clamp(0, size - 1)
    x0, y0 = torch.floor(x), torch.floor(y)
    x1, y1 = x0 + 1, y0 + 1
    wx0, wx1, wy0, wy1 = x1 - x, x - x0, y1 - y, y - y0
    x0, x1, y1 = neighbour_texels(x0, x1, y1, size, embedding.cylinder)
    return x0.long(), x1.long(), wx0[:, None], wx1[:, None], y0.long(), y1.long(), wy0[:, None], wy1[:, None]


def input_features(
    fourier: FourierFeatures, embedding: CoordinateEmbedding | None, points: Tensor, dtype: torch.dtype
) -> Tensor:
    """points [N, 2] (u, v) -> the input features [N, F (+ F)] in ``dtype``, as described above."""
    u_values, column = torch.unique(points[:, 0], return_inverse=True)  # sorted, [U]; [N]
    v_values, row = torch.unique(points[:, 1], return_inverse=True)  # [V]; [N]
    n_points, n_u, n_v = points.shape[0], u_values.numel(), v_values.numel()
    block = n_u * n_v <= MAX_BLOCK_RATIO * n_points
    if block:  # compose the V x U block by broadcasting: [V, 1, .] against [1, U, .]
        c_index, r_index = slice(None), slice(None)
        widen_c, widen_r = (lambda t: t[None]), (lambda t: t[:, None])
    else:  # compose point by point: gather each point's column and row values
        c_index, r_index = column, row
        widen_c = widen_r = lambda t: t
    features = fourier.weight.shape[0]
    width = features * (2 if embedding is not None else 1)
    out = torch.empty(*((n_v, n_u) if block else (n_points,)), width, dtype=dtype, device=points.device)

    shape = out.shape[:-1] + (features,)
    sin_a, cos_a, sin_b, cos_b = _fourier_parts(fourier, u_values, v_values)
    fourier_out = torch.mul(widen_c(sin_a[c_index]), widen_r(cos_b[r_index]), out=_work(0, shape, sin_a))
    fourier_out += torch.mul(widen_c(cos_a[c_index]), widen_r(sin_b[r_index]), out=_work(1, shape, sin_a))
    out[..., :features] = fourier_out

    if embedding is not None:
        grid = embedding.grid
        x0, x1, wx0, wx1, y0, y1, wy0, wy1 = _texels(embedding, u_values, v_values)
        if block:
            # Texel rows the block reads, each interpolated horizontally once: h [T, U, F].
            texel_rows, position = torch.unique(torch.cat([y0, y1]), return_inverse=True)
            # In place into reused buffers (``_work``): the same operations, no fresh pages.
            texel_shape = (texel_rows.numel(), n_u, features)
            rows = grid.index_select(0, texel_rows)  # [T, size, F]
            h = torch.index_select(rows, 1, x0, out=_work(2, texel_shape, grid)).mul_(wx0)
            h += torch.index_select(rows, 1, x1, out=_work(3, texel_shape, grid)).mul_(wx1)
            h0 = _rows_of(h, position[:n_v], _work(3, shape, grid))  # [V, U, F]
            embedded = torch.mul(h0, wy0[:, :, None], out=_work(0, shape, grid))
            h1 = _rows_of(h, position[n_v:], _work(3, shape, grid))  # the same buffer: h0 is used up
            embedded += torch.mul(h1, wy1[:, :, None], out=_work(1, shape, grid))
        else:
            x0, x1, wx0, wx1 = x0[column], x1[column], wx0[column], wx1[column]
            y0, y1, wy0, wy1 = y0[row], y1[row], wy0[row], wy1[row]
            h0 = grid[y0, x0] * wx0 + grid[y0, x1] * wx1
            h1 = grid[y1, x0] * wx0 + grid[y1, x1] * wx1
            embedded = h0 * wy0
            embedded += h1 * wy1
        out[..., features:] = embedded

    if not block:
        return out
    out = out.reshape(n_v * n_u, width)
    index = row * n_u + column
    if n_v * n_u == n_points and bool((index == torch.arange(n_points, device=index.device)).all()):
        return out  # the chunk is the whole block, row-major (a grid chunk of full rows)
    return out.index_select(0, index)


def _rows_of(h: Tensor, position: Tensor, out: Tensor | None) -> Tensor:
    """h [T, U, F] at rows ``position`` [V]: a view where they are consecutive, else a gather into ``out``."""
    start = int(position[0])
    if bool((position == torch.arange(start, start + position.numel(), device=position.device)).all()):
        return h.narrow(0, start, position.numel())
    return torch.index_select(h, 0, position, out=out)


# Scratch buffers for the block path, kept between calls: a chunk's float32 temporaries
# (paper256, 3,072 points: 6 MB each) allocated afresh every call come as new pages from the
# kernel, and their page faults cost more than the arithmetic (measured: 450 against 100 ms
# per 256 x 256 image). Only without gradients, and only up to WORK_BYTES each; per thread.
WORK_BYTES = 32 << 20
_LOCAL = threading.local()


def _work(slot: int, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
    """A reusable float32 buffer of ``shape`` on ``like``'s device, or None (let the operator allocate)."""
    numel = math.prod(shape)
    if torch.is_grad_enabled() or like.dtype != torch.float32 or numel * 4 > WORK_BYTES:
        return None
    buffers = _LOCAL.__dict__.setdefault("buffers", {})
    key = (slot, like.device, torch.is_inference_mode_enabled())  # inference tensors stay in inference mode
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[key] = torch.empty(numel, device=like.device)
    return buffer[:numel].view(shape)
