"""What a model family is, as the runtime and the tools see it: facts from a config, no framework.

A family (CIPS, CREPS, a third party's) is registered through the ``register_families`` hook
as a :class:`Family` instance. The runtime asks it about a :class:`GeneratorConfig` (which
architectures it builds, their presets and rules, memory per point, whether pixels factor
through row and column lines) without importing any framework, so an engine's config is
checked and sized in a torch-free install. Only :meth:`Family.generator_class` imports the
family's modules (PyTorch), for building, loading, exporting and training.

Lookups go through :func:`family_of`. The plugin manager fills the table when it loads the
plugins (:func:`install`) and sets :data:`loader` so that a lookup before any plugin was
loaded loads them: this module imports nothing above it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from cips_deploy.errors import CipsError

if TYPE_CHECKING:
    from cips_deploy.contracts.config import GeneratorConfig


class Family(ABC):
    """A generator family: the architectures it builds and what they cost, framework-free.

    Class attributes: ``name`` (``CIPS``), ``archs`` (the ``config.arch`` values it builds,
    each with its display name: ``{"skip": "CIPSskip", ...}``), ``presets`` (recipe names
    for :meth:`preset_config`) and ``line_factored`` (pixels compose from per-row and
    per-column lines, which backends then cache: docs/line-engines.md).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    archs: ClassVar[dict[str, str]] = {}
    presets: ClassVar[tuple[str, ...]] = ()
    line_factored: ClassVar[bool] = False

    @abstractmethod
    def preset_config(self, preset: str, arch: str, coordinate_space: str, **overrides: Any) -> "GeneratorConfig":
        """The config of a named recipe; ``overrides`` change recipe or config fields."""

    def check_config(self, config: "GeneratorConfig") -> None:
        """Refuse, in one sentence, a config this family cannot build (beyond the common checks)."""

    def facts(self, config: "GeneratorConfig") -> dict[str, Any]:
        """Family-specific facts of a config for ``cips-deploy info`` (CIPS: its channel multiplier)."""
        return {}

    # Whether the family was trained with a style per layer (StyleGAN's style mixing
    # regularisation: CREPS), or with one style for all layers (CIPS): mixed styles then
    # still run, but are outside what the model learned, and the commands say so.
    trained_with_layer_styles: ClassVar[bool] = False

    def style_layers(self, config: "GeneratorConfig") -> int:
        """L, the number of style inputs of synthesis, in the order the layers run: per-layer
        styles are ``ws [B, L, S]`` (style mixing, a per-layer projection; ``Generator.synthesize_layers``).
        1: the family takes one style for all layers."""
        return 1

    def has_embedding(self, config: "GeneratorConfig") -> bool:
        """Whether the model reads a learned coordinate-embedding grid (CIPS: all but CIPS-NE)."""
        return False

    @abstractmethod
    def activation_floats_per_point(self, config: "GeneratorConfig", per_point_style: bool = False) -> int:
        """Peak float32 activations per point of synthesis (docs: the ``memory`` chunker's basis)."""

    # Line-factored families only (docs/line-engines.md): the shapes of a cached line.
    def line_slots(self, config: "GeneratorConfig") -> int:
        """Rows of the line products per coordinate value."""
        raise CipsError(f"The {self.name} family does not factor pixels through lines.")

    def line_floats_per_value(self, config: "GeneratorConfig") -> int:
        """Floats a cached line value holds per sample."""
        raise CipsError(f"The {self.name} family does not factor pixels through lines.")

    def compose_floats_per_point(self, config: "GeneratorConfig") -> int:
        """Peak floats per point of composing a pixel from cached lines."""
        raise CipsError(f"The {self.name} family does not factor pixels through lines.")

    # Where the family's framework class lives, as an entry point names an object
    # ("package.module:Class"): loaded on first use, so these facts import no framework,
    # and the class's module may import its family's facts without a cycle.
    generator: ClassVar[str] = ""

    def generator_class(self) -> type:
        """The framework module class that builds this family (imports PyTorch); the import
        runs as its plugin's code (:data:`importer`)."""

        def load() -> type:
            module, _, name = self.generator.partition(":")  # reading it is the plugin's code too
            return getattr(importlib.import_module(module), name)

        return load() if importer is None else importer(self, load)


# arch -> its family; filled by the plugin manager (install), read by family_of.
_FAMILIES: dict[str, Family] = {}
# Set by the plugin manager: loads the plugins (and so calls install) when a lookup finds nothing.
loader: Callable[[], Any] | None = None
# Set by the plugin manager: importer(family, load) runs load() (the import of the family's module,
# a plugin's code) with its stdout kept off ours and any failure named after the family's plugin.
importer: Callable[["Family", Callable[[], Any]], Any] | None = None


def install(families: dict[str, Family]) -> None:
    """The loaded plugins' families by architecture name (the plugin manager calls this)."""
    _FAMILIES.clear()
    _FAMILIES.update(families)


def known_archs() -> list[str]:
    """Every architecture name an installed family builds."""
    _ensure_loaded()
    return sorted(_FAMILIES)


def family_of(arch: str) -> Family:
    """The family that builds ``arch`` (a config's ``arch``), or one sentence naming the known ones."""
    _ensure_loaded()
    family = _FAMILIES.get(arch)
    if family is None:
        known = ", ".join(sorted(_FAMILIES)) or "none"
        raise CipsError(f"Unknown architecture {arch!r}; the installed families build {known}.")
    return family


def all_presets() -> list[str]:
    """Every preset name of any installed family (for command-line choices)."""
    _ensure_loaded()
    return sorted({preset for family in set(_FAMILIES.values()) for preset in family.presets})


def _ensure_loaded() -> None:
    if not _FAMILIES and loader is not None:
        loader()
