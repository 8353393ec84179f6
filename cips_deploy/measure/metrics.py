"""Image metrics and the scale-consistency protocol of the CREPS paper.

A coordinate-based generator has no native resolution: the same latent can be rendered on
a 256 x 256 grid or on a 512 x 512 one. If the model is consistent across scales, the large
render, box-filtered back down, should be the small render. :func:`scale_consistency`
measures how far it is, as PSNR and SSIM (and LPIPS where its weights are available).

PSNR and SSIM are implemented here in numpy, float64, rather than taken from
scikit-image, which is not a dependency. :func:`ssim` is Wang et al. (2004) exactly as
``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255, channel_axis=-1)`` computes it.

PSNR of identical images is ``float('inf')``; JSON has no infinity, so reports write it
as the string ``"inf"`` (:func:`json_number`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np

from cips_deploy.runtime.backend_use import backend_in_use
from cips_deploy.errors import CipsError
from cips_deploy.runtime.plugin_manager import get_registry
from cips_deploy.runtime.render import MAX_SEED, check_seed, render_detailed

SSIM_WINDOW = 11  # Gaussian taps per side: radius int(3.5 * 1.5 + 0.5) = 5, as scipy.ndimage and skimage
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03

MIN_SIZE = SSIM_WINDOW  # SSIM averages 'valid' 11 x 11 windows only: a smaller image has none
MAX_LARGE_SIDE = 8192
MAX_SAMPLES = 10_000


# --------------------------------------------------------------------------- metrics


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of two images of the same shape (e.g. [H, W, 3]).

    ``10 log10(data_range^2 / MSE)`` with the MSE over every element, in float64;
    ``float('inf')`` when the images are identical.
    """
    a, b = _as_float_pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalized 1-D Gaussian [size] (odd size), the separable factor of SSIM's window."""
    radius = size // 2
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def filter_valid(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Separable correlation of [H, W] float64 with ``weights`` [K] along both axes, 'valid'
    positions only -> [H - K + 1, W - K + 1]: every output is a full window, no padding."""
    k = len(weights)
    height, width = image.shape
    rows = sum(weights[i] * image[i : height - k + 1 + i, :] for i in range(k))
    return sum(weights[i] * rows[:, i : width - k + 1 + i] for i in range(k))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004) of two images [H, W] or [H, W, C], H and W at least 11.

    Per channel in float64: weighted means, variances and covariance under an 11 x 11
    Gaussian window (sigma 1.5), population (not sample) statistics, C1 = (0.01 R)^2,
    C2 = (0.03 R)^2 with R = ``data_range``; the SSIM map over 'valid' windows only is
    averaged, then the channels are averaged. Identical images give exactly 1.0.
    """
    a, b = _as_float_pair(a, b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim != 3:
        raise CipsError(f"SSIM takes images [H, W] or [H, W, C], not an array of shape {list(a.shape)}.")
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise CipsError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, not {a.shape[0]} x {a.shape[1]}.")
    weights = gaussian_window()
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    means = []
    for channel in range(a.shape[2]):
        x, y = a[..., channel], b[..., channel]
        ux, uy = filter_valid(x, weights), filter_valid(y, weights)
        vx = filter_valid(x * x, weights) - ux * ux
        vy = filter_valid(y * y, weights) - uy * uy
        vxy = filter_valid(x * y, weights) - ux * uy
        # Written so that x == y gives numerator == denominator bit for bit: SSIM(x, x) is 1.0.
        numerator = (2 * ux * uy + c1) * (2 * vxy + c2)
        denominator = (ux * ux + uy * uy + c1) * (vx + vy + c2)
        means.append(float(np.mean(numerator / denominator)))
    return float(np.mean(means))


def box_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of every ``factor x factor`` block: [H, W, C] (any dtype) -> float64 [H/f, W/f, C].

    The block sums are exact integers for uint8 input (summed as uint64, never a float64
    copy of the whole large image), and one float64 division per pixel gives the exact mean.
    """
    height, width = image.shape[:2]
    if height % factor or width % factor:
        raise CipsError(f"A {height} x {width} image does not split into {factor} x {factor} blocks.")
    blocks = image.reshape(height // factor, factor, width // factor, factor, *image.shape[2:])
    accumulator = np.uint64 if np.issubdtype(image.dtype, np.unsignedinteger) else np.float64
    return blocks.sum(axis=(1, 3), dtype=accumulator).astype(np.float64) / float(factor * factor)


def json_number(value: float) -> float | str:
    """``value`` for a JSON report: infinities as the strings ``"inf"`` / ``"-inf"``."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _as_float_pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise CipsError(f"Cannot compare images of shapes {list(a.shape)} and {list(b.shape)}.")
    return a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)


# --------------------------------------------------------------------------- LPIPS


def load_lpips() -> tuple[Any, str]:
    """(an LPIPS-AlexNet model, "") where the ``lpips`` package and its weights are already
    on this machine, else (None, why it is skipped). Never downloads anything."""
    try:
        import lpips  # type: ignore[import-not-found]
        import torch
        import torchvision
    except ImportError as error:
        return None, f"the {error.name or 'lpips'} package is not installed"
    except Exception as error:  # a broken installation is a reason to skip, not to fail
        return None, f"lpips failed to import ({type(error).__name__}: {error})"
    # LPIPS ships its linear heads but fetches the AlexNet backbone through torchvision's
    # downloader; only a copy already in torch's hub cache is used.
    try:
        url = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
    except AttributeError:
        return None, "this torchvision does not name the AlexNet weights it would need"
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if not os.path.isfile(cached):
        return None, f"the AlexNet weights are not in the torch hub cache ({cached}) and nothing is downloaded"
    try:
        return lpips.LPIPS(net="alex", pretrained=True, pnet_rand=False, verbose=False).eval(), ""
    except Exception as error:  # any failure to build or load weights means: no LPIPS
        return None, f"its weights did not load ({type(error).__name__}: {error})"


def lpips_distance(model: Any, a: np.ndarray, b: np.ndarray) -> float:
    """LPIPS between two [H, W, 3] images on the 0..255 scale (any real dtype)."""
    import torch

    def tensor(image: np.ndarray) -> Any:  # [H, W, 3] 0..255 -> [1, 3, H, W] in [-1, 1]
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]

    with torch.no_grad():
        return float(model(tensor(a), tensor(b)).reshape(-1)[0])


