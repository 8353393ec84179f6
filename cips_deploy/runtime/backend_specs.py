"""Backend specs: one string that names a model and the backend that runs it.

Commands that take "a model" from the user (``compare A B``; ``bench ENGINE`` may share it)
accept, for each model, either

- a **file**: a checkpoint (ours or official), or an exported engine (``.onnx``, ``.plan``);
  the backend is the one the file names (:func:`~cips_deploy.runtime.backend_use.choose_backend`:
  ``.onnx`` -> onnxruntime, ``.plan`` -> tensorrt, anything else -> torch); or
- a **spec** ``BACKEND:TARGET[,KEY=VALUE...]``: a registered backend's name, what it runs,
  then its options, checked against what the backend declares (``resolve_options``), so a
  plugin's backend is reachable the same way::

      onnxruntime:model.onnx                 openvino:model.onnx,precision=f32
      torch:ckpt.safetensors,precision=bf16  onnxruntime:ckpt.safetensors,opset=17
      triton:127.0.0.1:8001/pano,source=pano.onnx,protocol=grpc
      torch:ckpt.safetensors,device=cuda     (``device`` is no backend option: it is taken out here)

A backend that runs a remote service (``triton``, :data:`ADDRESS_BACKENDS`) takes an address
``HOST:PORT/NAME`` as its target: it becomes the options ``url=HOST:PORT`` and ``model=NAME``,
and the model file the server should be serving (the weights it is checked against) is the
``source=FILE`` key; without one the caller may supply it (``compare`` uses the other side's
file).

Which it is: text that names an existing file or folder is a file, whatever it contains;
otherwise a leading ``NAME:`` of two or more letters, digits, ``_``, ``-`` or ``.`` makes a
spec (one letter is a Windows drive). Commas separate options, so a spec's target cannot
contain one (give such a file plainly). Parsing needs no framework and constructs nothing;
:func:`open_backend` builds the backend through the registry (one sentence on any problem).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cips_deploy.contracts.backend import Backend
from cips_deploy.errors import CipsError
from cips_deploy.runtime.backend_use import make_backend
from cips_deploy.runtime.plugin_manager import Registry

# Backends whose target is an address: (option for HOST:PORT, option for the served name).
ADDRESS_BACKENDS = {"triton": ("url", "model")}
SOURCE_KEY = "source"  # the model file an address backend's server is checked against
DEVICE_KEY = "device"
_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]+):(.*)$", re.DOTALL)


@dataclass(frozen=True)
class BackendSpec:
    """A parsed model argument: ``backend`` None means "the one the file names"; ``model`` is
    the path (None for an address backend given no ``source``); ``options`` are strings for
    the backend to convert; ``device`` None means the caller's default."""

    text: str
    backend: str | None
    model: str | None
    options: dict[str, str] = field(default_factory=dict)
    device: str | None = None

    @property
    def label(self) -> str:
        """How messages and reports name this side: the text the user gave."""
        return self.text


def parse_backend_spec(text: str) -> BackendSpec:
    """``text`` as a file or a ``BACKEND:TARGET[,KEY=VALUE...]`` spec (module docstring); one
    sentence for a malformed spec. Nothing is opened or checked against the registry here."""
    text = str(text)
    if not text.strip():
        raise CipsError("A model is a file or BACKEND:TARGET[,KEY=VALUE...], not an empty string.")
    match = _PREFIX.match(text)
    if match is None or _exists(text):
        return BackendSpec(text, None, text)
    backend, rest = match.group(1), match.group(2)
    target, *assignments = rest.split(",")
    if not target:
        raise CipsError(f"The spec {text!r} names no model after {backend}:; write {backend}:FILE[,KEY=VALUE...].")
    options: dict[str, str] = {}
    for item in assignments:
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or not name:
            raise CipsError(f"An option of the spec {text!r} is written KEY=VALUE, not {item!r}.")
        if name in options:
            raise CipsError(f"The spec {text!r} gives the option {name!r} twice.")
        options[name] = value.strip()
    device = options.pop(DEVICE_KEY, None)
    if backend in ADDRESS_BACKENDS:
        return _address_spec(text, backend, target, options, device)
    if SOURCE_KEY in options:
        raise CipsError(f"The spec {text!r} runs the file {target} itself; source= is for address backends ({', '.join(ADDRESS_BACKENDS)}).")
    return BackendSpec(text, backend, target, options, device)


def _address_spec(text: str, backend: str, target: str, options: dict[str, str], device: str | None) -> BackendSpec:
    """``HOST:PORT/NAME`` -> url and model options; the model file from ``source=``."""
    url_key, name_key = ADDRESS_BACKENDS[backend]
    address, slash, name = target.rpartition("/")
    if not slash or not address or not name:
        raise CipsError(f"The spec {text!r} needs an address {backend}:HOST:PORT/MODEL (the server and the served model's name).")
    for key in (url_key, name_key):
        if key in options:
            raise CipsError(f"The spec {text!r} gives {key} twice: in its address and as {key}=.")
    source = options.pop(SOURCE_KEY, None) or None
    return BackendSpec(text, backend, source, {**options, url_key: address, name_key: name}, device)


def _exists(text: str) -> bool:
    try:
        return Path(text).exists()
    except (OSError, ValueError):  # a name too long, a NUL byte: not a file
        return False


def open_backend(
    registry: Registry, spec: BackendSpec, *, device: str = "cpu", source: Any = None
) -> Backend:
    """Construct the backend ``spec`` names for its model (the caller closes it).

    ``source``: the model file to use when ``spec`` has none (an address backend without
    ``source=``); without either, one sentence asks for it."""
    model = spec.model if spec.model is not None else source
    if model is None:
        raise CipsError(f"{spec.label} needs source=FILE: the checkpoint or engine the server is serving.")
    if spec.backend is None:
        path = Path(model)
        if not _exists(str(path)):
            raise CipsError(f"No such model file: {path}.")
        if path.is_dir():
            raise CipsError(f"{path} is a folder; give a checkpoint, an engine file or BACKEND:FILE.")
    return make_backend(registry, spec.backend, model, spec.device or device, dict(spec.options))
