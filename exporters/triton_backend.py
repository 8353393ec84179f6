"""The ``triton`` render backend: synthesis on Triton Inference Servers, several chunks in flight.

    cips-deploy render --checkpoint m.safetensors --backend triton --backend-option url=127.0.0.1:8001
    cips_deploy.render(path, backend="triton", backend_options={"url": "127.0.0.1:8001"})

``model`` is what the server should be serving: a checkpoint, an exported ``.onnx`` engine
or a Generator. At construction the backend connects to every URL, reads the served
model's configuration and refuses, in one sentence, a server that cannot be reached, that
does not serve the model, or whose model's metadata (``parameters`` written by
``export --triton-repo``) says it comes from other weights. ``map`` runs on the server's
``<model>_mapping`` model; ``run_many`` sends chunks as requests, keeping ``inflight``
chunks per server in flight, each to the server with the fewest unanswered, and yields the
colours in chunk order.

Several servers: one that stops answering or times out mid-render is dropped with a
warning and its unanswered chunks go to the others (every server was checked to serve the
same weights, so the pixels do not change); the render ends, with one sentence and no
image, only when none is left, or when a server refuses a chunk (another would too).

Options (strings from the command line): ``url`` (``host:port``, or several joined by
commas; default 127.0.0.1:8001 for gRPC, 127.0.0.1:8000 for HTTP), ``model`` (the served
name; default: the checkpoint's file name made into a Triton name, as ``export`` does),
``protocol`` (``grpc`` or ``http``), ``inflight`` (chunks in flight per URL, default 4),
``timeout`` (seconds per request, default 120).

Tensors: coords [1, n, 2] and w [1, S] (or [1, n, S]) float32 go out, rgb [1, n, 3] float32
comes back, exactly the engine I/O of :mod:`.spec`. Host numpy arrays on both sides: the
backend needs numpy and tritonclient only (a checkpoint ``source`` whose hash differs from
the served model's is loaded to compare weights, which needs the ``build`` extra).
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from cips_deploy.contracts.backend import Backend
from cips_deploy.errors import CipsError
from cips_deploy.contracts.topology import Parameter

from .host_arrays import PAD_POINTS, host_float32, pad_rows
from .metadata import EngineMetadata, read_onnx_metadata
from .spec import MAPPING, SYNTHESIS, mapping_feeds, mapping_spec, synthesis_spec
from .triton import MAPPING_SUFFIX, model_name
from .triton_client import Connection, ServerLost, connect

PROTOCOLS = {"grpc": 8001, "http": 8000}
log = logging.getLogger(__name__)
MAX_INFLIGHT = 64
_URL = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


class TritonBackend(Backend):
    name = "triton"
    description = "Triton Inference Servers (cips-deploy serve, or NVIDIA's container): chunks over gRPC or HTTP, several in flight."
    options = (
        Parameter("url", str, None, "host:port of the server, or several separated by commas (chunks spread over them)"),
        Parameter("model", str, None, "the served synthesis model's name (default: the one named after the checkpoint)"),
        Parameter("protocol", str, "grpc", "grpc or http", choices=("grpc", "http")),
        Parameter("inflight", int, 4, "chunks in flight per server", minimum=1, maximum=1024),
        Parameter("timeout", float, 120.0, "seconds to wait for one chunk", minimum=1e-3),
    )

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
        self._connections: list[Connection] = []
        try:
            self._connections = [connect(protocol, each, self.timeout, self.inflight) for each in self.urls]
            self.metadata = self._check_models(source)
        except BaseException:
            self.close()
            raise
        self.config = self.metadata.config
        self._spec = synthesis_spec(self.config, self.metadata.spatial_style, self.metadata.layer_styles)
        self._mapping_spec = mapping_spec(self.config)
        self._live = list(self._connections)  # servers still answering; a lost one is dropped
        self._turn = itertools.count()

    def map(self, z: np.ndarray, truncation: float = 1.0, c: np.ndarray | None = None) -> np.ndarray:
        """z [B, Z] (and c [B, C] for a class-conditional model) -> w [B, S] (host float32) on a
        server's mapping model, truncated here towards w_avg."""
        feeds = mapping_feeds(self.metadata.config, host_float32(z), None if c is None else host_float32(c), source=self.model)
        w_names = self._mapping_spec.output_names  # z (, c) -> w
        while True:
            connection = self._live[0]
            try:
                (w,) = connection.infer(self.model + MAPPING_SUFFIX, feeds, w_names)
                break
            except ServerLost as error:
                self._drop(connection, error)
        w = np.array(w, dtype=np.float32)  # a copy: the client's arrays are read-only views
        return self.metadata.truncate(w, truncation)

    def run(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
        """coords [B, N, 2], w [B, S] or [B, N, S] -> rgb [B, N, 3], host float32."""
        return next(iter(self.run_many([(coords, w)])))

    def run_layers(self, coords: np.ndarray, ws: np.ndarray) -> np.ndarray:
        """coords [B, N, 2], per-layer styles ws [B, L, S] -> rgb [B, N, 3] on a served model
        exported with ``--layer-styles``; other models refuse (the contract's sentence)."""
        if not self.metadata.layer_styles:
            return super().run_layers(coords, ws)
        return next(iter(self.run_many([(coords, ws)])))

    def takes_layer_styles(self) -> bool:
        return self.metadata.layer_styles

    def run_many(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        """rgb [B, n, 3] for each (coords [B, n, 2], w) in order, ``inflight`` per live server pending at once."""
        pending: deque[_Request] = deque()
        source = iter(batches)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.inflight * len(self._live):
                    try:
                        coords, w = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    # Padded like the local backends (a multiple of 64 points), so that a served
                    # chunk runs the same kernels as the same chunk run locally: equal colours.
                    n_points = coords.shape[1]
                    coords, w = host_float32(coords), host_float32(w)
                    coords = pad_rows(coords, PAD_POINTS)
                    if self.metadata.layer_styles and w.ndim == 2:  # one style is L equal ones
                        w = np.repeat(w[:, None], self._spec.inputs[1].shape[1], axis=1)
                    elif w.ndim == 3 and not self.metadata.layer_styles:  # per-point styles follow their points
                        w = pad_rows(w, PAD_POINTS)
                    request = _Request(self._inputs(coords, w), n_points)
                    self._send(request, pending)
                    pending.append(request)
                if not pending:
                    return
                first = pending[0]
                try:
                    (rgb,) = first.connection.collect(first.handle)
                except ServerLost as error:
                    lost = first.connection
                    self._drop(lost, error)
                    for request in pending:  # the lost server's unanswered chunks, to the others
                        if request.connection is lost:
                            self._send(request, pending)
                    continue
                pending.popleft()
                yield np.array(rgb[:, : first.n_points], dtype=np.float32)  # a writable copy of the response buffer
        finally:
            for request in pending:
                request.connection.cancel(request.handle)

    def _send(self, request: "_Request", pending: deque["_Request"]) -> None:
        """Submit ``request`` to the live server with the fewest unanswered requests."""
        while True:
            busy = Counter(id(other.connection) for other in pending if other is not request)
            turn = next(self._turn) % len(self._live)  # ties go round in turn
            connection = min(self._live[turn:] + self._live[:turn], key=lambda each: busy[id(each)])
            try:
                request.handle = connection.submit(self.model, request.inputs, self._spec.output_names)
                request.connection = connection
                return
            except ServerLost as error:
                self._drop(connection, error)

    def _drop(self, connection: Connection, error: ServerLost) -> None:
        """Stop using a server that stopped answering; the error itself when none is left."""
        if connection in self._live:
            self._live.remove(connection)
        if not self._live:
            raise error
        others = len(self._live)
        log.warning("%s; its chunks go to the other server%s (%s).", str(error).rstrip("."), "s" if others > 1 else "",
                    ", ".join(each.url for each in self._live))

    def preferred_memory_budget(self) -> float:
        """The server holds the activations; 64 MB keeps a request a few MB of coordinates and colours."""
        return 64.0

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
        self._connections = []

    # ----------------------------------------------------------------------- internals

    def _inputs(self, coords: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
        if coords.ndim != 3 or coords.shape[-1] != 2:
            raise CipsError(f"Coordinates must have shape [B, N, 2], not {list(coords.shape)}.")
        names = self._spec.input_names  # coords, w
        if self.metadata.layer_styles:  # ws [B, L, S] (run_many repeats one style per sample)
            layers, style = self._spec.inputs[1].shape[1:]
            if w.ndim != 3 or w.shape[0] != coords.shape[0] or w.shape[1:] != (layers, style):
                raise CipsError(f"The served model {self.model!r} takes per-layer styles w [B, {layers}, {style}], "
                                f"not {list(w.shape)}.")
            return {names[0]: coords, names[1]: w}
        spatial = w.ndim == 3
        if spatial != self.metadata.spatial_style:
            kind = "per-point styles w [B, N, S]" if spatial else "one style per sample w [B, S]"
            raise CipsError(f"The served model {self.model!r} was not exported for {kind}; export it again to match.")
        return {names[0]: coords, names[1]: w}

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
            elif (synthesis.weights_sha256 != found.weights_sha256 or synthesis.spatial_style != found.spatial_style
                  or synthesis.layer_styles != found.layer_styles):
                raise CipsError(f"{where} is not the model served at {self._connections[0].url}; serve the same repository everywhere.")
            served = synthesis_spec(synthesis.config, synthesis.spatial_style, synthesis.layer_styles)
            expected = [spec.to_dict() for spec in (served, mapping_spec(synthesis.config))]
            if [synthesis.io, mapping.io] != expected:
                raise CipsError(f"{where} has inputs and outputs other than this cips-deploy expects; export it again.")
        assert found is not None
        return found


@dataclass(eq=False)
class _Request:
    """One chunk on its way: its input tensors (kept until answered, to send again elsewhere)."""

    inputs: dict[str, np.ndarray]
    n_points: int  # before padding
    connection: Connection | None = None
    handle: Any = None


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
    if not isinstance(source, (str, Path)):  # a Generator: torch is there
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

