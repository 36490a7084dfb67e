"""The method registry and compositions ("pcgrad+repmtl").

``@register_method("name")`` on a ``Method`` subclass makes it selectable by name. A
composition spells at most one primary method (a weighting or an aggregator) and any number
of regularizers, joined by ``+``; with no primary, equal weighting is used, so ``repmtl``
means ``ew+repmtl``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from engine.errors import UserError
from engine.registry import Registry, defined_in
from methods.base import Method, Needs, Regularizer

METHODS: Registry[type[Method]] = Registry("method")
DEFAULT_PRIMARY = "ew"


def register_method(name: str):
    """Class decorator: register a Method subclass under ``name``."""
    def decorator(cls: type[Method]) -> type[Method]:
        # UserError: a plugin's mistake is reported in one line (exit 2), not a traceback.
        if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.kind:
            raise UserError(f"@register_method({name!r}) needs a Weighting, Aggregator or "
                            f"Regularizer subclass, got {cls!r}")
        if not cls.description:
            raise UserError(f"method {name!r} ({defined_in(cls)}) needs a one-line "
                            f"`description` (see docs/plugins.md)")
        if hasattr(nn.Module, name):
            # the trainer keeps methods in an nn.ModuleDict keyed by name
            raise UserError(f"method name {name!r} ({defined_in(cls)}) is an attribute of "
                            f"torch.nn.Module; choose another name")
        cls.name = name
        return METHODS.register(name)(cls)
    return decorator


@dataclass(frozen=True)
class Composition:
    """A parsed method spec: the primary method's name and the regularizers' names."""

    primary: str
    regularizers: tuple[str, ...]

    @property
    def components(self) -> tuple[str, ...]:
        return (self.primary, *self.regularizers)

    @property
    def needs(self) -> Needs:
        needs = Needs()
        for name in self.components:
            needs = needs | METHODS.get(name).needs
        return needs


def parse_method(spec: str) -> Composition:
    """Parse "a+b+c" into one primary method and its regularizers, refusing nonsense."""
    parts = [p.strip() for p in spec.split("+")]
    if not spec or any(not p for p in parts):
        raise UserError(f"method spec {spec!r} is malformed; expected NAME or NAME+REGULARIZER "
                        f"(e.g. pcgrad+repmtl)")
    primaries, regularizers = [], []
    for part in parts:
        cls = METHODS.get(part)
        (regularizers if issubclass(cls, Regularizer) else primaries).append(part)
    if len(primaries) > 1:
        raise UserError(f"method spec {spec!r} combines {' and '.join(primaries)}; a composition "
                        f"takes one weighting or aggregator plus regularizers")
    if len(set(regularizers)) != len(regularizers):
        raise UserError(f"method spec {spec!r} names a regularizer twice")
    primary = primaries[0] if primaries else DEFAULT_PRIMARY
    composition = Composition(primary, tuple(regularizers))
    if composition.needs.separate_encoders and regularizers:
        raise UserError(f"{primary} trains one model per task, so there is no shared "
                        f"representation for {', '.join(regularizers)} to regularize")
    return composition


def canonical_name(spec: str) -> str:
    """The one name (and folder) of a composition, however it is spelled: the primary
    method first, then the regularizers in the order given (the order in which they
    transform the losses), spaces dropped; equal weighting, the default primary, is left
    out when regularizers follow. So ``repmtl+pcgrad`` is ``pcgrad+repmtl`` and
    ``ew+repmtl`` is ``repmtl``."""
    composition = parse_method(spec)
    if composition.primary == DEFAULT_PRIMARY and composition.regularizers:
        return "+".join(composition.regularizers)
    return "+".join(composition.components)
