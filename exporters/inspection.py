"""``cips-deploy inspect`` for what the exporters write: ONNX engines, TensorRT plans, Triton
model repositories, web sites and engine folders. Torch-free (numpy and the standard library;
checkpoints are described by the command itself, which needs the build extra for them).

Each function returns plain JSON-able facts:

- :func:`onnx_facts`: the graph (:mod:`.inspect_onnx`: IR version, producer, opsets, inputs
  and outputs with dynamic axes, operator histogram, initializers), the cips-deploy metadata
  (:mod:`.metadata`: role, config, coordinate space, source and weights hashes, package
  version; the precision and quality report that reduced-precision exports add), the content
  hash checked (:mod:`.integrity`), the engines beside it, and the model's parameters and
  FLOPs per point, asked of its family (:func:`model_facts`);
- :func:`plan_facts`: the sidecar of a ``.plan`` (TensorRT version, GPU, precision, profile,
  metadata) and, where ``tensorrt`` is installed, the plan's own I/O tensors and profiles;
- :func:`triton_facts`, :func:`site_facts`, :func:`folder_facts`: every model of a repository,
  the manifest of a site, every engine of a folder, with sizes on disk.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from cips_deploy.contracts.limits import parse_json, regular_file
from cips_deploy.errors import CipsError
from cips_deploy.runtime.hashing import file_sha256

from . import integrity
from .engine_files import grid_engine_files, mapping_path_for, spatial_path_for
from .inspect_onnx import onnx_graph_facts
from .metadata import PRECISION_KEY, PREFIX, QUALITY_KEY, EngineMetadata, read_onnx_props

MAX_TEXT_BYTES = 16 << 20  # a sidecar or config.pbtxt (w_avg and the config: a few kB; far below this)
ENGINE_SUFFIXES = (".onnx", ".plan")


def size_on_disk(paths: list[Path]) -> int:
    return sum(path.stat().st_size for path in paths if path.is_file())


def onnx_facts(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Everything ``inspect`` says about one ONNX file (any ONNX model; ours have metadata too)."""
    path = regular_file(path, "ONNX model")
    graph = onnx_graph_facts(path)
    props = read_onnx_props(path)
    external = [path.parent / name for name in graph["initializers"]["external_files"]]
    facts: dict[str, Any] = {
        "file": str(path),
        "format": "ONNX model",
        "size_bytes": size_on_disk([path, *external]),
        **{key: graph[key] for key in ("ir_version", "producer", "opsets", "inputs", "outputs")},
        "nodes": graph["nodes"],
        "operators": graph["operators"],
        "initializers": graph["initializers"],
    }
    try:
        meta = EngineMetadata.from_strings(props, source=str(path))
    except CipsError as error:  # not ours (or damaged): the graph facts still stand
        facts["note"] = str(error)
        return facts
    facts["engine"] = f"ONNX {meta.role} engine, opset {meta.opset}"
    facts.update(metadata_facts(meta, props))
    if verify:
        facts["content_hash"] = _content_check(path)
    facts["engines_beside_it"] = ", ".join(_beside(path)) or "none"
    facts.update(model_facts(meta.config))
    return facts


def config_facts(config: Any) -> dict[str, Any]:
    """The config's rows as ``info`` has always shown them."""
    return {
        "coordinate_space": config.coordinate_space,
        "training_resolution": config.size,
        "hidden": config.hidden,
        "style_dim": config.style_dim,
        "mapping_layers": config.n_mlp,
        "channel_multiplier": config.channel_multiplier,
        "block_widths": list(config.widths),
    }


def metadata_facts(meta: EngineMetadata, props: dict[str, str]) -> dict[str, Any]:
    """The cips-deploy description of an engine (``props``: its raw metadata, for the precision)."""
    return {
        "role": meta.role,
        "architecture": meta.config.arch_name,
        "family": meta.config.family.name,
        **config_facts(meta.config),
        "style_input": "w [B, N, S] (one style per point)" if meta.spatial_style else "w [B, S]",
        "config": meta.config.to_dict(),
        "precision": props.get(PRECISION_KEY, "fp32"),
        "quality": quality_facts(props.get(QUALITY_KEY), "the engine"),
        "source_file": meta.source_file or None,
        "source_sha256": meta.source_sha256 or None,
        "weights_sha256": meta.weights_sha256,
        "package_version": meta.package_version,
        "exported_by": f"cips-deploy {meta.package_version}",
        "provenance": meta.provenance,
    }


