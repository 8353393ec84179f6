"""Talking to one Triton server over gRPC or HTTP: the few calls the ``triton`` backend makes.

:func:`connect` checks that the server is live and returns a :class:`Connection`:
``metadata(name, role)`` (the served model's cips-deploy metadata, from its configuration's
``parameters``), ``submit(name, inputs, outputs)`` then ``collect(handle)`` (one request,
answered asynchronously: gRPC through a callback, HTTP through tritonclient's greenlet
pool), ``infer`` (both at once), ``cancel`` and ``close``. Every failure becomes a
:class:`CipsError` of one sentence that names the server: unreachable, no such model, not
ready, a timeout, a server that stopped answering, a refused request.
"""

from __future__ import annotations

import concurrent.futures
import importlib
from typing import Any

import numpy as np

from cips_deploy.errors import CipsError

from .metadata import EngineMetadata


class ServerLost(CipsError):
    """The server stopped answering or timed out: a chunk may go to another server (a refused
    request is a plain :class:`CipsError`: another server would refuse it too)."""


def _first_line(error: BaseException) -> str:
    message = error.message() if callable(getattr(error, "message", None)) else str(error)
    text = (message or "").strip().splitlines()
    return text[0] if text else type(error).__name__


class Connection:
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
            return ServerLost(f"The Triton server at {self.url} did not answer {during} within {self.timeout:g} s (raise --backend-option timeout=SECONDS).")
        if any(word in lowered for word in ("unavailable", "connection", "refused", "reset", "broken pipe", "socket closed", "failed to connect", "eof")):
            return ServerLost(f"The Triton server at {self.url} stopped answering {during} ({text}).")
        return CipsError(f"The Triton server at {self.url} refused {during}: {text}.")


class _GrpcConnection(Connection):
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
            raise ServerLost(f"The Triton server at {self.url} did not answer a chunk within {self.timeout:g} s.") from None
        except Exception as error:
            raise self._failure(error, "a chunk") from None

    def cancel(self, handle: Any) -> None:
        handle.cancel()


class _HttpConnection(Connection):
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


def connect(protocol: str, url: str, timeout: float, inflight: int) -> Connection:
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
