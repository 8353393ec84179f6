"""``cips-deploy export --engine web``: a static site whose page synthesises the model itself.

    site/
      index.html, page.js, worker.js, numerics.js    the page (exporters/web/page/)
      manifest.json                                  the model, its engines and the render rules
      engines/mapping.onnx, synthesis.onnx           z -> w, (coords, w) -> rgb
      engines/lines.onnx, compose.onnx               line-factored models (CREPS): grids by lines
      ort/ort.wasm.min.mjs, ort-wasm-simd-threaded.{mjs,wasm}
                                                     onnxruntime-web, with --web-runtime DIR

The engines are the exported ONNX engines, copied after their content hashes are checked (a
checkpoint is exported first, which needs the build extra; the bundled demo ships its engines,
so the torch-free install exports its site). The page checks each engine's SHA-256 from the
manifest before it creates a session. Without ``--web-runtime`` the page loads the pinned
onnxruntime-web from a public CDN and says so when it cannot. docs/web.md has the rest.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cips_deploy._version import __version__
from cips_deploy.contracts.families import family_of
from cips_deploy.contracts.footprint import render_bytes_per_point
from cips_deploy.contracts.limits import MAX_JSON_BYTES, parse_json, regular_file
from cips_deploy.errors import CipsError
from cips_deploy.runtime.atomic import replace_folder, staging_folder, write_failure
from cips_deploy.runtime.hashing import file_sha256
from cips_deploy.runtime.plugin_manager import get_registry
from cips_deploy.runtime.render_request import MAX_SIDE

from .. import integrity
from ..engine_files import grid_engine_files, mapping_path_for
from ..grid_runtime import GROUP_VALUES
from ..metadata import EngineMetadata, read_onnx_metadata
from ..spec import LINES, MAPPING, SYNTHESIS

PAGE = Path(__file__).with_name("page")
PAGE_FILES = ("index.html", "page.js", "worker.js", "numerics.js")
SITE_FORMAT = "cips-deploy/web-site"
SITE_FORMAT_VERSION = 1

# onnxruntime-web: the version the page is tested with, its files, and where the page finds
# it without --web-runtime. The ESM build of the WebAssembly backend and its threaded module.
RUNTIME_PACKAGE = "onnxruntime-web"
RUNTIME_VERSION = "1.30.0"
RUNTIME_MODULE = "ort.wasm.min.mjs"
RUNTIME_FILES = (RUNTIME_MODULE, "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
RUNTIME_CDN = f"https://cdn.jsdelivr.net/npm/{RUNTIME_PACKAGE}@{RUNTIME_VERSION}/dist/"
MAX_RUNTIME_FILE = 256 << 20  # the .wasm is 14 MB; anything far larger is not onnxruntime-web

# Working memory per chunk, as the Python onnxruntime backend on a CPU (its 32 MB rule).
CHUNK_BYTES = 32 << 20
# The most pixels one render of the page holds (RGBA): 128 MB, a 4K canvas four times over.
MAX_PAGE_PIXELS = 1 << 25
TOPOLOGIES = ("flat", "cylinder")  # the grid topologies the page lays out itself


@dataclass
class SiteReport:
    """What ``export --engine web`` wrote, for the command to print."""

    folder: Path
    engines: dict[str, int]
    runtime: str

    def format(self) -> str:
        engines = ", ".join(f"{role} ({size / 2**20:.1f} MB)" for role, size in self.engines.items())
        return (
            f"Web site in {self.folder}: engines {engines}; {self.runtime}.\n"
            f"Serve it with: cips-deploy serve-web {self.folder}"
        )


@dataclass
class SiteSummary:
    files: list[Path] = field(default_factory=list)
    report: SiteReport | None = None


def write_site(engine: Path, output: Path, *, web_runtime: Path | None, overwrite: bool) -> SiteSummary:
    """Write the site for the exported engine ``engine`` (``model.onnx`` with its siblings) to ``output``."""
    output = Path(output)
    check_site_destination(output, overwrite=overwrite)
    runtime_files, runtime = runtime_source(web_runtime)
    engines, metadata = site_engines(Path(engine))
    stage = staging_folder(output.parent, output.name)
    try:
        for name in PAGE_FILES:
            shutil.copyfile(PAGE / name, stage / name)
        (stage / "engines").mkdir()
        copies = {role: stage / "engines" / f"{role}.onnx" for role in engines}
        for role, path in engines.items():
            shutil.copyfile(path, copies[role])
            try:  # the copy is what the page fetches: it must still be the engine that was checked
                integrity.verify(copies[role], required=True)
            except CipsError:
                raise CipsError(f"{path} changed while it was being copied; export the site again.") from None
        if runtime_files:
            (stage / "ort").mkdir()
            for path in runtime_files:
                shutil.copyfile(path, stage / "ort" / path.name)
        manifest = site_manifest(Path(engine).stem, copies, metadata, runtime, stage)
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        replace_folder(stage, output)
    except BaseException as error:
        shutil.rmtree(stage, ignore_errors=True)
        problem = write_failure(error, output, output.parent)
        if problem is not None:
            raise problem from None
        raise
    sizes = {role: path.stat().st_size for role, path in engines.items()}
    where = f"{RUNTIME_PACKAGE} {runtime['version']} in ort/" if runtime_files else f"{RUNTIME_PACKAGE} {RUNTIME_VERSION} from {RUNTIME_CDN}"
    return SiteSummary([output], SiteReport(output, sizes, where))


def check_site_destination(output: Path, *, overwrite: bool) -> None:
    """Refuse a destination that must not be replaced, before any work.

    An existing folder is replaced only with ``--force``, and only when it is a site this
    tool wrote (its manifest.json says so): the user's own folder is never removed."""
    parent = output.parent
    if not parent.is_dir():
        raise CipsError(f"Cannot write {output}: the folder {parent} does not exist.")
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise CipsError(f"Cannot write the site to {output}: it exists and is not a folder.")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise CipsError(f"{output} already exists; pass --force to replace the site in it.")
        if not is_site(output):
            raise CipsError(
                f"{output} is not a site cips-deploy wrote (no manifest.json of one), so --force will not remove it; "
                "choose a new folder."
            )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CipsError(f"Cannot write {output}: the folder {parent} is not writable.")


