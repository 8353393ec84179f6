"""The one table of compute precisions: the names users type and the torch dtypes they mean.

``--precision`` of the torch backend, ``bench`` cases, ``export --engine trt`` and the
engines' declarations (:class:`cips_deploy.contracts.exporter.Exporter`) all read it. Runtimes with
their own vocabulary (OpenVINO's ``f32``) translate from these names in their own module.
"""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = tuple(DTYPES)  # fp32, bf16, fp16