# --------------------------------------------------------------------------- the protocol


def pixel_centre_viewport(side: int) -> dict[str, float]:
    """``flat`` topology parameters that put an n-pixel side's samples at (2i + 1)/n - 1.

    The flat topology samples linspace(min, max, n); the default [-1, 1] puts the first and
    last samples on the image's edges (the official grid), and then the centroid of a block
    of the large render is *not* a small render's sample: at factor 2 and s = 256 they are a
    quarter of a small pixel apart at the borders. With [-1 + 1/n, 1 - 1/n] every sample is a
    pixel centre of [-1, 1]^2, as in grid_sample with align_corners=False.
    """
    half_pixel = 1.0 / side
    return dict(u_min=-1.0 + half_pixel, u_max=1.0 - half_pixel, v_min=-1.0 + half_pixel, v_max=1.0 - half_pixel)


def check_protocol(size: Any, factor: Any, samples: Any, seed: Any) -> None:
    """The sizes, factor, sample count and seeds are ones the protocol can run, or a CipsError."""

    def whole(value: Any) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not whole(factor) or factor < 2:
        raise CipsError(f"The factor must be a whole number of at least 2, not {factor!r}.")
    if not whole(size) or size < MIN_SIZE:
        raise CipsError(f"The size must be a whole number of at least {MIN_SIZE} pixels (the SSIM window), not {size!r}.")
    if size * factor > MAX_LARGE_SIDE:
        raise CipsError(
            f"The large render would be {size * factor:,} pixels per side (size {size} x factor {factor}); "
            f"the limit is {MAX_LARGE_SIDE:,}."
        )
    if not whole(samples) or not 1 <= samples <= MAX_SAMPLES:
        raise CipsError(f"The number of samples must be a whole number from 1 to {MAX_SAMPLES:,}, not {samples!r}.")
    check_seed(seed, "seed")
    if seed + samples - 1 > MAX_SEED:
        raise CipsError(f"Seeds {seed} to {seed + samples - 1} run past the largest seed, 2**32 - 1.")


