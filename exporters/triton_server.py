"""A local Triton Inference Server as a child process: found, prepared, started, stopped.

:class:`LocalServer` runs ``tritonserver`` (the one bundled in the ``nvidia-pytriton``
wheel, else one on PATH) on a model repository, on 127.0.0.1 only, and guarantees that
``stop()`` leaves no process and no file behind. What the bundled server needs and
PyTriton does not do for us (each measured on these machines):

- the server runs in its own process group (``start_new_session``); the Python backend's
  stubs are its children, so one ``killpg`` ends them all, SIGTERM first, then SIGKILL;
  the kernel also sends the server SIGTERM if this process dies (``PR_SET_PDEATHSIG``);
- the Python backend's stub links ``libpythonX.Y.so``: ``LD_LIBRARY_PATH`` starts with this
  interpreter's own library folder, else it loads the system one and fails;
- the stub embeds Python and finds its ``sys.prefix`` through the first ``python3`` on
  PATH; with numpy 2 there it reads tensors wrongly without an error, so when this
  environment has numpy 2 the stub gets its own small environment
  (:func:`stub_environment`: numpy < 2 plus this environment's packages, in the cache);
- the wheel's server has only the Python backend: a repository with onnxruntime or
  TensorRT models is refused before start (:func:`missing_backends`).

Everything temporary (the backend folder with the stub, a repository exported from a
checkpoint, the server's log and temporary files) lives in one workspace folder, and the
Python backend's shared-memory regions in ``/dev/shm`` carry the workspace's name; ``stop()``
removes both, even for a server it had to kill, and the next start removes those of a
killed run.

``http_port=None`` starts the server without its HTTP endpoint (``--allow-http false``;
readiness is then asked over gRPC): the bundled server's HTTP JSON parser recurses on nested
brackets, and one request of 200,000 ``[`` crashes the whole server. With an ``http_port``
the server's own HTTP endpoint listens on a private port, and ``http_port`` is a bounded proxy
(:mod:`.http_guard`: body size and JSON nesting checked before anything is forwarded). A server that died is
started again in the same workspace by :meth:`LocalServer.restart`;
:meth:`LocalServer.death_cause` says why it died from its exit status and what its log
wrote after it was ready (never an earlier line, such as the CUDA driver error the CPU
server logs at start).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import venv
from dataclasses import dataclass
from pathlib import Path

from cips_deploy.contracts.limits import regular_file
from cips_deploy.errors import CipsError

from .cache import cache_root

HOST = "127.0.0.1"  # loopback only, ever: serving beyond this machine is the Triton container's job
WORKSPACE_PREFIX = "cips-triton."
SHM = Path("/dev/shm")
SHM_PREFIX = "cips_triton_"  # + "<pid>_<workspace>_": the Python backend's shared-memory regions
STUB_NUMPY = "numpy<2"
_BACKEND_LINE = re.compile(r'^\s*(backend|platform)\s*:\s*"([^"]*)"', re.MULTILINE)
_PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "ensemble": None}


@dataclass(frozen=True)
class ServerInstall:
    """A tritonserver binary and where its backends live."""

    binary: Path
    backends: Path  # folder with one subfolder per backend (python/, onnxruntime/, ...)
    stub: Path | None  # the Python backend stub for this interpreter, when it must be placed
    libraries: tuple[Path, ...]  # extra folders for LD_LIBRARY_PATH
    bundled: bool

    def available_backends(self) -> set[str]:
        if not self.backends.is_dir():
            return set()
        return {entry.name for entry in self.backends.iterdir() if entry.is_dir()}


def find_server() -> ServerInstall:
    """The bundled server of ``nvidia-pytriton``, else ``tritonserver`` on PATH; one sentence if neither."""
    spec = importlib.util.find_spec("pytriton")  # finds without importing (pytriton's import needs gevent)
    if spec is not None and spec.submodule_search_locations:
        root = Path(list(spec.submodule_search_locations)[0])
        dist = root / "tritonserver"
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if (dist / "bin" / "tritonserver").is_file():
            if not stub.is_file():
                raise CipsError(f"The bundled Triton server has no Python backend stub for Python {version}.")
            return ServerInstall(dist / "bin" / "tritonserver", dist / "backends", stub,
                                 (root.parent / "nvidia_pytriton.libs",), bundled=True)
    found = shutil.which("tritonserver")
    if found is not None:
        binary = Path(found).resolve()
        return ServerInstall(binary, binary.parent.parent / "backends", None, (), bundled=False)
    raise CipsError(
        "No Triton server found: install the CPU one bundled in nvidia-pytriton "
        '(pip install "cips-deploy[serve]", or pip install --no-deps nvidia-pytriton==0.7.0) or put tritonserver on PATH.'
    )


def missing_backends(repo: Path, install: ServerInstall) -> list[str]:
    """``model (backend)`` for every model in ``repo`` whose backend this server lacks."""
    available = install.available_backends()
    missing = []
    for config in sorted(Path(repo).glob("*/config.pbtxt")):
        for field, value in _BACKEND_LINE.findall(read_config(config)):
            backend = _PLATFORM_BACKENDS.get(value, value) if field == "platform" else value
            if backend is not None and backend not in available:
                missing.append(f"{config.parent.name} ({backend})")
    return missing


MAX_CONFIG_BYTES = 4 << 20  # a model's config.pbtxt; ours are a few KB


def read_config(config: Path) -> str:
    """The text of a repository's ``config.pbtxt``: a regular file (a FIFO would block serve
    forever, a link to a device would never end) of at most :data:`MAX_CONFIG_BYTES`."""
    regular_file(config, "Triton model config")
    try:
        with open(config, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise CipsError(f"Cannot read the Triton model config {config}: {error.strerror or error}.") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise CipsError(f"The Triton model config {config} is more than {MAX_CONFIG_BYTES:,} bytes, so it is no model config.")
    return data.decode("utf-8", errors="replace")


def check_port(port: int, what: str) -> None:
    """A port number that this machine's loopback address has free."""
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise CipsError(f"The {what} port must be a number from 1 to 65535, not {port!r}.")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server binds: connections of a server that just died (TIME_WAIT) do not hold
        # the port, a listening socket does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            raise CipsError(f"Port {port} on {HOST} is in use; pass another --{what}-port.") from None


