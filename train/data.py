"""Training images: a folder or a zip of images (the StyleGAN convention), held in memory.

Every image is decoded once, converted to RGB, resized so that its shorter side is the
working size and centre-cropped to a square (or, for cylinder training, kept at the working
height with its full width: wide images are strips of a panorama). Images that cannot be
decoded are skipped and counted; a data set with no usable image is an error.

Tensors are float32 in [-1, 1], ``[3, H, W]``, the generator's colour range.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from cips_deploy.errors import CipsError
from cips_deploy.contracts.limits import regular_file

MAX_IMAGE_BYTES = 256 << 20  # one image file; larger ones are skipped (and counted)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


@dataclass
class ImageDataset:
    """Decoded training images. ``images[i]``: [3, H, W_i] in [-1, 1]; ``skipped``: unreadable files."""

    images: list[Tensor]
    source: str
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def load_images(path: str | Path, resolution: int, *, keep_aspect: bool = False) -> ImageDataset:
    """Read every image under ``path`` (a folder, searched recursively, or a .zip).

    Square mode: shorter side resized to ``resolution``, centre crop ``resolution^2``.
    ``keep_aspect`` (cylinder training): height resized to ``resolution``, width kept in
    proportion (at least ``resolution``), so that crops can be taken anywhere along it.
    """
    path = Path(path)
    if not path.exists():
        raise CipsError(f"No such data set: {path}.")
    if not path.is_dir():
        regular_file(path, "data set")  # a FIFO or a device would block the reader forever
    images: list[Tensor] = []
    skipped: list[str] = []
    for name, read in _image_files(path):
        try:
            with Image.open(io.BytesIO(read())) as image:
                image.load()
                images.append(_prepare(image, resolution, keep_aspect))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            skipped.append(name)
    if not images:
        detail = f" ({len(skipped)} file(s) could not be read as images)" if skipped else ""
        raise CipsError(f"The data set {path} holds no usable image{detail}.")
    return ImageDataset(images=images, source=str(path), skipped=skipped)


def _image_files(path: Path):
    """Yield (name, read-bytes callable) for every image-like file, in a stable order."""
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            # is_file() follows links and is False for FIFOs and devices, which are skipped.
            yield str(file.relative_to(path)), (lambda file=file: _read_capped(file.open("rb"), file.name))
        return
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in sorted(archive.infolist(), key=lambda item: item.filename):
                if not info.is_dir() and Path(info.filename).suffix.lower() in IMAGE_SUFFIXES:
                    # One member at a time, never more than MAX_IMAGE_BYTES of it: the sizes a
                    # zip declares can lie, and a few MB can inflate to gigabytes.
                    yield info.filename, (lambda info=info: _read_capped(archive.open(info), info.filename))
        return
    raise CipsError(f"The data set {path} is neither a folder nor a zip of images.")


def _read_capped(handle, name: str) -> bytes:
    """The bytes of one image file, or OSError (the file is skipped) past MAX_IMAGE_BYTES."""
    with handle:
        data = handle.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise OSError(f"{name} is larger than {MAX_IMAGE_BYTES >> 20} MiB")
    return data


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. 16- and 32-bit grey images are scaled, not clipped: PIL's convert("RGB")
    would saturate every value above 255 (a 16-bit PNG would train on a white image)."""
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L, I (32-bit integers, 16-bit PNGs on old PIL)
        values = np.asarray(image, dtype=np.float64)
        full = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values / full * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":  # float images: taken as [0, 1]
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.nan_to_num(values) * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def _prepare(image: Image.Image, resolution: int, keep_aspect: bool) -> Tensor:
    image = _to_rgb(image)
    width, height = image.size
    if keep_aspect:
        new_width = max(resolution, round(width * resolution / height))
        image = image.resize((new_width, resolution), Image.Resampling.LANCZOS)
    else:
        scale = resolution / min(width, height)
        image = image.resize((max(resolution, round(width * scale)), max(resolution, round(height * scale))), Image.Resampling.LANCZOS)
        left = (image.width - resolution) // 2
        top = (image.height - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
