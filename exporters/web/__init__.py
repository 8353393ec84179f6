"""The browser as a deployment target: a static site whose page renders the model itself.

:mod:`.site` writes the site (``cips-deploy export --engine web``), :mod:`.server` serves it
(``cips-deploy serve-web``), :mod:`.plugin` registers both, and ``page/`` is the page: its
synthesis worker runs the exported engines on onnxruntime-web, and ``page/numerics.js``
computes seeds, coordinates and 8-bit colours exactly as the Python runtime does. See docs/web.md.
"""