def quality_facts(text: str | None, source: str) -> dict[str, Any] | None:
    """The stored quality report (``exporters/quality.py``) in short: worst PSNR, largest error, verdict."""
    if not text:
        return None
    report = parse_json(text, f"The quality report of {source}")
    try:
        psnr = [float(x) for x in report["psnr_db"]]
        errors = [float(x) for x in report["max_abs"]]
        threshold = report.get("min_psnr")
        return {
            "mode": report["mode"], "seeds": list(report["seeds"]), "side": report["side"],
            "worst_psnr_db": min(psnr), "max_abs_error": max(errors), "min_psnr_db": threshold,
            "passed": threshold is None or min(psnr) >= float(threshold),
        }
    except (KeyError, TypeError, ValueError):
        raise CipsError(f"{source} has a damaged quality report in its metadata; export it again.") from None


def model_facts(config: Any) -> dict[str, Any]:
    """Parameters and FLOPs per point of ``config``'s model, asked of its family's generator
    (built on torch's meta device: no memory, no weights). Without torch: a note says so."""
    if importlib.util.find_spec("torch") is None:
        return {"parameters": None, "flops_per_point": None,
                "note": "parameters and FLOPs are computed by the model family, which needs PyTorch (the build extra)"}
    import torch

    from cips_deploy.families.generator import Generator

    with torch.device("meta"):
        generator = Generator(config)
    return {
        "parameters": generator.num_parameters,
        "flops_per_point": generator.flops_per_point(),
        f"grid_flops_per_pixel_at_{config.size}x{config.size}": round(generator.grid_flops_per_point(config.size, config.size)),
        **config.family.facts(config),
        **generator.info_facts(),
    }


def _content_check(path: Path) -> str:
    try:
        integrity.verify(path, required=True)
    except CipsError as error:
        text = str(error)
        return "not recorded" if "carries no content hash" in text else f"FAILED: {text}"
    return "verified"


def _beside(path: Path) -> list[str]:
    found = [name for name, file in (("mapping", mapping_path_for(path)), ("spatial", spatial_path_for(path)))
             if file.is_file() and file != path]
    return found + list(grid_engine_files(path) or {})


# --------------------------------------------------------------------------- TensorRT plans

def plan_facts(path: str | Path) -> dict[str, Any]:
    """A ``.plan``: its sidecar (always) and, with ``tensorrt`` installed, the plan's own tensors."""
    path = regular_file(path, "engine")
    sidecar_file = path.with_name(path.name + ".json")
    if not sidecar_file.is_file():
        raise CipsError(f"{path} has no sidecar {sidecar_file.name}, so it cannot be described; build it again with cips-deploy.")
    sidecar = parse_json(read_text(sidecar_file, "TensorRT sidecar"), f"The sidecar {sidecar_file.name}", MAX_TEXT_BYTES)
    if not isinstance(sidecar, dict) or sidecar.get("format") != "cips-deploy/tensorrt-engine":
        raise CipsError(f"{sidecar_file} is not a cips-deploy TensorRT sidecar.")
    props = sidecar.get("metadata") or {}
    meta = EngineMetadata.from_strings(props, source=str(path))
    facts = {
        "file": str(path),
        "format": "TensorRT plan",
        "size_bytes": size_on_disk([path, sidecar_file]),
        "tensorrt_version": sidecar.get("tensorrt_version"),
        "gpu": sidecar.get("gpu"),
        "precision": sidecar.get("precision"),
        "profile": sidecar.get("profile"),
        "profiles": sidecar.get("profiles"),  # every optimization profile; the runtime picks one per request
        "max_batch": sidecar.get("max_batch"),
        "chunk_size": sidecar.get("chunk_size"),
        "io": sidecar.get("io"),
        "plan_sha256": "matches the sidecar" if file_sha256(path) == sidecar.get("plan_sha256") else "DIFFERS from the sidecar",
        **metadata_facts(meta, props),
        "engines_beside_it": ", ".join(_beside(path)) or "none",
        **model_facts(meta.config),
    }
    facts["precision"] = sidecar.get("precision")  # the plan's kernels, not the ONNX it was built from
    facts["tensorrt_engine"] = _tensorrt_engine(path)
    return facts


