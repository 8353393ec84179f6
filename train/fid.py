"""Optional FID during training, through torch-fidelity.

torch-fidelity downloads its Inception weights on first use. Where it is not installed, or
the weights cannot be fetched (an offline machine), training goes on and says why once.
"""

from __future__ import annotations

import dataclasses

import torch

from cips_deploy.errors import describe_error
from cips_deploy.families.generator import Generator
from cips_deploy.runtime.images import rgb_to_uint8
from cips_deploy.train.data import ImageDataset
from cips_deploy.train.views import ViewSampler


class _UInt8Images(torch.utils.data.Dataset):
    """torch-fidelity reads datasets of uint8 tensors [3, H, W]."""

    def __init__(self, images: list[torch.Tensor]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def compute_fid(generator: Generator, data: ImageDataset, views: ViewSampler, count: int = 2000) -> tuple[float | None, str]:
    """(FID of ``count`` EMA samples against the real views, message); FID is None where it cannot run."""
    try:
        import torch_fidelity
    except ImportError:
        return None, "FID skipped: torch-fidelity is not installed (pip install torch-fidelity)."
    R = views.resolution
    full_views = dataclasses.replace(views, crop=None)  # FID compares whole R x R views
    reals = [rgb_to_uint8_image(image[:, :, :R]) for image in data.images]
    fakes = []
    rng = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for start in range(0, count, 16):
            z = torch.randn(min(16, count - start), generator.config.style_dim, generator=rng).to(generator.device)
            _, coords = full_views.sample(data.images, z.shape[0], rng)
            rgb = generator.synthesize(coords.to(generator.device), generator.map(z))
            fakes += [torch.from_numpy(tile).permute(2, 0, 1) for tile in rgb_to_uint8(rgb).reshape(-1, R, R, 3)]
    try:
        metrics = torch_fidelity.calculate_metrics(
            input1=_UInt8Images(fakes), input2=_UInt8Images(reals), fid=True, verbose=False,
            cuda=generator.device.type == "cuda",
        )
    except Exception as error:  # network or weight-file failures come in many types
        return None, f"FID skipped: torch-fidelity could not run ({describe_error(error)})."
    return float(metrics["frechet_inception_distance"]), ""


def rgb_to_uint8_image(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] in [-1, 1] -> uint8 [3, H, W]."""
    return torch.from_numpy(rgb_to_uint8(image.permute(1, 2, 0))).permute(2, 0, 1)
