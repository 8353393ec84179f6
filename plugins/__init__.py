"""Built-in plugins, installed as ``cips_deploy.plugins``.

Each module here is a plugin registered through the same hooks a third-party package uses
(see :mod:`cips_deploy.contracts.hookspecs` and :mod:`cips_deploy.runtime.plugin_manager`):

- ``flat``, ``cylinder``, ``foveated``, ``rotated``: coordinate topologies;
- ``chunkers``: the ``fixed``, ``rows`` and ``memory`` chunking strategies;
- ``torch_backend``: synthesis with the PyTorch generator;
- ``video``: the ``video`` command (latent walks, zooms, pans).
"""
