"""Facts an exported engine carries about its model, and the checks that use them.

ONNX engines keep them in ``metadata_props`` (all values are strings); TensorRT engines in
a sidecar JSON beside the plan. The keys (all prefixed ``cips_deploy.``):

==========================  =================================================================
``format``                  ``cips-deploy/engine``
``format_version``          ``1``; a reader refuses other versions
``role``                    ``synthesis`` or ``mapping``
``config``                  the :class:`~cips_deploy.contracts.config.GeneratorConfig` as JSON
``coordinate_space``        ``plane`` or ``cylinder``
``style_dim``               S, the width of w
``z_dim``                   Z, the width of z (the mapping engine's input; official z_dim)
``c_dim``                   C, the classes of a class-conditional model (0: unconditional); its
                            mapping engine takes ``c [B, C]`` too
``spatial_style``           ``true`` when ``w`` is ``[B, N, S]``
``w_avg``                   the centre of truncation, a JSON list of S floats (exact float32)
``io``                      the engine's inputs and outputs (:mod:`.spec`) as JSON
``source_file``             name of the checkpoint it was exported from (may be empty)
``source_sha256``           SHA-256 of that checkpoint file (empty for an in-memory model)
``weights_sha256``          SHA-256 of the weights themselves, whatever file they came from
``provenance``              the generator's provenance as JSON
``package_version``         cips-deploy version that exported it
``opset``                   ONNX opset of the graph
==========================  =================================================================

Reading needs neither torch nor ``onnx``: :func:`read_onnx_metadata` takes the props
straight from the file (:mod:`.onnx_proto`, the weights are skipped), and ``w_avg`` comes
back as a numpy array (:meth:`EngineMetadata.truncate` is the truncation in W). Building
metadata from a Generator (:func:`build_metadata`, :func:`weights_sha256`) is export work:
it imports torch there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cips_deploy._version import __version__
from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError
from cips_deploy.contracts.limits import parse_json, regular_file

from . import onnx_proto

if TYPE_CHECKING:
    from cips_deploy.families.generator import Generator

    from .spec import EngineSpec

PREFIX = "cips_deploy."
# Written by exporters/quantize.py into a reduced-precision engine: its mode and its quality report.
PRECISION_KEY, QUALITY_KEY = PREFIX + "precision", PREFIX + "quality"
FORMAT = "cips-deploy/engine"
FORMAT_VERSION = "1"


def weights_sha256(generator: Generator) -> str:
    """SHA-256 over the state dict (names, shapes, float32 bytes, in name order).

    It identifies the weights regardless of the file they were loaded from, so an
    official ``.pt`` and its ``.safetensors`` conversion give the same value.
    """
    import torch  # a Generator is given: torch is there

    digest = hashlib.sha256()
    for name, tensor in sorted(generator.state_dict().items()):
        data = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{list(data.shape)};".encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineMetadata:
    """The decoded facts of one engine (see the module docstring for their meaning)."""

    role: str
    config: GeneratorConfig
    spatial_style: bool
    w_avg: tuple[float, ...]
    io: dict[str, Any]
    source_file: str
    source_sha256: str
    weights_sha256: str
    provenance: dict[str, Any]
    package_version: str
    opset: int

    @property
    def coordinate_space(self) -> str:
        return self.config.coordinate_space

    @property
    def layer_styles(self) -> bool:
        """Whether the synthesis engine takes per-layer styles ``w [B, L, S]`` (export --layer-styles; its ``io`` says)."""
        return bool(self.io.get("layer_styles", False)) if isinstance(self.io, dict) else False

    @property
    def style_dim(self) -> int:
        return self.config.style_dim

    @property
    def z_dim(self) -> int:
        """Z, the width of the latent z (the config's ``latent_dim``)."""
        return self.config.latent_dim

    @property
    def c_dim(self) -> int:
        """C, the classes of a class-conditional model; 0 for an unconditional one."""
        return self.config.c_dim

    def w_avg_array(self) -> np.ndarray:
        """w_avg as float32 [S] (exact: the JSON holds float32 values)."""
        return np.asarray(self.w_avg, dtype=np.float32)

    def truncate(self, w: np.ndarray, truncation: float) -> np.ndarray:
        """w [B, S] float32 moved towards w_avg in W: ``w_avg + (w - w_avg) * truncation`` (psi = 1: w itself)."""
        if truncation == 1.0:
            return w
        w_avg = self.w_avg_array()
        return (w_avg + (w - w_avg) * np.float32(truncation)).astype(np.float32, copy=False)

    def w_avg_tensor(self, device: Any = "cpu"):
        """w_avg as a float32 torch tensor [S] (for the TensorRT runtime, which works on torch CUDA tensors)."""
        import torch

        return torch.tensor(self.w_avg, dtype=torch.float32, device=device)

    def to_strings(self) -> dict[str, str]:
        """The ``metadata_props`` of an ONNX model: every value a string."""
        values = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "role": self.role,
            "config": json.dumps(self.config.to_dict()),
            "coordinate_space": self.config.coordinate_space,
            "style_dim": str(self.config.style_dim),
            "z_dim": str(self.config.latent_dim),  # informative: the config above is what readers use
            "c_dim": str(self.config.c_dim),
            "spatial_style": "true" if self.spatial_style else "false",
            # float32 -> Python float is exact and repr round-trips, so w_avg survives JSON bit for bit.
            "w_avg": json.dumps(list(self.w_avg)),
            "io": json.dumps(self.io),
            "source_file": self.source_file,
            "source_sha256": self.source_sha256,
            "weights_sha256": self.weights_sha256,
            "provenance": json.dumps(self.provenance),
            "package_version": self.package_version,
            "opset": str(self.opset),
        }
        return {PREFIX + key: value for key, value in values.items()}

    @classmethod
    def from_strings(cls, props: dict[str, str], *, source: str) -> "EngineMetadata":
        """Decode ``metadata_props`` (or a sidecar's ``metadata``); one sentence on any problem."""
        values = {key[len(PREFIX):]: value for key, value in props.items() if key.startswith(PREFIX)}
        if values.get("format") != FORMAT:
            raise CipsError(f"{source} is not a cips-deploy engine: its metadata has no cips-deploy model description.")
        if values.get("format_version") != FORMAT_VERSION:
            raise CipsError(
                f"{source} uses engine format version {values.get('format_version')}, but this cips-deploy "
                f"({__version__}) reads version {FORMAT_VERSION}; export it again."
            )
        def loads(key: str, default: str | None = None) -> Any:  # untrusted: capped size and depth
            return parse_json(values[key] if default is None else values.get(key, default), f"The {key} of {source}", 1 << 26)

        try:
            return cls(
                role=values["role"],
                config=GeneratorConfig.from_dict(loads("config")),
                spatial_style=values["spatial_style"] == "true",
                w_avg=tuple(float(x) for x in loads("w_avg")),
                io=loads("io"),
                source_file=values.get("source_file", ""),
                source_sha256=values.get("source_sha256", ""),
                weights_sha256=values["weights_sha256"],
                provenance=loads("provenance", "{}"),
                package_version=values.get("package_version", "unknown"),
                opset=int(values["opset"]),
            )
        except (KeyError, TypeError, ValueError):
            raise CipsError(f"{source} has damaged cips-deploy metadata; export it again.") from None

    def check_role(self, role: str, *, source: str) -> None:
        if self.role != role:
            raise CipsError(f"{source} is the {self.role} engine of a model, not its {role} engine.")

    def check_matches(
        self,
        *,
        source: str,
        generator: Generator | None = None,
        checkpoint_sha256: str | None = None,
        spatial_style: bool | None = None,
    ) -> None:
        """Refuse an engine that was exported from other weights or with other inputs.

        ``checkpoint_sha256`` matches the exported file's hash; ``generator`` matches the
        weights themselves (so a converted checkpoint still matches its original).
        """
        if checkpoint_sha256 is not None and self.source_sha256 and checkpoint_sha256 == self.source_sha256:
            pass
        elif generator is not None:
            if generator.config != self.config:
                raise CipsError(f"{source} was exported from a different model ({self._describe()}).")
            if weights_sha256(generator) != self.weights_sha256:
                raise CipsError(f"{source} was exported from different weights than this checkpoint; export it again.")
        elif checkpoint_sha256 is not None:
            raise CipsError(
                f"{source} was exported from a different checkpoint "
                f"(sha256 {self.source_sha256[:12] or 'unknown'}, not {checkpoint_sha256[:12]})."
            )
        if spatial_style is not None and spatial_style != self.spatial_style:
            wanted = "per-point styles w [B, N, S]" if spatial_style else "one style per sample w [B, S]"
            raise CipsError(f"{source} was not exported for {wanted}; export it again with the matching --spatial-style.")

    def _describe(self) -> str:
        c = self.config
        classes = f", {c.c_dim} classes" if c.c_dim else ""
        return f"{c.arch}, size {c.size}, {c.coordinate_space}, style width {c.style_dim}{classes}"


