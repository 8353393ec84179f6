"""The ``web`` engine of ``cips-deploy export`` and the ``serve-web`` command, as a plugin.

Registered through ``register_exporters`` and ``register_commands`` as a third party's would
be. Neither needs torch: the site is made from exported engines (the bundled demo ships its
own), and only a checkpoint given as the source is exported first, with the build extra.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from cips_deploy.contracts.exporter import Exporter
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.errors import CipsError

# The export command's settings that mean nothing for a page, with the flag that sets each.
NOT_FOR_THE_WEB = {
    "spatial_style": "--spatial-style",
    "layer_styles": "--layer-styles",
    "quantize": "--quantize",
    "min_psnr": "--min-psnr",
    "max_batch": "--max-batch",
    "chunk_size": "--chunk-size",
    "timing_cache": "--timing-cache",
    "triton_repo": "--triton-repo",
    "triton_model_name": "--name",
    "triton_backend": "--triton-backend",
    "external_data": "--external-data",
    "min_shapes": "--min-shapes",
    "opt_shapes": "--opt-shapes",
    "max_shapes": "--max-shapes",
    "builder_verbosity": "--builder-verbosity",
    "calibration_seeds": "--calibration-seeds",
    "calibration_points": "--calibration-points",
    "calibration_data": "--calibration-data",
}


class WebExporter(Exporter):
    name = "web"
    description = "a static site (-o folder) whose page synthesises the model in the browser on onnxruntime-web"
    precisions = ("fp32",)

    @property
    def default_source(self) -> Path:
        from cips_deploy.models import DEMO_ENGINE

        return DEMO_ENGINE

    def export(self, source: Path, *, output: Path | None, overwrite: bool, precision: str, **options: Any):
        from .site import write_site

        if precision not in self.precisions:  # every family: only the precision can be refused
            raise CipsError(f"The web engine copies fp32 engines as they are; it does not build {precision} ones.")
        for option, flag in NOT_FOR_THE_WEB.items():
            if options.get(option):
                raise CipsError(f"The web engine does not take {flag}.")
        source = Path(source)
        output = Path(output) if output is not None else Path(f"{source.stem}-site")
        web_runtime = options.get("web_runtime")
        if source.suffix == ".onnx":
            return write_site(source, output, web_runtime=web_runtime, overwrite=overwrite)
        # A checkpoint: export its engines first (this needs torch), then make the site of them.
        from cips_deploy._compat import require_build_extra

        require_build_extra("Exporting a checkpoint for the web")
        from cips_deploy.exporters.pipeline import export_checkpoint
        from .site import check_site_destination

        check_site_destination(output, overwrite=overwrite)  # before the costly export
        with tempfile.TemporaryDirectory(prefix=".cips-web-", dir=output.parent if output.parent.is_dir() else None) as work:
            engine = Path(work) / f"{source.stem}.onnx"
            export_checkpoint(source, engine="onnx", output=engine, opset=options.get("opset", 17),
                              validate=options.get("validate", True))
            return write_site(engine, output, web_runtime=web_runtime, overwrite=overwrite)


@hookimpl
def register_exporters(register):
    register(WebExporter())


@hookimpl
def register_commands(cli):
    from .server import serve_web

    cli.add_command(serve_web)