def is_site(folder: Path) -> bool:
    """Whether ``folder`` holds a site this tool exported (its manifest names the format)."""
    try:
        manifest = parse_json(read_capped(folder / "manifest.json", "site manifest"), "site manifest")
    except (CipsError, OSError, UnicodeDecodeError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == SITE_FORMAT


def runtime_source(web_runtime: Path | None) -> tuple[list[Path], dict[str, Any]]:
    """The onnxruntime-web files to copy (from ``--web-runtime``) and the manifest's runtime entry."""
    if web_runtime is None:
        return [], {"package": RUNTIME_PACKAGE, "version": RUNTIME_VERSION, "source": "cdn", "base": RUNTIME_CDN,
                    "module": RUNTIME_MODULE}
    folder = Path(web_runtime)
    if not folder.is_dir():
        raise CipsError(f"--web-runtime {folder} is not a folder; give node_modules/onnxruntime-web/dist.")
    files = []
    for name in RUNTIME_FILES:
        path = folder / name
        if not path.exists():
            raise CipsError(
                f"--web-runtime {folder} has no {name}; give the dist folder of the npm package "
                f"(npm install {RUNTIME_PACKAGE}@{RUNTIME_VERSION}, then node_modules/{RUNTIME_PACKAGE}/dist)."
            )
        path = regular_file(path, "onnxruntime-web file")
        if path.stat().st_size > MAX_RUNTIME_FILE:
            raise CipsError(f"{path} has {path.stat().st_size:,} bytes, more than onnxruntime-web's files ever have.")
        files.append(path)
    return files, {"package": RUNTIME_PACKAGE, "version": runtime_version(folder), "source": "local", "base": "ort/",
                   "module": RUNTIME_MODULE, "sha256": {path.name: file_sha256(path) for path in files}}


def runtime_version(dist: Path) -> str:
    """The npm package's version from ``dist/../package.json``, or "unknown"."""
    try:
        package = parse_json(read_capped(dist.parent / "package.json", "package.json"), "package.json")
    except (CipsError, OSError, UnicodeDecodeError):
        return "unknown"
    version = package.get("version") if isinstance(package, dict) else None
    return version if isinstance(version, str) and len(version) < 64 else "unknown"


def read_capped(path: Path, what: str) -> str:
    """A small JSON file's text: a regular file, at most the JSON limit (else one sentence)."""
    with open(regular_file(path, what), "rb") as handle:
        data = handle.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise CipsError(f"{path} is larger than a {what} can be.")
    return data.decode("utf-8")


def site_engines(engine: Path) -> tuple[dict[str, Path], EngineMetadata]:
    """{role: file} of the engines the page uses beside ``engine``, each verified against its
    content hash, all of the same weights, none with external data; and the synthesis metadata."""
    engine = regular_file(engine, "engine")
    if engine.suffix != ".onnx":
        raise CipsError(f"The web engine copies ONNX engines; {engine.name} is not one.")
    files = {MAPPING: mapping_path_for(engine), SYNTHESIS: engine, **(grid_engine_files(engine) or {})}
    if not files[MAPPING].is_file():
        raise CipsError(f"{engine} has no mapping engine beside it ({files[MAPPING].name}); export the checkpoint again.")
    main = read_onnx_metadata(engine)
    main.check_role(SYNTHESIS, source=str(engine))
    if main.spatial_style:
        raise CipsError(f"{engine} takes per-point styles; the page needs an engine of one style per image (export without --spatial-style).")
    if main.layer_styles:
        raise CipsError(f"{engine} takes per-layer styles; the page needs an engine of one style per image (export without --layer-styles).")
    for role, path in files.items():
        integrity.verify(path, required=True)
        if integrity.external_data_files(path):
            raise CipsError(f"{path} keeps its weights in external data files, which a page cannot load; export a model under 2 GB.")
        meta = read_onnx_metadata(path)
        meta.check_role(role, source=str(path))
        if meta.weights_sha256 != main.weights_sha256:
            raise CipsError(f"{path} belongs to a different model than {engine}; export them together again.")
    return files, main


def site_manifest(name: str, engines: dict[str, Path], meta: EngineMetadata, runtime: dict[str, Any],
                  site: Path) -> dict[str, Any]:
    """manifest.json: the model, its engines (``engines``: the copies in ``site``; file, size,
    SHA-256, input and output names), the render rules the page follows (chunk size, limits,
    topology defaults) and the runtime."""
    config = meta.config
    entries, io = {}, {}
    for role, path in engines.items():
        role_meta = read_onnx_metadata(path)
        io[role] = role_meta.io
        entries[role] = {
            "file": path.relative_to(site).as_posix(),
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
            "content_sha256": integrity.recorded_hash(path),
            "inputs": [value["name"] for value in role_meta.io["inputs"]],
            "outputs": [value["name"] for value in role_meta.io["outputs"]],
        }
    line_factored = LINES in engines
    registry = get_registry()
    topologies = {}
    for topology in TOPOLOGIES:
        item = registry.get("topology", topology).item
        topologies[topology] = {
            "coordinate_spaces": list(item.coordinate_spaces),
            "parameters": {parameter.name: parameter.default for parameter in item.parameters},
        }
    cylinder = config.coordinate_space == "cylinder"
    return {
        "format": SITE_FORMAT,
        "format_version": SITE_FORMAT_VERSION,
        "package_version": __version__,
        "model": {
            "name": name,
            "family": family_of(config.arch).name,
            "arch": config.arch,
            "config": config.to_dict(),
            "coordinate_space": config.coordinate_space,
            "z_dim": int(io[MAPPING]["inputs"][0]["shape"][1]),
            "c_dim": config.c_dim,  # a class-conditional model's classes: the page's class control, ?class=N
            "style_dim": config.style_dim,
            "w_avg": [float(value) for value in meta.w_avg],
            "source_file": meta.source_file,
            "source_sha256": meta.source_sha256,
            "weights_sha256": meta.weights_sha256,
            "provenance": meta.provenance,
        },
        "engines": entries,
        "render": {
            "seed_rule": "z = numpy.random.RandomState(seed).randn(1, z_dim), float64 then float32",
            "chunk_points": chunk_points(config, line_factored),
            "line_group": GROUP_VALUES,
            "line_features": int(io[LINES]["outputs"][0]["shape"][2]) if line_factored else 0,
            "default_topology": "cylinder" if cylinder else "flat",
            "default_size": [1024, 256] if cylinder else [512, 512],
            "max_side": MAX_SIDE,
            "max_pixels": MAX_PAGE_PIXELS,
        },
        "topologies": topologies,
        "runtime": runtime,
    }


def chunk_points(config: Any, line_factored: bool) -> int:
    """Points per chunk: 32 MB of working memory, as the Python runtime on a CPU, in multiples of 64."""
    if line_factored:
        per_point = 4 * family_of(config.arch).compose_floats_per_point(config)
    else:
        per_point = render_bytes_per_point(config)
    return max(64, CHUNK_BYTES // per_point // 64 * 64)