def build_metadata(
    generator: Generator,
    spec: EngineSpec,
    *,
    opset: int,
    source_file: str = "",
    source_sha256: str = "",
    weights_digest: str | None = None,
) -> EngineMetadata:
    """The metadata of an engine exported from ``generator`` with I/O ``spec``."""
    import torch  # a Generator is given: torch is there

    return EngineMetadata(
        role=spec.role,
        config=generator.config,
        spatial_style=spec.spatial_style,
        w_avg=tuple(float(x) for x in generator.w_avg.detach().to("cpu", torch.float32)),
        io=spec.to_dict(),
        source_file=source_file,
        source_sha256=source_sha256,
        weights_sha256=weights_digest or weights_sha256(generator),
        provenance=dict(generator.provenance),
        package_version=__version__,
        opset=opset,
    )


def read_onnx_metadata(path: str | Path) -> EngineMetadata:
    """The metadata of an ONNX engine, read without loading its weights (nor onnx, nor torch)."""
    return EngineMetadata.from_strings(read_onnx_props(path), source=str(path))


def read_onnx_props(path: str | Path) -> dict[str, str]:
    """Every ``metadata_props`` entry of the ONNX file at ``path``; one sentence if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CipsError(f"No such engine: {path}.")
    path = regular_file(path, "engine")
    with onnx_proto.open_model(path) as mapped:
        try:
            return onnx_proto.metadata_props(mapped.data)
        except onnx_proto.ProtoError as error:
            raise CipsError(f"{path} is not an ONNX model ({error}).") from None
