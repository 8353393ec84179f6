"""The hooks a cips-deploy plugin can implement.

A plugin is a module (or any object) with functions marked ``@cips_deploy.hookimpl`` whose
names are the hooks below. Each ``register_*`` hook receives a ``register`` callable and
calls it once per thing it adds. Built-in plugins (``cips_deploy.plugins.*``) use these
same hooks; third-party ones are found through the entry-point group ``cips_deploy``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("cips_deploy")
hookimpl = pluggy.HookimplMarker("cips_deploy")


@hookspec
def register_families(register):
    """Register model families: call register(family) with cips_deploy.contracts.families.Family instances."""


@hookspec
def register_topologies(register):
    """Register coordinate topologies: call register(topology) with Topology instances."""


@hookspec
def register_chunkers(register):
    """Register chunking strategies: call register(chunker) with Chunker instances."""


@hookspec
def register_backends(register):
    """Register synthesis backends: call register(backend_class) with Backend subclasses."""


@hookspec
def register_outputs(register):
    """Register output formats: call register(output_format) with cips_deploy.contracts.sinks.OutputFormat instances."""


@hookspec
def register_exporters(register):
    """Register model exporters: call register(exporter) with objects that have a name."""


@hookspec
def register_commands(cli):
    """Add commands to the click group ``cli`` (the ``cips-deploy`` command line)."""
