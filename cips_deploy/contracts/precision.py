"""The one list of compute precisions: the names users type.

``--precision`` of the torch backend, ``bench`` cases, ``export --engine trt`` and the
engines' declarations (:class:`cips_deploy.contracts.exporter.Exporter`) all read it. What a
name means in a runtime's own terms (the torch backend's dtypes, OpenVINO's ``f32``) is
that runtime's table, in its own module, so that this contract needs no torch.
"""

from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "fp16")
