"""What an exporter (an engine of ``cips-deploy export --engine``) is.

An exporter turns a model file into deployable engine files. It is registered through
``register_exporters`` (the built-in ``onnx`` and ``trt`` exactly like a third party's), and
the ``export`` command offers every registered name as an ``--engine`` choice and dispatches
to it. It declares:

- ``name`` (what ``--engine`` takes) and ``description`` (one line, for ``cips-deploy plugins``);
- ``families``: the generator architectures it can export (``GeneratorConfig.arch`` names,
  for example ``("skip", "res", "ne", "creps")``); empty means every family;
- ``precisions``: the ``--precision`` values it takes (``("fp32",)`` at least);
- ``default_source``: the model exported when the command is given none (None: a model must
  be given; the ``web`` engine's is the bundled demo engine);
- ``export(source, *, output, overwrite, precision, **options) -> result``: write the engine.
  ``options`` are the command's other settings under their Python names (``opset``,
  ``validate``, ``spatial_style``, ``quantize``, ...) with the command's defaults; refuse
  what you cannot honour with :class:`cips_deploy.errors.CipsError`, one sentence.
  The result has ``files`` (the paths written) and may have ``report`` and ``quality``
  (objects with ``format()``), ``metadata`` and ``triton_models``, which the command prints.
  An error may carry a ``report`` (with ``format()``), printed before its sentence.

:meth:`Exporter.check_request` refuses a family or precision outside the declaration in
one sentence; a third-party exporter calls it first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from cips_deploy.errors import CipsError


class Exporter(ABC):
    """Base class of exporters; plugins subclass it and register an instance."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ()  # empty: every family
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    default_source: Path | None = None

    @abstractmethod
    def export(self, source: Path, *, output: Path | None, overwrite: bool, precision: str, **options: Any) -> Any:
        """Write the engine for ``source``; see the module docstring for the result."""

    def check_request(self, arch: str, precision: str) -> None:
        """Refuse a family or precision this exporter does not declare, in one sentence."""
        if self.families and arch not in self.families:
            raise CipsError(
                f"The {self.name} engine exports {', '.join(self.families)} generators, not {arch}."
            )
        if precision not in self.precisions:
            raise CipsError(f"The {self.name} engine is built in {', '.join(self.precisions)}, not {precision}.")
