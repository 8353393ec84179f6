"""How many parameters a config would build, counted before anything is allocated."""

from __future__ import annotations

import torch

from cips_deploy.contracts.limits import MAX_PARAMETERS, check_memory
from cips_deploy.errors import CipsError
from cips_deploy.families.generator import Generator


def check_model_size(config, what: str = "This model") -> int:
    """Count a config's parameters on the meta device (nothing allocated) and refuse too many.

    Returns the count. Call it before building the generator for real: a 1 MB file's
    config can ask for gigabytes of weights.
    """
    with torch.device("meta"):
        generator = Generator(config)
    count = sum(tensor.numel() for tensor in generator.state_dict().values())
    if count > MAX_PARAMETERS:
        raise CipsError(f"{what} would have {count:,} parameters, more than the limit of {MAX_PARAMETERS:,}.")
    check_memory(4 * count, f"{what} ({count:,} parameters)")
    return count
