"""Projection: find the style w whose render reproduces a target image (StyleGAN's ``projector.py``
for coordinate generators).

Start from the model's average style ``w_avg`` and optimise one w ``[1, S]`` or, where the
family takes one style per layer (``--per-layer``), one per layer ``ws [1, L, S]`` (W+), with
Adam, so that the model's render of a square view matches the target. StyleGAN's recipe:
the learning rate ramps up over the first 5% of the steps and down (cosine) over the last
25%; Gaussian noise of ``noise * w_std`` (w_std: the spread of mapped styles) is added to
the style in each step's forward pass, decaying quadratically to zero at 75% of the steps,
which helps the start escape the average. ``seed`` seeds that noise (and the style samples
behind w_std), so a projection is reproducible on one device.

**What is rendered.** A plane model: its training framing, the ``[-1, 1]^2`` grid. A
cylinder model: one flat view of its cylinder, as its training crops were
(``train/views.py``): ``u = centre + linspace(-1, 1) * fov / 360`` (a ``fov``-degree window;
the demo models trained on 90 degrees, u in [-0.25, 0.25] at centre 0, the middle quarter of
``render -t cylinder``'s panorama), ``v`` in [-1, 1].

**The loss** (images ``[1, 3, H, W]``, colours in [-1, 1]):
``pixel_weight * pixel + ssim_weight * (1 - MS-SSIM)``. ``pixel`` is the mean squared error
(``mse``) or mean absolute error (``l1``) of the colours; MS-SSIM (Wang, Simoncelli and Bovik
2003) is computed on colours mapped to [0, 1] by :func:`ms_ssim`. There is no perceptual
term: StyleGAN's projector uses VGG16 (LPIPS) features, which are a download; no weights that
ship with this package or its dependencies give perceptual features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cips_deploy.contracts.limits import check_memory
from cips_deploy.errors import CipsError
from cips_deploy.families import dtypes as devices
from cips_deploy.families.generator import Generator
from cips_deploy.runtime.coords import grid_coords
from cips_deploy.runtime.images import raw_psnr, rgb_to_uint8

PIXEL_LOSSES = ("mse", "l1")
# The standard MS-SSIM weights of the five scales (Wang et al. 2003), finest first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
MIN_SSIM_SIDE = 8  # the coarsest scale keeps at least this many pixels a side
W_SAMPLES = 10_000  # mapped styles behind w_std (StyleGAN's w_avg_samples)
DEFAULT_FOV = 90.0  # the training view of a cylinder model whose provenance does not say


# --------------------------------------------------------------------------- the view


def view_fov(generator: Generator, fov: float | None = None) -> float:
    """The width in degrees of a cylinder model's training views: ``fov`` if given, else the
    ``fov`` its training run recorded in its provenance, else 90."""
    if fov is not None:
        return float(fov)
    recorded = (generator.provenance.get("options") or {}).get("fov") if isinstance(generator.provenance, dict) else None
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and 0 < recorded <= 360:
        return float(recorded)
    return DEFAULT_FOV


def view_coords(coordinate_space: str, size: int, *, centre: float = 0.0, fov: float = DEFAULT_FOV) -> np.ndarray:
    """Coordinates of the square view a target is matched to: float32 ``[1, size * size, 2]``.

    plane: the training grid ``[-1, 1]^2``. cylinder: u in ``centre_u +- fov / 360`` with
    ``centre_u = centre / 180`` (``centre`` in degrees; u is an angle, a turn is 2), v in [-1, 1].
    """
    if coordinate_space != "cylinder":
        return grid_coords(size, size)
    middle, half = centre / 180.0, fov / 360.0
    return grid_coords(size, size, u_range=(middle - half, middle + half))


def best_heading(generator: Generator, target: np.ndarray, fov: float, step: float = 3.0) -> float:
    """The heading in degrees (-180 to 180) of the cylinder view where the average style's render
    is nearest the target (target float32 [H, H, 3] in [-1, 1]; mean squared error): a start
    for the projection where the model already draws something like the photograph (a model
    trained on one scene draws it at one heading, or at several)."""
    side = target.shape[0]
    average = generator.w_avg.detach()[None].cpu().numpy()
    if not np.abs(average).sum() > 0:  # a model without a tracked average (random weights)
        average = generator.mean_w().detach()[None].cpu().numpy()
    headings = np.arange(-180.0, 180.0, step)
    errors = [
        float(np.mean((render_view(generator, view_coords("cylinder", side, centre=float(h), fov=fov), average, side, side) - target) ** 2))
        for h in headings
    ]
    return float(headings[int(np.argmin(errors))])


# --------------------------------------------------------------------------- the loss


def _gaussian_window(side: int, sigma: float, channels: int, device: torch.device) -> Tensor:
    """A normalised 1-D Gaussian as a depthwise kernel: [channels, 1, 1, side]."""
    x = torch.arange(side, dtype=torch.float32, device=device) - (side - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).reshape(1, 1, 1, side).repeat(channels, 1, 1, 1)


def _ssim_parts(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """SSIM and its contrast-structure term of x, y [B, C, H, W] in [0, 1], each [B] (means over
    the valid window positions and channels). The Gaussian window is 11 wide, or the largest
    odd width that fits the image (the coarse scales of small images)."""
    side = min(SSIM_WINDOW, min(x.shape[-2:]) - (1 - min(x.shape[-2:]) % 2))
    channels = x.shape[1]
    g = _gaussian_window(side, SSIM_SIGMA, channels, x.device)

    def blur(t: Tensor) -> Tensor:  # separable, valid: [B, C, H, W] -> [B, C, H - side + 1, W - side + 1]
        t = F.conv2d(t, g, groups=channels)
        return F.conv2d(t, g.transpose(-1, -2), groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    ssim = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return ssim.mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ms_ssim(x: Tensor, y: Tensor) -> Tensor:
    """Multi-scale SSIM of x, y [B, C, H, W] in [0, 1] -> [B] (1: identical).

    Scales: the image halved (2x2 average) until its shorter side would fall below
    :data:`MIN_SSIM_SIDE`, at most five; the standard weights of the scales used, renormalised
    to sum to 1. ``prod_{i < L-1} cs_i^a_i * ssim_{L-1}^a_{L-1}``, each term clamped at 1e-6 from
    below (negative correlations would make the powers undefined, zero their gradient infinite).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise CipsError(f"MS-SSIM compares two [B, C, H, W] images of one shape, not {list(x.shape)} and {list(y.shape)}.")
    side = min(x.shape[-2:])
    levels = 1
    while levels < len(MS_SSIM_WEIGHTS) and side // 2**levels >= MIN_SSIM_SIDE:
        levels += 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    terms = []
    for level in range(levels):
        ssim, cs = _ssim_parts(x, y)
        terms.append((ssim if level == levels - 1 else cs).clamp(min=1e-6))
        if level < levels - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return torch.stack(terms, dim=1).pow(weights).prod(dim=1)


