"""A plugin whose register_topologies raises after registering one topology (which must not
survive), while its register_chunkers works."""

from cips_deploy import hookimpl
from cips_deploy.contracts.chunking import Chunker
from cips_deploy.plugins.flat import Flat


class HalfRegistered(Flat):
    name = "half-registered"


class Halves(Chunker):
    name = "halves"
    description = "Two chunks."

    def spans(self, request):
        middle = request.n_points // 2
        return [(0, middle), (middle, request.n_points)] if middle else [(0, request.n_points)]


@hookimpl
def register_topologies(register):
    register(HalfRegistered())
    raise RuntimeError("the topology table is corrupt")


@hookimpl
def register_chunkers(register):
    register(Halves())
