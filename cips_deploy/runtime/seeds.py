"""Seeds: the one rule that turns a seed into a latent z, for every family and every backend.

    z = np.random.RandomState(seed).randn(1, z_dim)  # float64 Gaussian, then float32

the rule of StyleGAN's ``gen_images.py`` and the official CREPS code, so that a seed names the
same picture here as there, on every machine, with or without torch. ``MAX_SEED`` is the
largest seed ``RandomState`` takes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cips_deploy.errors import CipsError

MAX_SEED = 2**32 - 1


def check_seed(seed: Any, what: str = "seed") -> None:
    """A whole number from 0 to MAX_SEED (numpy integers included, bools not), or a CipsError."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_)) or not 0 <= seed <= MAX_SEED:
        raise CipsError(f"The {what} must be a whole number from 0 to 2**32 - 1, not {seed!r}.")


def seed_latent(seed: int, config_or_z_dim: Any) -> np.ndarray:
    """z for ``seed``: float32 ``[1, Z]``, Z an int or the model config's ``latent_dim`` (its z_dim,
    which official CREPS models may have narrower or wider than w)."""
    check_seed(seed)
    if isinstance(config_or_z_dim, (int, np.integer)):
        z_dim = config_or_z_dim
    else:  # a config written before z_dim existed (a plugin's own) names one width for z and w
        z_dim = getattr(config_or_z_dim, "latent_dim", None) or config_or_z_dim.style_dim
    # randn draws float64; the cast to float32 is the one the official code makes when it hands z to torch.
    return np.random.RandomState(int(seed)).randn(1, int(z_dim)).astype(np.float32)