def _tensorrt_engine(path: Path) -> dict[str, Any]:
    """The plan's I/O tensors and profiles as TensorRT 10 reads them; why not, where it cannot."""
    if importlib.util.find_spec("tensorrt") is None:
        return {"skipped": "tensorrt is not installed, so the plan itself was not read (the facts above are its sidecar's)"}
    try:
        import tensorrt as trt

        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            return {"skipped": "TensorRT could not deserialize the plan on this machine (another TensorRT or GPU)"}
        tensors = []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            entry = {"name": name, "mode": str(engine.get_tensor_mode(name)).rsplit(".", 1)[-1].lower(),
                     "dtype": str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1].lower(),
                     "shape": list(engine.get_tensor_shape(name))}
            if entry["mode"] == "input":
                entry["profiles"] = [[list(shape) for shape in engine.get_tensor_profile_shape(name, k)]
                                     for k in range(engine.num_optimization_profiles)]  # [min, opt, max] of each
            tensors.append(entry)
        return {"tensors": tensors, "profiles": engine.num_optimization_profiles}
    except Exception as error:  # noqa: BLE001 - a GPU-less machine, a driver: the sidecar's facts stand
        return {"skipped": f"TensorRT could not read the plan here ({type(error).__name__}: {str(error)[:200]})"}


# --------------------------------------------------------------------------- folders