def stub_environment() -> Path:
    """The folder whose ``bin/python3`` the Python backend's stub takes its packages from.

    This environment itself when its numpy is older than 2; otherwise a cached environment
    (``<cache>/triton-stub/pyX.Y``) made once with pip: numpy < 2 first, then this
    environment's site-packages (onnxruntime) through a ``.pth`` file.
    """
    import numpy

    if int(numpy.__version__.split(".")[0]) < 2:
        return Path(sys.executable).parent.parent
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    target = cache_root() / "triton-stub" / f"py{version}-{_interpreter_tag()}"
    if (target / "ready").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".stub.", suffix=".partial", dir=target.parent))
    try:
        venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(stage)
        site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(stage), "platbase": str(stage)}))
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-conflicts",
                   "--no-input", "--target", str(site_packages), STUB_NUMPY]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            said = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise CipsError(
                f"Cannot prepare the environment of Triton's Python backend (it needs {STUB_NUMPY}, this one has numpy "
                f"{numpy.__version__}): pip said {said!r}."
            )
        parents = [path for path in _site_dirs() if Path(path).resolve() != site_packages.resolve()]
        lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in parents)
        (site_packages / "zz_cips_deploy_parent.pth").write_text(lines)
        (stage / "ready").write_text(f"{STUB_NUMPY} for {sys.executable}\n")
        try:
            os.rename(stage, target)
        except OSError:  # another process made it meanwhile
            if not (target / "ready").is_file():
                raise
        return target
    except subprocess.TimeoutExpired:
        raise CipsError("Preparing the environment of Triton's Python backend timed out (pip ran 10 minutes).") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class LocalServer:
    """``tritonserver`` on ``repo`` at 127.0.0.1; use as a context manager or start()/stop().

    ``workspace``: a folder made by :func:`new_workspace` (it is removed by :meth:`stop`);
    None makes one.
    """

    def __init__(self, repo: str | Path, *, http_port: int | None = 8000, grpc_port: int = 8001,
                 workspace: Path | None = None, install: ServerInstall | None = None,
                 startup_timeout: float = 120.0) -> None:
        self.repo = Path(repo)
        self.http_port, self.grpc_port = http_port, grpc_port  # http_port None: no HTTP endpoint at all
        self.install = install
        self.startup_timeout = startup_timeout
        self.workspace = workspace
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._ready_at = 0  # bytes of the log written before the server was ready
        self._command: list[str] = []
        self._env: dict[str, str] = {}
        self._guard = None  # the HTTP proxy on http_port (http_guard.GuardedHttp)
        self._inner_http_port: int | None = None  # the server's own HTTP port, behind the proxy

    @property
    def http_url(self) -> str | None:
        return None if self.http_port is None else f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def __enter__(self) -> "LocalServer":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Check, prepare, launch and wait until every model is ready (or say why not)."""
        if not (self.repo / ".").is_dir():
            raise CipsError(f"No such Triton model repository: {self.repo}.")
        if not any(self.repo.glob("*/config.pbtxt")):
            raise CipsError(f"{self.repo} holds no Triton model (no <model>/config.pbtxt).")
        if self.http_port is not None:
            check_port(self.http_port, "http")
        check_port(self.grpc_port, "grpc")
        if self.http_port == self.grpc_port:
            raise CipsError("The HTTP and gRPC ports must differ.")
        install = self.install or find_server()
        missing = missing_backends(self.repo, install)
        if missing:
            raise CipsError(
                f"This Triton server has no backend for {', '.join(missing)}: export with --triton-backend python for "
                "a CPU server, or serve the repository in NVIDIA's Triton container (docs/serving.md)."
            )
        if self.workspace is None:
            self.workspace = new_workspace()
        if self.http_port is not None and self._guard is None:
            from .http_guard import GuardedHttp, free_port

            self._inner_http_port = free_port(HOST)
            try:
                self._guard = GuardedHttp(HOST, self.http_port, self._inner_http_port)
            except OSError as error:
                raise CipsError(f"Cannot offer HTTP on {HOST}:{self.http_port}: {error.strerror or error}.") from None
            self._guard.start()
        self._command, self._env = self._prepare(install)
        self._launch()

    def restart(self) -> None:
        """Start the server again in the same workspace, after it died (or was stopped with
        :meth:`end`): what it left (stubs, shared memory) goes first, and its ports must be free."""
        self.end()
        if self._inner_http_port is not None:  # the proxy keeps http_port; the server gets its own back
            check_port(self._inner_http_port, "http")
        check_port(self.grpc_port, "grpc")
        self._launch()

    def _prepare(self, install: ServerInstall) -> tuple[list[str], dict[str, str]]:
        """The server's command line and environment (the stub's libraries and packages)."""
        backends = self._backend_folder(install)
        environment = stub_environment()
        env = dict(os.environ)
        libraries = [sysconfig.get_config_var("LIBDIR") or "", *map(str, install.libraries), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(path for path in libraries if path)
        env["PATH"] = os.pathsep.join([str(environment / "bin"), env.get("PATH", "")])
        env.pop("PYTHONHOME", None)
        env["TMPDIR"] = str(self.workspace / "tmp")  # tritonserver writes a .ses file there
        (self.workspace / "tmp").mkdir(exist_ok=True)
        command = [
            str(install.binary), "--model-repository", str(self.repo.resolve()), "--backend-directory", str(backends),
            "--grpc-address", HOST, "--grpc-port", str(self.grpc_port),
            "--allow-metrics", "false", "--exit-timeout-secs", "5", "--strict-readiness", "true",
            # Named after the workspace, so that stop() can remove the regions of a killed server.
            "--backend-config", f"python,shm-region-prefix-name={self._shm_prefix()}",
        ]
        if self._inner_http_port is None:
            command += ["--allow-http", "false"]
        else:
            command += ["--http-address", HOST, "--http-port", str(self._inner_http_port)]
        return command, env

    def _launch(self) -> None:
        self.log_path = self.workspace / "server.log"
        self._ready_at = 0
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self._command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=self._env, start_new_session=True, preexec_fn=_die_with_parent)
        self._wait_until_ready()
        self._ready_at = self.log_path.stat().st_size

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """End the server and its stubs (SIGTERM, then SIGKILL after 10 s) and remove the workspace."""
        self.end()
        if self._guard is not None:
            self._guard.stop()
            self._guard = None
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None

    def end(self) -> None:
        """End the server's whole process group (a dead server's stubs too) and remove its
        shared-memory regions; the workspace stays (:meth:`restart` uses it)."""
        process, self.process = self.process, None
        if process is not None:
            for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    pass
                if _wait_group(process, grace):
                    break
        if self.workspace is not None:
            _remove_shared_memory(self._shm_prefix())  # a server that had to be killed leaves them

    def death_cause(self) -> str:
        """Why a server that was ready has ended, from what it says itself: its exit status
        (a signal by name) and the most telling line its log wrote after it was ready (a crash
        handler's, else the first error); a stack overflow writes none, and none is made up."""
        code = self.process.poll() if self.process is not None else None
        if code is None:
            status = "it is still running"
        elif code < 0:
            status = f"it was ended by signal {_signal_name(-code)}"
        else:
            status = f"it exited with status {code}"
        said = _telling_line(self._log_since_ready())
        return f"{status}; its log says: {said}" if said else f"{status}; its log says nothing about why"

    def _log_since_ready(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(self._ready_at)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # ----------------------------------------------------------------------- internals

    def _shm_prefix(self) -> str:
        """``cips_triton_<pid>_<workspace suffix>_``: unique to this server, and names its owner."""
        return SHM_PREFIX + self.workspace.name[len(WORKSPACE_PREFIX):].replace(".", "_") + "_"

    def _backend_folder(self, install: ServerInstall) -> Path:
        """The bundled server's backends with this interpreter's stub beside libtriton_python.so."""
        if install.stub is None:
            return install.backends
        folder = self.workspace / "backends"
        for backend in install.backends.iterdir():
            if backend.is_dir():
                shutil.copytree(backend, folder / backend.name, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(install.stub, folder / "python" / "triton_python_backend_stub")
        return folder

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CipsError(f"The Triton server stopped while starting: {self._failure()}")
            if self._ready():
                return
            time.sleep(0.2)
        raise CipsError(f"The Triton server was not ready within {self.startup_timeout:.0f} s: {self._failure()}")

    def _ready(self) -> bool:
        """Whether every model is ready: asked over HTTP, else over gRPC (without tritonclient,
        the log's line that the gRPC service started, which Triton writes once the models are loaded)."""
        if self._inner_http_port is not None:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self._inner_http_port}/v2/health/ready", timeout=1.0) as response:
                    return response.status == 200
            except (urllib.error.URLError, OSError):
                return False
        try:
            import tritonclient.grpc as grpcclient
        except ImportError:
            text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
            return f"Started GRPCInferenceService at {self.grpc_url}" in text
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            return bool(client.is_server_ready(client_timeout=1.0))
        except Exception:  # not listening yet, or not ready: asked again shortly
            return False
        finally:
            client.close()

    def _failure(self) -> str:
        """The most telling line of the server's log, as part of one sentence."""
        text = self.log_path.read_text(errors="replace") if self.log_path and self.log_path.is_file() else ""
        ours = re.search(r"cips-deploy refuses to load this model: ([^\"\n]*)", text)
        if ours:
            return ours.group(1).rstrip(".") + "."
        for pattern in (r"failed to load '([^']*)'.*?: (.*)", r"E\d{4} [\d:. ]+\d+ [\w.]+:\d+\] \"?(.*)"):
            found = [match for match in re.findall(pattern, text) if not _no_gpu(str(match))]
            if found:
                last = found[-1]
                return (" ".join(last) if isinstance(last, tuple) else last).strip().strip('"') + "."
        return "its log says nothing more."


# What a server writes when it dies, most telling first (its own crash handler, then errors).
_DEATH_LINES = (re.compile(r"Signal \(\d+\) received.*"), re.compile(r"(?:terminate called|what\(\)).*"),
                re.compile(r"^E\d{4} [\d:. ]+\d+ [\w.]+:\d+\] \"?(.*)", re.MULTILINE))


# A CPU server logs these at every start (no GPU driver): errors in form, never the cause of a failure.
_NO_GPU_LINES = ("CUDA driver version is insufficient", "CudaDriverHelper has not been initialized")


def _no_gpu(line: str) -> bool:
    return any(text in line for text in _NO_GPU_LINES)


def _telling_line(text: str) -> str:
    """The first line of ``text`` (a log since the server was ready) that says why it ended."""
    for pattern in _DEATH_LINES:
        for found in pattern.finditer(text):
            line = (found.group(1) if found.groups() else found.group(0)).strip().strip('"')
            if not _no_gpu(line):
                return line
    return ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def new_workspace() -> Path:
    """A fresh workspace folder in the system's temporary folder; stale ones of dead runs are removed first."""
    root = Path(tempfile.gettempdir())
    for stale in root.glob(WORKSPACE_PREFIX + "*"):
        pid = stale.name[len(WORKSPACE_PREFIX):].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    for region in SHM.glob(SHM_PREFIX + "*") if SHM.is_dir() else ():
        pid = region.name[len(SHM_PREFIX):].split("_", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            region.unlink(missing_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}.", dir=root))


def _remove_shared_memory(prefix: str) -> None:
    if SHM.is_dir():
        for region in SHM.glob(prefix + "*"):
            try:
                region.unlink()
            except OSError:
                pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_group(process: subprocess.Popen, grace: float) -> bool:
    """Wait until the server and every process of its group are gone; False after ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            if process.returncode is None:
                process.wait(timeout=1.0)
            return True
        time.sleep(0.05)
    return False


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _interpreter_tag() -> str:
    """Distinguishes interpreters of the same version (a stub environment is bound to one)."""
    import hashlib

    return hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:12]


def _site_dirs() -> list[str]:
    import site

    return [path for path in site.getsitepackages() if Path(path).is_dir()]
