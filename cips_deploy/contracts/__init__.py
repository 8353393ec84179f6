"""What plugins implement and what every layer agrees on; numpy at most, no framework.

The hook specifications, the generator config and the :class:`~.families.Family` interface,
the topology, chunker, backend, output-format and exporter contracts, the limits checked
before allocating, and the option groups commands share. Imports point down only: this
layer imports nothing of cips_deploy but :mod:`cips_deploy.errors` and itself.
"""