def read_text(path: Path, what: str) -> str:
    with open(regular_file(path, what), "rb") as handle:
        data = handle.read(MAX_TEXT_BYTES + 1)
    if len(data) > MAX_TEXT_BYTES:
        raise CipsError(f"{path} is larger than a {what} can be.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CipsError(f"{path} is not a text file, so it is no {what}.") from None


def is_triton_repository(folder: Path) -> bool:
    return any(folder.glob("*/config.pbtxt"))


def triton_facts(folder: Path) -> dict[str, Any]:
    """Every model of a Triton repository: its config (backend, batching, I/O, cips metadata)
    and its version folders' files."""
    models, files = [], []
    for config_file in sorted(folder.glob("*/config.pbtxt")):
        config = parse_pbtxt(read_text(config_file, "Triton model config"))
        model_folder = config_file.parent
        versions = {}
        for version in sorted(p for p in model_folder.iterdir() if p.is_dir() and p.name.isdigit()):
            entries = sorted(p for p in version.rglob("*") if p.is_file())
            files += entries
            versions[version.name] = [{"file": p.relative_to(version).as_posix(), "size_bytes": p.stat().st_size}
                                      for p in entries]
        meta = None
        if config["parameters"].get(PREFIX + "format"):
            meta = EngineMetadata.from_strings(config["parameters"], source=str(config_file))
        engine = next((p for p in model_folder.glob("*/model.onnx")), None)
        models.append({
            "name": config.get("name") or model_folder.name,
            "backend": config.get("backend") or config.get("platform"),
            "max_batch_size": config.get("max_batch_size"),
            "inputs": config["inputs"], "outputs": config["outputs"],
            "role": meta.role if meta else ("ensemble" if config.get("platform") == "ensemble" else None),
            "weights_sha256": meta.weights_sha256 if meta else None,
            "precision": config["parameters"].get(PRECISION_KEY, "fp32") if meta else None,
            "versions": versions,
            "engine_operators": onnx_graph_facts(engine)["nodes"] if engine is not None else None,
        })
        files.append(config_file)
    return {"file": str(folder), "format": "Triton model repository", "size_bytes": size_on_disk(files), "models": models}


_BLOCK = re.compile(r"\b(input|output)\s*\[(.*?)\n\]", re.DOTALL)
_ENTRY = re.compile(r"\{(.*?)\}", re.DOTALL)
_PARAMETER = re.compile(r'parameters\s*\{\s*key:\s*"((?:[^"\\]|\\.)*)"\s*value:\s*\{\s*string_value:\s*"((?:[^"\\]|\\.)*)"\s*\}\s*\}')


def parse_pbtxt(text: str) -> dict[str, Any]:
    """The few fields of a Triton ``config.pbtxt`` that ``inspect`` shows (as the exporter writes them)."""
    config: dict[str, Any] = {"inputs": [], "outputs": [], "parameters": {}}
    for key in ("name", "backend", "platform"):
        found = re.search(rf'^{key}:\s*"([^"]*)"', text, re.MULTILINE)
        if found:
            config[key] = found.group(1)
    found = re.search(r"^max_batch_size:\s*(\d+)", text, re.MULTILINE)
    if found:
        config["max_batch_size"] = int(found.group(1))
    for kind, body in _BLOCK.findall(text):
        for entry in _ENTRY.findall(body):
            name = re.search(r'name:\s*"([^"]*)"', entry)
            dtype = re.search(r"data_type:\s*(\w+)", entry)
            dims = re.search(r"dims:\s*\[([^\]]*)\]", entry)
            config[kind + "s"].append({
                "name": name.group(1) if name else None,
                "dtype": dtype.group(1) if dtype else None,
                "dims": [int(x) for x in dims.group(1).split(",") if x.strip()] if dims else None,
            })
    for key, value in _PARAMETER.findall(text):
        try:
            config["parameters"][json.loads(f'"{key}"')] = json.loads(f'"{value}"')
        except json.JSONDecodeError:
            raise CipsError(f"A parameter of the Triton config {config.get('name')!r} is not a readable string.") from None
    return config


def site_facts(folder: Path) -> dict[str, Any]:
    """An exported web site: its manifest (model, engines, render rules, runtime) and each engine's graph."""
    from .web.site import read_capped

    manifest = parse_json(read_capped(folder / "manifest.json", "site manifest"), "The site manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("engines", {}), dict):
        raise CipsError(f"{folder / 'manifest.json'} is not a site manifest this cips-deploy reads.")
    engines = {}
    for role, entry in (manifest.get("engines") or {}).items():
        if not isinstance(entry, dict):
            continue
        file = folder / str(entry.get("file", ""))
        inside = file.resolve().is_relative_to(folder.resolve())
        present = inside and file.is_file()
        engines[role] = {
            "file": entry.get("file"), "size_bytes": entry.get("bytes"),
            "sha256": ("matches the manifest" if file_sha256(file) == entry.get("sha256") else "DIFFERS from the manifest")
            if present else "missing",
            "inputs": entry.get("inputs"), "outputs": entry.get("outputs"),
        }
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    return {
        "file": str(folder),
        "format": "cips-deploy web site",
        "size_bytes": size_on_disk([p for p in folder.rglob("*")]),
        "package_version": manifest.get("package_version"),
        "model": {key: model.get(key) for key in ("name", "family", "arch", "coordinate_space", "style_dim", "z_dim",
                                                  "source_file", "source_sha256", "weights_sha256")},
        "engines": engines,
        "render": manifest.get("render"),
        "runtime": {key: value for key, value in runtime.items() if key != "sha256"} if isinstance(runtime := manifest.get("runtime"), dict) else None,
    }


def folder_facts(folder: Path) -> dict[str, Any]:
    """An engine folder: every ``.onnx`` and ``.plan`` in it, each described."""
    engines = sorted(p for p in folder.iterdir() if p.suffix in ENGINE_SUFFIXES and p.is_file())
    if not engines:
        raise CipsError(
            f"{folder} is no Triton repository, web site or engine folder: it holds no config.pbtxt, manifest.json, "
            ".onnx or .plan file."
        )
    described = [onnx_facts(p) if p.suffix == ".onnx" else plan_facts(p) for p in engines]
    provenance = {}
    for facts in described:  # the same model's, as a rule: said once, not per engine
        provenance = facts.pop("provenance", None) or provenance
    return {"file": str(folder), "format": "engine folder", "size_bytes": sum(d["size_bytes"] for d in described),
            "engines": described, "provenance": provenance}