def projection_loss(image: Tensor, target: Tensor, *, pixel: str = "mse", pixel_weight: float = 1.0, ssim_weight: float = 1.0) -> Tensor:
    """The loss of a render against the target, both [B, 3, H, W] in [-1, 1] -> a scalar (see the module text)."""
    difference = image - target
    pixel_term = difference.square().mean() if pixel == "mse" else difference.abs().mean()
    total = pixel_weight * pixel_term
    if ssim_weight:
        total = total + ssim_weight * (1 - ms_ssim((image + 1) / 2, (target + 1) / 2)).mean()
    return total


def psnr(image: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of two images of one shape with colours in [-1, 1], measured on [0, 1]."""
    return raw_psnr(float(np.mean((np.asarray(image, np.float64) - np.asarray(target, np.float64)) ** 2)))


# --------------------------------------------------------------------------- styles


def style_layers(generator: Generator) -> int:
    """L, the style inputs of the generator's synthesis (``config.family.style_layers``): a
    per-layer projection optimises ``ws [1, L, S]``; 1: one style for all layers."""
    fact = getattr(generator.config.family, "style_layers", None)
    return int(fact(generator.config)) if callable(fact) else 1


def synthesize_styles(generator: Generator, coords: Tensor, styles: Tensor) -> Tensor:
    """coords [B, N, 2] and a style [B, S] or per-layer styles [B, L, S] -> rgb [B, N, 3]."""
    if styles.dim() == 3:
        return generator.synthesize_layers(coords, styles)
    return generator.synthesize(coords, styles)


def style_statistics(generator: Generator, seed: int, samples: int = W_SAMPLES) -> tuple[Tensor, float]:
    """(the average style [S], w_std): the model's ``w_avg`` where it tracks one (trained and
    official models do), else the mean of ``samples`` mapped styles; w_std is the root mean
    squared distance of those styles from the average (StyleGAN's ``w_std``). A class-conditional
    model maps each sample with a random class, as :meth:`Generator.mean_w` does."""
    config = generator.config
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, getattr(config, "latent_dim", config.style_dim), generator=g).to(generator.device)
    classes = getattr(config, "c_dim", 0)
    with torch.no_grad():
        if classes:
            labels = torch.randint(classes, (samples,), generator=g)
            w = generator.map(z, c=F.one_hot(labels, classes).float().to(generator.device))
        else:
            w = generator.map(z)
    average = generator.w_avg.detach().clone() if bool(generator.w_avg.abs().sum() > 0) else w.mean(dim=0)
    spread = float(((w - average).square().sum() / samples).sqrt())
    return average, spread


# --------------------------------------------------------------------------- the optimisation


@dataclass(frozen=True)
class ProjectionSettings:
    """How to project: steps, learning rate, styles, loss, trajectory, seed (the module text)."""

    steps: int = 1000
    lr: float = 0.1
    per_layer: bool = False
    pixel: str = "mse"
    pixel_weight: float = 1.0
    ssim_weight: float = 1.0
    noise: float = 0.05  # the style noise at the start, times w_std (StyleGAN's initial_noise_factor)
    noise_ramp: float = 0.75  # the noise reaches zero at this fraction of the steps
    lr_rampdown: float = 0.25
    lr_rampup: float = 0.05
    save_every: int = 10
    seed: int = 0


@dataclass
class Projection:
    """What :func:`project` found: the final style ``styles`` float32 [1, S] or [1, L, S],
    ``trajectory`` [T, *styles.shape], ``loss`` [T], ``steps`` [T] (the step each was saved
    after, 1-based), the final render and its PSNR against the target."""

    styles: np.ndarray
    trajectory: np.ndarray
    loss: np.ndarray
    steps: np.ndarray
    reconstruction: np.ndarray  # float32 [H, W, 3] in about [-1, 1]
    psnr: float


def torch_device(name: str) -> torch.device:
    """The device a projection runs on (``auto``: CUDA where there is one), or one sentence."""
    return devices.torch_device(name, "Projection")


def check_projection_memory(generator: Generator, points: int) -> None:
    """Refuse, on the CPU, a view whose backward pass cannot fit: every layer's activations of
    every point are kept for the gradient (a rough bound: the family's peak activations per
    point, once per modulated layer and twice more for the gradients)."""
    if generator.device.type != "cpu":
        return
    per_point = generator.config.family.activation_floats_per_point(generator.config)
    layers = 2 * generator.config.n_blocks + 2
    check_memory(4 * 3 * per_point * layers * points, f"Projecting onto a {points:,}-point view", "choose a smaller --size")


def project(
    generator: Generator,
    target: np.ndarray,
    coords: np.ndarray,
    settings: ProjectionSettings,
    progress: Callable[[int, int], None] | None = None,
) -> Projection:
    """Optimise a style so that ``generator`` at ``coords`` reproduces ``target``.

    target: float32 [H, W, 3] in [-1, 1]; coords: float32 [1, H * W, 2] (:func:`view_coords`),
    row-major. ``progress(done, total)`` is called after every step.
    """
    height, width, _ = target.shape
    if coords.shape != (1, height * width, 2):
        raise CipsError(f"The view's coordinates {list(coords.shape)} do not match the {height} x {width} target.")
    if settings.steps < 1 or settings.save_every < 1:
        raise CipsError(f"A projection needs at least one step and a trajectory saved every step or more, not steps={settings.steps}, save_every={settings.save_every}.")
    if settings.pixel not in PIXEL_LOSSES:
        raise CipsError(f"The pixel loss is {' or '.join(PIXEL_LOSSES)}, not {settings.pixel!r:.40}.")
    layers = style_layers(generator)
    if settings.per_layer and layers < 2:
        raise CipsError(
            f"The {generator.config.arch_name} model takes one style for all its layers, so there is no per-layer "
            "projection; project without --per-layer."
        )
    check_projection_memory(generator, height * width)
    learning = [parameter.requires_grad for parameter in generator.parameters()]
    generator.requires_grad_(False)  # only the style is optimised; the caller's flags come back after
    try:
        final, saved, losses, saved_steps = _optimise(generator, target, coords, settings, layers, progress)
    finally:
        for parameter, flag in zip(generator.parameters(), learning):
            parameter.requires_grad_(flag)
    reconstruction = render_view(generator, coords, final.cpu().numpy(), height, width)
    return Projection(
        styles=final.cpu().numpy().astype(np.float32),
        trajectory=np.stack(saved).astype(np.float32),
        loss=np.asarray(losses, dtype=np.float32),
        steps=np.asarray(saved_steps, dtype=np.int64),
        reconstruction=reconstruction,
        psnr=psnr(reconstruction, target),
    )


def _optimise(
    generator: Generator, target: np.ndarray, coords: np.ndarray, settings: ProjectionSettings, layers: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[Tensor, list[np.ndarray], list[float], list[int]]:
    """The optimisation loop of :func:`project`: (the final style, the saved styles, their losses, their steps)."""
    height, width, _ = target.shape
    device = generator.device
    average, w_std = style_statistics(generator, settings.seed)
    start = average[None].repeat(1, layers, 1) if settings.per_layer else average[None]  # [1, L, S] or [1, S]
    w_opt = start.clone().requires_grad_(True)
    points = torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32)).to(device)
    goal = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)).to(device).permute(2, 0, 1)[None]  # [1, 3, H, W]
    optimizer = torch.optim.Adam([w_opt], betas=(0.9, 0.999), lr=settings.lr)
    noise_source = torch.Generator(device=device).manual_seed(settings.seed)
    saved, losses, saved_steps = [], [], []
    for step in range(settings.steps):
        t = step / settings.steps
        noise_scale = w_std * settings.noise * max(0.0, 1.0 - t / settings.noise_ramp) ** 2
        ramp = min(1.0, (1.0 - t) / settings.lr_rampdown)
        ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
        ramp = ramp * min(1.0, t / settings.lr_rampup)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * ramp
        noise = torch.randn(w_opt.shape, generator=noise_source, device=device) * noise_scale
        rgb = synthesize_styles(generator, points, w_opt + noise)  # [1, H W, 3]
        image = rgb.reshape(1, height, width, 3).permute(0, 3, 1, 2)  # [1, 3, H, W]
        loss = projection_loss(image, goal, pixel=settings.pixel, pixel_weight=settings.pixel_weight, ssim_weight=settings.ssim_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % settings.save_every == 0 or step + 1 == settings.steps:
            saved.append(w_opt.detach().cpu().numpy().copy())
            losses.append(float(loss.detach()))
            saved_steps.append(step + 1)
        if progress is not None:
            progress(step + 1, settings.steps)
    return w_opt.detach(), saved, losses, saved_steps


def render_view(generator: Generator, coords: np.ndarray, styles: np.ndarray, height: int, width: int) -> np.ndarray:
    """The model's render of a style (styles [1, S] or [1, L, S]) at coords [1, H W, 2] -> float32 [H, W, 3]."""
    with torch.no_grad():
        points = torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32)).to(generator.device)
        style = torch.from_numpy(np.ascontiguousarray(styles, dtype=np.float32)).to(generator.device)
        rgb = synthesize_styles(generator, points, style)
    return rgb.reshape(height, width, 3).float().cpu().numpy()


def trajectory_frames(
    generator: Generator, coords: np.ndarray, trajectory: np.ndarray, target: np.ndarray, scale: int = 1
) -> Iterator[np.ndarray]:
    """Frames of a video of the optimisation: the target beside the render of each saved style,
    each uint8 [H * scale, 2 * W * scale, 3] (nearest-neighbour enlarged by ``scale``)."""
    height, width, _ = target.shape
    left = rgb_to_uint8(target[None])[0]
    for styles in trajectory:
        right = rgb_to_uint8(render_view(generator, coords, styles, height, width)[None])[0]
        frame = np.concatenate([left, right], axis=1)
        yield frame.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else frame
