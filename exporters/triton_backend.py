"""The ``triton`` render backend: synthesis on Triton Inference Servers, several chunks in flight.

    cips-deploy render --checkpoint m.safetensors --backend triton --backend-option url=127.0.0.1:8001
    cips_deploy.render(path, backend="triton", backend_options={"url": "127.0.0.1:8001"})

``model`` is what the server should be serving: a checkpoint, an exported ``.onnx`` engine
or a Generator. At construction the backend connects to every URL, reads the served
model's configuration and refuses, in one sentence, a server that cannot be reached, that
does not serve the model, or whose model's metadata (``parameters`` written by
``export --triton-repo``) says it comes from other weights. ``map`` runs on the server's
``<model>_mapping`` model; ``run_many`` sends chunks as requests, keeping ``inflight``
chunks per URL in flight (spread over the URLs in turn) and yielding the colours in chunk
order. A timeout, a refused chunk or a server that dies mid-render ends the render with one
sentence and no image.

Options (strings from the command line): ``url`` (``host:port``, or several joined by
commas; default 127.0.0.1:8001 for gRPC, 127.0.0.1:8000 for HTTP), ``model`` (the served
name; default: the checkpoint's file name made into a Triton name, as ``export`` does),
``protocol`` (``grpc`` or ``http``), ``inflight`` (chunks in flight per URL, default 4),
``timeout`` (seconds per request, default 120).

Tensors: coords [1, n, 2] and w [1, S] (or [1, n, S]) float32 go out, rgb [1, n, 3] float32
comes back, exactly the engine I/O of :mod:`.spec`.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import itertools
import re
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from cips_deploy.backend import Backend
from cips_deploy.errors import CipsError
from cips_deploy.generator import Generator

from .metadata import EngineMetadata, read_onnx_metadata
from .spec import MAPPING, SYNTHESIS, mapping_spec, synthesis_spec
from .triton import MAPPING_SUFFIX, model_name

PROTOCOLS = {"grpc": 8001, "http": 8000}
MAX_INFLIGHT = 64
_URL = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


class TritonBackend(Backend):
    name = "triton"
    description = "Triton Inference Servers (cips-deploy serve, or NVIDIA's container): chunks over gRPC or HTTP, several in flight."

    def __init__(
        self,
        source: Any,
        /,
        *,
        device: str = "cpu",
        url: str | None = None,
        model: str | None = None,
        protocol: str = "grpc",
        inflight: int | str = 4,
        timeout: float | str = 120.0,
        **options: Any,
    ) -> None:
        if options:
            raise CipsError(f"The triton backend has no option {sorted(options)[0]!r}; it takes url, model, protocol, inflight, timeout.")
        if protocol not in PROTOCOLS:
            raise CipsError(f"The triton backend's protocol is grpc or http, not {protocol!r}.")
        self.protocol = protocol
        self.inflight = _bounded_int(inflight, "inflight", 1, MAX_INFLIGHT)
        self.timeout = _positive_seconds(timeout)
        self.urls = parse_urls(url if url is not None else f"127.0.0.1:{PROTOCOLS[protocol]}")
        self.model = _served_name(source, model)
        self._connections: list[_Connection] = []
        try:
            self._connections = [_connect(protocol, each, self.timeout, self.inflight) for each in self.urls]
            self.metadata = self._check_models(source)
        except BaseException:
            self.close()
            raise
        self.config = self.metadata.config
        self._spec = synthesis_spec(self.config, self.metadata.spatial_style)
        self._mapping_spec = mapping_spec(self.config)
        self._next = itertools.count()  # round-robin over the URLs

    def map(self, z: Tensor, truncation: float = 1.0) -> Tensor:
        """z [B, S] -> w [B, S] on the server's mapping model, truncated here towards w_avg."""
        (z_name,), w_names = self._mapping_spec.input_names, self._mapping_spec.output_names  # z -> w
        (w,) = self._connections[0].infer(self.model + MAPPING_SUFFIX, {z_name: _numpy(z)}, w_names)
        w = torch.from_numpy(np.array(w))  # a copy: the client's arrays are read-only views
        if truncation != 1.0:
            w = self.metadata.w_avg_tensor().lerp(w, truncation)
        return w

    def run(self, coords: Tensor, w: Tensor) -> Tensor:
        return next(iter(self.run_many([(coords, w)])))

    def run_many(self, batches: Iterable[tuple[Tensor, Tensor]]) -> Iterator[Tensor]:
        """rgb [B, n, 3] for each (coords [B, n, 2], w) in order, ``inflight`` per URL pending at once."""
        window = self.inflight * len(self._connections)
        pending: deque[tuple[_Connection, Any]] = deque()
        source = iter(batches)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        coords, w = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    connection = self._connections[next(self._next) % len(self._connections)]
                    pending.append((connection, connection.submit(self.model, self._inputs(coords, w), self._spec.output_names)))
                if not pending:
                    return
                connection, handle = pending.popleft()
                (rgb,) = connection.collect(handle)
                yield torch.from_numpy(np.array(rgb))  # a writable copy of the response buffer
        finally:
            for connection, handle in pending:
                connection.cancel(handle)

    def preferred_memory_budget(self) -> float:
        """The server holds the activations; 64 MB keeps a request a few MB of coordinates and colours."""
        return 64.0

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
        self._connections = []

    # ----------------------------------------------------------------------- internals

    def _inputs(self, coords: Tensor, w: Tensor) -> dict[str, np.ndarray]:
        if coords.dim() != 3 or coords.shape[-1] != 2:
            raise CipsError(f"Coordinates must have shape [B, N, 2], not {list(coords.shape)}.")
        spatial = w.dim() == 3
        if spatial != self.metadata.spatial_style:
            kind = "per-point styles w [B, N, S]" if spatial else "one style per sample w [B, S]"
            raise CipsError(f"The served model {self.model!r} was not exported for {kind}; export it again to match.")
        names = self._spec.input_names  # coords, w
        return {names[0]: _numpy(coords), names[1]: _numpy(w)}

    def _check_models(self, source: Any) -> EngineMetadata:
        """Every URL serves the synthesis and mapping models of ``source``'s weights."""
        found: EngineMetadata | None = None
        for connection in self._connections:
            synthesis = connection.metadata(self.model, SYNTHESIS)
            mapping = connection.metadata(self.model + MAPPING_SUFFIX, MAPPING)
            where = f"the model {self.model!r} at {connection.url}"
            if mapping.weights_sha256 != synthesis.weights_sha256:
                raise CipsError(f"{where} and its mapping model come from different weights; export them together again.")
            if found is None:
                _check_source(synthesis, source, where)
                found = synthesis
            elif synthesis.weights_sha256 != found.weights_sha256 or synthesis.spatial_style != found.spatial_style:
                raise CipsError(f"{where} is not the model served at {self._connections[0].url}; serve the same repository everywhere.")
            expected = [spec.to_dict() for spec in (synthesis_spec(synthesis.config, synthesis.spatial_style), mapping_spec(synthesis.config))]
            if [synthesis.io, mapping.io] != expected:
                raise CipsError(f"{where} has inputs and outputs other than this cips-deploy expects; export it again.")
        assert found is not None
        return found


