"""Modality registry: stages look a modality up by name and call its methods, never test its name.

Adding a modality means one new module here that subclasses `Modality` and calls `register`.
"""

from __future__ import annotations

import importlib
from typing import Any

from stages.modalities.base import Modality

MODALITIES: dict[str, Modality] = {}

# Modules that register built-in modalities; imported lazily so importing the registry is cheap.
_BUILTIN = ("stages.modalities.text", "stages.modalities.image", "stages.modalities.audio")


def register(name: str):
    """Class decorator: instantiate the modality and file it under `name`."""

    def wrap(cls: type[Modality]) -> type[Modality]:
        instance = cls()
        instance.name = name
        MODALITIES[name] = instance
        return cls

    return wrap


def _load_builtins() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)


def registered() -> list[Modality]:
    """Every registered modality, built-in ones included, in name order."""
    _load_builtins()
    return [MODALITIES[name] for name in sorted(MODALITIES)]


def get_modality(name: str) -> Modality:
    """Return the registered modality, or a one-line ValueError naming the known ones."""
    _load_builtins()
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; known: {sorted(MODALITIES)}") from None


__all__ = ["MODALITIES", "Modality", "check_backbone", "get_modality", "modality_section", "register", "registered",
           "task_modality"]


def modality_section(sections: dict[str, Any], modality: Modality, where: str) -> Any:
    """`sections[modality.name]` from a params `by_modality` mapping, failing with the dotted key."""
    from stages.common import StageError

    if modality.name not in sections:
        raise StageError(f"params.yaml: {where}.{modality.name}: missing key")
    return sections[modality.name]


def task_modality(params: dict[str, Any], task: str) -> Modality:
    """The modality declared for `params.tasks.<task>`, with a one-line error if unknown."""
    from stages.common import StageError, task_params

    name = task_params(params, task).get("modality")
    try:
        return get_modality(name)
    except ValueError as exc:
        raise StageError(f"params.yaml: tasks.{task}.modality: {exc}") from None


def check_backbone(modality: Modality, spec: dict[str, Any], where: str) -> dict[str, Any]:
    """`spec` (a `train.model.<modality>` section) if its backbone is one the modality knows; else a one-line error."""
    from stages.common import StageError

    known = modality.backbone_names()
    if spec.get("backbone") not in known:
        raise StageError(f"params.yaml: {where}.backbone: unknown backbone {spec.get('backbone')!r}; known: {known}")
    return spec
