"""A topology's layout seen through a camera move (:class:`~cips_deploy.runtime.coords.CoordinateTransform`).

:class:`TransformedLayout` hands out the topology's own points, transformed, and passes
everything else (colours, the image, row boundaries, rectangles of a streamed render)
to the topology's layout unchanged. So the transform composes with every topology, the
backends see ordinary coordinates (CIPS and CREPS alike), and the in-memory and streamed
renderers need nothing else: both ask the layout for points.

Line-factored families decide per chunk whether a chunk's points share rows and columns
(``plugins/line_cache.py``, ``exporters/grid_runtime.py``): a translated or scaled grid
still does (u' = u * S + tx depends on u alone), so its lines are still evaluated once per
row and column; a rotated one does not, and takes the per-point path, as the ``rotated``
topology's grids do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cips_deploy.contracts.topology import Layout, host_array
from cips_deploy.runtime.coords import CoordinateTransform


class TransformedLayout(Layout):
    """``inner``'s points through ``transform``; colours and assembly are ``inner``'s."""

    def __init__(self, inner: Any, transform: CoordinateTransform) -> None:
        self.inner, self.transform = inner, transform
        self.height = getattr(inner, "height", None)
        self.width = getattr(inner, "width", None)
        self.n_points = getattr(inner, "n_points", None)
        self.pixel_grid = bool(getattr(inner, "pixel_grid", False))

    def _moved(self, points: Any) -> Any:
        points = host_array(points)
        if isinstance(points, np.ndarray) and np.issubdtype(points.dtype, np.floating) and points.ndim == 2 and points.shape[1] == 2:
            return self.transform.apply(points)
        return points  # not points at all: check_points names what is wrong, as without a transform

    def points(self, start: int, stop: int) -> np.ndarray:
        return self._moved(self.inner.points(start, stop))

    def accept(self, start: int, rgb: np.ndarray) -> None:
        self.inner.accept(start, rgb)

    def image(self) -> np.ndarray:
        return self.inner.image()

    def row_boundaries(self) -> np.ndarray | None:
        return self.inner.row_boundaries()

    def report(self) -> dict[str, Any]:
        return self.inner.report()

    def rectangle_points(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        return self._moved(self.inner.rectangle_points(top, bottom, left, right))

    def rectangle_pixels(self, rgb: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        return self.inner.rectangle_pixels(rgb, top, bottom, left, right)
