"""The torch dtype of each precision name (:data:`cips_deploy.contracts.precision.PRECISIONS`).

One table for the torch backend, ``bench`` and whatever else turns ``--precision`` into a dtype.
"""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