def parse_urls(text: str) -> list[str]:
    """``host:port[,host:port...]`` -> a list; one sentence for anything else."""
    urls = [part.strip() for part in str(text).split(",") if part.strip()]
    if not urls or len(urls) > 64:
        raise CipsError(f"The triton backend's url is host:port (or up to 64 of them joined by commas), not {text!r}.")
    for each in urls:
        match = _URL.match(each)
        if not match or not 1 <= int(match.group(2)) <= 65535:
            raise CipsError(f"The triton backend's url {each!r} is not host:port (for example 127.0.0.1:8001, no scheme).")
    if len(set(urls)) != len(urls):
        raise CipsError(f"The triton backend's url list {text!r} names a server twice.")
    return urls


def _served_name(source: Any, model: str | None) -> str:
    if model is None:
        if isinstance(source, (str, Path)):
            return model_name(None, default_from=Path(source).stem)
        raise CipsError("The triton backend needs --backend-option model=NAME to know which served model this is.")
    return model_name(model, default_from="")


def _check_source(metadata: EngineMetadata, source: Any, where: str) -> None:
    """Refuse a served model that was not exported from ``source``."""
    if isinstance(source, Generator):
        metadata.check_matches(source=where, generator=source)
        return
    path = Path(source)
    if path.suffix == ".onnx":
        local = read_onnx_metadata(path)
        if local.weights_sha256 != metadata.weights_sha256:
            raise CipsError(f"{where} was exported from different weights than {path}; serve the matching repository.")
        return
    from .backends import check_engine_source

    if not path.is_file():
        raise CipsError(f"No such checkpoint: {path}.")
    check_engine_source(metadata, path, where)  # type: ignore[arg-type]  (a label: only str() is taken)


