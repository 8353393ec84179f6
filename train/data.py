"""Training images: a folder or a zip of images (the StyleGAN convention), held in memory.

Every image is decoded once, converted to RGB, resized so that its shorter side is the
working size and centre-cropped to a square (or, for cylinder training, kept at the working
height with its full width: wide images are strips of a panorama). Images that cannot be
decoded are skipped and counted; a data set with no usable image is an error.

An image's size is checked from its header, before it is decoded or resized: each side at
most :data:`MAX_IMAGE_SIDE`, at most :data:`MAX_IMAGE_PIXELS` in all (an aspect ratio of
2,000,000 : 1 passes Pillow's pixel limit, and resizing its short side up would take
gigabytes), and what is kept of it at most :data:`MAX_KEPT_PIXELS`. Larger images are skipped
and counted like undecodable ones. A square view of an image whose resized whole would pass
:data:`MAX_KEPT_PIXELS` is resampled from the source box of the square only (Pillow's pass
order then differs, so its pixels may differ slightly from resizing the whole), so the
length of a long image costs nothing.

Tensors are float32 in [-1, 1], ``[3, H, W]``, the generator's colour range.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from cips_deploy.errors import CipsError
from cips_deploy.contracts.command_options import kernel_tree
from cips_deploy.contracts.limits import ZIP_READ_ERRORS, check_memory, regular_file

# What reading one file or zip member may raise: it is skipped and counted.
READ_ERRORS = ZIP_READ_ERRORS
MAX_IMAGE_BYTES = 256 << 20  # one image file; larger ones are skipped (and counted)
MAX_IMAGE_SIDE = 1 << 16  # pixels on either side of a source image
MAX_IMAGE_PIXELS = 1 << 26  # pixels of a source image (8192 x 8192; a 50-megapixel photograph fits)
MAX_KEPT_PIXELS = 1 << 24  # pixels kept of one image: a cylinder strip may be 16,384 x 1,024
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
    path = check_data_path(path)
    images: list[Tensor] = []
    skipped: list[str] = []
    for name, read in _image_files(path):
        try:
            data = read()
        except READ_ERRORS:  # a damaged, encrypted or oddly compressed zip member, an unreadable file
            skipped.append(name)
            continue
        try:
            with Image.open(io.BytesIO(data)) as image:
                _check_size(image, resolution, keep_aspect)  # from the header: nothing is decoded yet
                check_memory(4 * 3 * _kept_pixels(image.size, resolution, keep_aspect) + 8 * image.width * image.height,
                             f"Reading training image {name} after {len(images):,} others")
                image.load()
                images.append(_prepare(image, resolution, keep_aspect))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError, _TooLarge):
            skipped.append(name)
    if not images:
        detail = f" ({len(skipped)} file(s) could not be read as images)" if skipped else ""
        raise CipsError(f"The data set {path} holds no usable image{detail}.")
    return ImageDataset(images=images, source=str(path), skipped=skipped)


def check_data_path(path: str | Path) -> Path:
    """``path`` if it can be a data set: an existing folder or regular file, outside /proc and
    /sys (whose trees are endless and change while they are read). A FIFO or a device would
    block the reader forever."""
    text = os.fspath(path)
    if not text.strip() or "\0" in text:
        raise CipsError(f"{text!r:.60} is not a usable path for the data set.")
    path = Path(text)
    tree = kernel_tree(path)
    if tree is not None:
        raise CipsError(f"The data set {path} is in {tree}, a view of the kernel, not a folder of images.")
    try:
        exists = path.exists()
    except OSError as error:  # a name too long, a loop of links
        raise CipsError(f"Cannot read the data set {path}: {error.strerror or error}.") from None
    if not exists:
        raise CipsError(f"No such data set: {path}.")
    if not path.is_dir():
        regular_file(path, "data set")
    return path


class _TooLarge(Exception):
    """An image over the size limits: skipped and counted like an undecodable one."""


def _check_size(image: Image.Image, resolution: int, keep_aspect: bool) -> None:
    width, height = image.size
    if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE and width * height <= MAX_IMAGE_PIXELS):
        raise _TooLarge
    if _kept_pixels(image.size, resolution, keep_aspect) > MAX_KEPT_PIXELS:
        raise _TooLarge


def _kept_pixels(size: tuple[int, int], resolution: int, keep_aspect: bool) -> int:
    """Pixels of what :func:`_prepare` keeps of an image of ``size``: a square, or a strip."""
    width, height = size
    if not keep_aspect:
        return resolution * resolution
    return resolution * max(resolution, round(width * resolution / max(height, 1)))


def _image_files(path: Path):
    """Yield (name, read-bytes callable) for every image-like file, in a stable order."""
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            # is_file() follows links and is False for FIFOs and devices, which are skipped.
            yield str(file.relative_to(path)), (lambda file=file: _read_capped(_open_regular(file), file.name))
        return
    if zipfile.is_zipfile(path):
        try:
            archive = zipfile.ZipFile(path)
        except READ_ERRORS as error:
            raise CipsError(f"The data set {path} is a damaged zip ({type(error).__name__}).") from None
        with archive:
            for info in sorted(archive.infolist(), key=lambda item: item.filename):
                if not info.is_dir() and Path(info.filename).suffix.lower() in IMAGE_SUFFIXES:
                    # One member at a time, never more than MAX_IMAGE_BYTES of it: the sizes a
                    # zip declares can lie, and a few MB can inflate to gigabytes.
                    yield info.filename, (lambda info=info: _read_capped(archive.open(info), info.filename))
        return
    raise CipsError(f"The data set {path} is neither a folder nor a zip of images.")


def _open_regular(file: Path):
    """``file`` open for reading, or OSError (skipped) if it is no longer a regular file:
    ``O_NONBLOCK`` so that a FIFO put in its place since the listing does not block."""
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{file.name} is not a regular file")
    return os.fdopen(fd, "rb")


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
        full = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        left, top = (full[0] - resolution) // 2, (full[1] - resolution) // 2
        if full[0] * full[1] <= MAX_KEPT_PIXELS:  # the whole image resized, then its centre square
            image = image.resize(full, Image.Resampling.LANCZOS).crop((left, top, left + resolution, top + resolution))
        else:  # a very long image: resample only the source box of that square (nearly the same pixels)
            x_scale, y_scale = width / full[0], height / full[1]
            box = (left * x_scale, top * y_scale, (left + resolution) * x_scale, (top + resolution) * y_scale)
            image = image.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
