"""The torch-free runtime: topology -> chunker -> backend -> output, on numpy arrays.

The plugin manager and registry, seeds, coordinates, the chunk loop and the in-memory
renderer, streamed (gigapixel) renders with resume and worker processes, atomic writes and
content hashes. It imports the contracts below it and never a framework: a backend that
needs one (torch) is a plugin.
"""