def _bounded_int(value: Any, what: str, low: int, high: int) -> int:
    try:
        number = int(value)
        if isinstance(value, float) or isinstance(value, bool):
            raise ValueError
    except (TypeError, ValueError):
        raise CipsError(f"The triton backend's {what} must be a whole number, not {value!r}.") from None
    if not low <= number <= high:
        raise CipsError(f"The triton backend's {what} must be {low} to {high}, not {number}.")
    return number


def _positive_seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 < seconds <= 86400:
        raise CipsError(f"The triton backend's timeout must be 0 to 86400 seconds, not {value!r}.")
    return seconds


def _numpy(tensor: Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


def _first_line(error: BaseException) -> str:
    message = error.message() if callable(getattr(error, "message", None)) else str(error)
    text = (message or "").strip().splitlines()
    return text[0] if text else type(error).__name__


class _Connection:
    """One server, one protocol: the few calls the backend makes, errors turned into sentences."""

    url: str

    def metadata(self, name: str, role: str) -> EngineMetadata:
        """The cips-deploy metadata of the served model ``name``; one sentence if absent or not ready."""
        config = self._config(name)
        props = {key: value.get("string_value", "") for key, value in (config.get("parameters") or {}).items()}
        metadata = EngineMetadata.from_strings(props, source=f"The model {name!r} at {self.url}")
        metadata.check_role(role, source=f"The model {name!r} at {self.url}")
        return metadata

    def infer(self, name: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        return self.collect(self.submit(name, inputs, outputs))

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing a connection to a dead server may fail; nothing is left to release
            pass

    def _check_live(self, is_live: Any, protocol: str) -> None:
        try:
            live = is_live()
        except Exception as error:
            raise CipsError(f"Cannot reach a Triton server at {self.url} over {protocol} ({_first_line(error)}).") from None
        if not live:
            raise CipsError(f"The Triton server at {self.url} is not live.")

    def _config(self, name: str) -> dict:
        """The model configuration as JSON, once the model is known to be served and ready."""
        try:
            served = self._served()
            if name not in served:
                raise self._unknown_model(name, served)
            if not self._ready(name):
                raise CipsError(f"The model {name!r} at {self.url} is not ready (see the server's log).")
            return self._model_config(name)
        except CipsError:
            raise
        except Exception as error:
            raise self._failure(error, f"about the model {name!r}") from None

    def _unknown_model(self, name: str, served: list[str]) -> CipsError:
        listed = ", ".join(sorted(served)) or "none"
        return CipsError(f"The Triton server at {self.url} serves no model {name!r} (it serves: {listed}); pass --backend-option model=NAME.")

    def _failure(self, error: BaseException, during: str) -> CipsError:
        text = _first_line(error)
        lowered = (text + " " + str(getattr(error, "status", lambda: "")() or "")).lower()
        if "deadline" in lowered or "timed out" in lowered or "timeout" in lowered:
            return CipsError(f"The Triton server at {self.url} did not answer {during} within {self.timeout:g} s (raise --backend-option timeout=SECONDS).")
        if any(word in lowered for word in ("unavailable", "connection", "refused", "reset", "broken pipe", "socket closed", "failed to connect", "eof")):
            return CipsError(f"The Triton server at {self.url} stopped answering {during} ({text}).")
        return CipsError(f"The Triton server at {self.url} refused {during}: {text}.")


class _GrpcConnection(_Connection):
    def __init__(self, url: str, timeout: float, grpcclient: Any) -> None:
        self.url, self.timeout, self._module = url, timeout, grpcclient
        self._client = grpcclient.InferenceServerClient(url)
        self._check_live(lambda: self._client.is_server_live(client_timeout=min(timeout, 10.0)), "gRPC")

    def _served(self) -> list[str]:
        return [entry.name for entry in self._client.get_model_repository_index(client_timeout=self.timeout).models]

    def _ready(self, name: str) -> bool:
        return self._client.is_model_ready(name, client_timeout=self.timeout)

    def _model_config(self, name: str) -> dict:
        return self._client.get_model_config(name, as_json=True, client_timeout=self.timeout)["config"]

    def submit(self, name: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> Any:
        future: concurrent.futures.Future = concurrent.futures.Future()
        tensors = []
        for key, array in inputs.items():
            tensor = self._module.InferInput(key, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        requested = [self._module.InferRequestedOutput(key) for key in outputs]

        def done(result: Any, error: Any) -> None:  # on a gRPC thread
            try:
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result([result.as_numpy(key) for key in outputs])
            except concurrent.futures.InvalidStateError:
                pass  # the render stopped waiting for this chunk (cancelled)

        try:
            self._client.async_infer(name, tensors, done, outputs=requested, client_timeout=self.timeout)
        except Exception as error:
            raise self._failure(error, "a chunk") from None
        return future

    def collect(self, handle: Any) -> list[np.ndarray]:
        try:
            return handle.result(timeout=self.timeout + 10.0)
        except concurrent.futures.TimeoutError:
            raise CipsError(f"The Triton server at {self.url} did not answer a chunk within {self.timeout:g} s.") from None
        except Exception as error:
            raise self._failure(error, "a chunk") from None

    def cancel(self, handle: Any) -> None:
        handle.cancel()


class _HttpConnection(_Connection):
    def __init__(self, url: str, timeout: float, concurrency: int, httpclient: Any) -> None:
        self.url, self.timeout, self._module = url, timeout, httpclient
        self._client = httpclient.InferenceServerClient(
            url, concurrency=concurrency, connection_timeout=min(timeout, 10.0), network_timeout=timeout
        )
        self._check_live(self._client.is_server_live, "HTTP")

    def _served(self) -> list[str]:
        return [entry["name"] for entry in self._client.get_model_repository_index()]

    def _ready(self, name: str) -> bool:
        return self._client.is_model_ready(name)

    def _model_config(self, name: str) -> dict:
        return self._client.get_model_config(name)

    def submit(self, name: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> Any:
        tensors = []
        for key, array in inputs.items():
            tensor = self._module.InferInput(key, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, binary_data=True)
            tensors.append(tensor)
        requested = [self._module.InferRequestedOutput(key, binary_data=True) for key in outputs]
        try:
            return self._client.async_infer(name, tensors, outputs=requested), outputs
        except Exception as error:
            raise self._failure(error, "a chunk") from None

    def collect(self, handle: Any) -> list[np.ndarray]:
        request, outputs = handle
        try:
            result = request.get_result(block=True, timeout=self.timeout + 10.0)
            return [result.as_numpy(key) for key in outputs]
        except Exception as error:
            raise self._failure(error, "a chunk") from None

    def cancel(self, handle: Any) -> None:
        pass  # the greenlet ends with its connection when the client closes


def _connect(protocol: str, url: str, timeout: float, inflight: int) -> _Connection:
    try:
        module = importlib.import_module(f"tritonclient.{protocol}")
    except (ImportError, RuntimeError):  # tritonclient without the extra raises RuntimeError
        raise CipsError(
            f"The triton backend needs tritonclient with {protocol} support: pip install \"tritonclient[{protocol}]\" "
            '(or "cips-deploy[serve]").'
        ) from None
    if protocol == "grpc":
        return _GrpcConnection(url, timeout, module)
    return _HttpConnection(url, timeout, inflight, module)
