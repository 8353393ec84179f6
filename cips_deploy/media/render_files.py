"""What ``cips-deploy render`` writes besides its image: one file per seed, a panorama viewer,
and the provenance every written picture carries.

    files = RenderFiles(model, "cylinder", {}, registry, outdir=Path("out"), viewer=Path("pano.html"), ...)
    files.check(seeds)                # refuse bad destinations before any render
    for seed in seeds: files.accept(render_detailed(...))   # writes out/seed0003.png at once
    files.finish(renderings, grid, grid_output)             # grid PNG and viewer

Per-seed files are written as each render finishes (atomically, named ``seed%04d.png``),
so a batch of many seeds never holds more than one image unless a grid is asked for too.
Like the main output, an existing seed file or viewer is replaced only with ``--force``
(``overwrite``); without it the command refuses before rendering anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cips_deploy.contracts.topology import resolve_parameters
from cips_deploy.errors import CipsError
from cips_deploy.media.provenance import gpano_tags, model_identity, render_provenance, save_png, xmp_packet
from cips_deploy.media.viewers import write_viewer
from cips_deploy.runtime.atomic import check_destination

if TYPE_CHECKING:  # type hints only: the caller's registry and renders
    from cips_deploy.runtime.plugin_manager import Registry
    from cips_deploy.runtime.render import Rendering


def seed_file_name(seed: int) -> str:
    """``seed0003.png``: four digits at least, so a folder of seeds sorts in seed order."""
    return f"seed{seed:04d}.png"


class RenderFiles:
    """The files of one ``render`` command (see the module text)."""

    def __init__(
        self,
        model: Any,
        topology: str,
        topology_params: dict[str, Any],
        registry: Registry,
        *,
        height: int,
        width: int,
        truncation: float,
        backend: str,
        backend_options: dict[str, Any] | None = None,
        blend_seed: int | None = None,
        controls: Any = None,
        outdir: Path | None = None,
        viewer: Path | None = None,
        overwrite: bool = False,
    ) -> None:
        self.model, self.topology, self.registry = model, topology, registry
        self.height, self.width, self.truncation = height, width, truncation
        self.backend, self.backend_options, self.blend_seed = backend, dict(backend_options or {}), blend_seed
        self.outdir, self.viewer = outdir, viewer
        # Transform, style mixing, class, a saved style's hash: recorded with the render (only those set).
        self.control_fields = controls.fields() if controls is not None else {}
        self.overwrite = overwrite  # --force: the seeds' files and the viewer obey it like the main output
        entry = registry.get("topology", topology)
        self.params = resolve_parameters(entry.item, topology_params, entry.name)
        # A topology says whether its width is a full 360-degree turn (the built-in cylinder
        # does; a third-party one can too), rather than being recognised here by name.
        self.panorama = bool(getattr(entry.item, "panorama", False))
        self._identity: dict[str, str] | None = None
        self._created_outdir = False

    # ----------------------------------------------------------------- before rendering

    def check(self, seeds: list[int]) -> None:
        """Refuse, before any render, a viewer or folder that cannot be written."""
        if self.viewer is not None:
            if not self.panorama:
                raise CipsError(f"--viewer shows a 360-degree panorama, which the {self.topology} topology does not render; use --topology cylinder.")
            if len(seeds) != 1:
                raise CipsError(f"--viewer shows one panorama; give one seed, not {len(seeds)}.")
            if self.viewer.suffix.lower() not in (".html", ".htm"):
                raise CipsError(f"The viewer {self.viewer} must be an .html file.")
            check_destination(self.viewer, overwrite=self.overwrite)
        if self.outdir is not None:
            if self.outdir.exists() and not self.outdir.is_dir():
                raise CipsError(f"--outdir {self.outdir} is a file, not a folder.")
            if not self.outdir.exists():
                if not self.outdir.parent.is_dir():
                    raise CipsError(f"Cannot create --outdir {self.outdir}: the folder {self.outdir.parent} does not exist.")
                try:
                    self.outdir.mkdir()
                except OSError as error:
                    raise CipsError(f"Cannot create --outdir {self.outdir}: {error.strerror or error}.") from None
                self._created_outdir = True
            try:
                check_destination(self.outdir / seed_file_name(seeds[0]), overwrite=self.overwrite)
                if not self.overwrite:
                    for seed in seeds[1:]:
                        if (self.outdir / seed_file_name(seed)).exists():
                            raise CipsError(f"{self.outdir / seed_file_name(seed)} already exists; pass --force to replace it.")
            except CipsError:
                self.abandon()
                raise

    def abandon(self) -> None:
        """After a failure: remove the --outdir folder if this command created it and it is empty."""
        if self._created_outdir and self.outdir is not None:
            try:
                self.outdir.rmdir()  # only succeeds while empty: finished seeds' files are kept
            except OSError:
                pass

    # ----------------------------------------------------------------- as renders finish

    def accept(self, rendering: Rendering) -> None:
        """Write the seed's own file (with --outdir)."""
        if self.outdir is not None:
            path = self.outdir / seed_file_name(rendering.seed)
            save_png(rendering.image, path, self.provenance(rendering.seed), xmp=self.panorama_xmp(), overwrite=self.overwrite)

    def finish(self, renderings: list[Rendering], grid: np.ndarray | None, grid_output: Path | None) -> None:
        """Write the grid image (when asked for) and the viewer."""
        if grid_output is not None and grid is not None:
            seeds = [rendering.seed for rendering in renderings]
            single = len(renderings) == 1
            save_png(
                grid, grid_output, self.provenance(seeds[0] if single else seeds), xmp=self.panorama_xmp() if single else None,
                overwrite=self.overwrite,  # without --force the final rename never replaces a file that appeared meanwhile
            )
        if self.viewer is not None:
            rendering = renderings[0]
            write_viewer(
                rendering.image, self.viewer, title=f"cips-deploy panorama, seed {rendering.seed}",
                provenance=self.provenance(rendering.seed), heading=self.params.get("heading", 0.0),
                overwrite=self.overwrite,
            )

    # ----------------------------------------------------------------- metadata

    def provenance(self, seed: int | list[int]) -> dict[str, str]:
        if self._identity is None:  # hashing a large checkpoint takes a moment: once per command
            self._identity = model_identity(self.model)
        return render_provenance(
            self._identity, seed=seed, truncation=self.truncation, topology=self.topology, parameters=self.params,
            height=self.height, width=self.width, backend=self.backend,
            backend_options=self.backend_options or None, blend_seed=self.blend_seed, **self.control_fields,
        )

    def panorama_xmp(self) -> str | None:
        """GPano tags for a cylinder panorama (the full 360 degrees across the width), else None."""
        if not self.panorama:
            return None
        heading = float(self.params.get("heading", 0.0))
        return xmp_packet(gpano_tags(self.height, self.width, heading_degrees=heading))