def scale_consistency(
    model_or_backend: Any,
    size: int,
    factor: int,
    samples: int,
    seed: int = 0,
    truncation: float = 1.0,
    *,
    backend: str = "torch",
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Render seeds seed .. seed+samples-1 at size^2 and (factor*size)^2, box-filter the large
    render down, and compare: per-sample and mean PSNR (dB, range 255), SSIM and LPIPS.

    model_or_backend: a Generator, a checkpoint path, or a constructed Backend (reused, not
    closed); anything else is given to ``backend`` on ``device`` once, for all renders.
    progress: called as ``progress(samples_done, samples)`` after each sample.

    Returns {"size", "factor", "large_size", "samples", "seed", "truncation", "grid",
    "per_sample": [{"seed", "psnr", "ssim"[, "lpips"]}], "mean": {"psnr", "ssim"[, "lpips"]},
    "lpips": {"status": "computed" | "skipped", ["reason"]}}; PSNR may be ``math.inf``.
    """
    check_protocol(size, factor, samples, seed)
    large = size * factor
    lpips_model, lpips_reason = load_lpips()
    per_sample = []
    with backend_in_use(get_registry(), model_or_backend, backend, device) as (runner, _):
        for index, each_seed in enumerate(range(seed, seed + samples)):
            small = render_detailed(
                runner, "flat", size, size, seed=each_seed, truncation=truncation, **pixel_centre_viewport(size)
            ).image  # uint8 [s, s, 3]
            big = render_detailed(
                runner, "flat", large, large, seed=each_seed, truncation=truncation, **pixel_centre_viewport(large)
            ).image  # uint8 [f*s, f*s, 3]
            # Why a box filter: the large render's pixel centres are (2j + 1)/(f*s) - 1 and the
            # small one's (2i + 1)/s - 1 (pixel_centre_viewport). The centroid of block i,
            # j = f*i .. f*i + f - 1, is -1 + (2*f*i + f)/(f*s) = (2i + 1)/s - 1: exactly the small
            # pixel's centre, on both axes. So the plain block mean is centred where the small
            # render sampled, with no shift, and integrates the large render over exactly the
            # small pixel's footprint; any other kernel (bilinear, Lanczos) would blur across
            # neighbouring small pixels or need a half-pixel correction.
            down = box_downsample(big, factor)  # float64 [s, s, 3]
            del big
            entry: dict[str, Any] = {"seed": each_seed, "psnr": psnr(small, down), "ssim": ssim(small, down)}
            if lpips_model is not None:
                entry["lpips"] = lpips_distance(lpips_model, small, down)
            per_sample.append(entry)
            if progress is not None:
                progress(index + 1, samples)
    mean = {
        "psnr": float(np.mean([entry["psnr"] for entry in per_sample])),  # inf if any sample is identical
        "ssim": float(np.mean([entry["ssim"] for entry in per_sample])),
    }
    if lpips_model is not None:
        mean["lpips"] = float(np.mean([entry["lpips"] for entry in per_sample]))
    return {
        "size": size,
        "factor": factor,
        "large_size": large,
        "samples": samples,
        "seed": seed,
        "truncation": truncation,
        "grid": "flat topology, samples at pixel centres (2i + 1)/n - 1; large render box-filtered (block means)",
        "per_sample": per_sample,
        "mean": mean,
        "lpips": {"status": "computed", "net": "alex"} if lpips_model is not None else {"status": "skipped", "reason": lpips_reason},
    }
