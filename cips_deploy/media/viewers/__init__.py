"""The viewer pages cips-deploy writes beside its pictures: one self-contained HTML file each,
no script, style or font from the network, so they work opened straight from disk.

- :mod:`.panorama`: the 360-degree viewer of a cylinder panorama (``render --viewer pano.html``),
  the image embedded as a PNG data URL: :func:`viewer_html`, :func:`write_viewer`.
- :mod:`.deep_zoom`: the page beside a Deep Zoom pyramid (``render -o out.dzi`` writes
  ``out.html``), which loads the pyramid's tiles from ``out_files/``: :func:`deep_zoom_page`.

Both are plain text templates filled from numpy images and numbers; neither imports torch.
"""

from __future__ import annotations

from cips_deploy.media.viewers.deep_zoom import deep_zoom_page
from cips_deploy.media.viewers.panorama import MAX_EMBEDDED_WIDTH, viewer_html, write_viewer

__all__ = ["MAX_EMBEDDED_WIDTH", "deep_zoom_page", "viewer_html", "write_viewer"]
