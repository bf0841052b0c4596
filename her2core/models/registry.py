"""One registry maps framework names to classes; nothing else knows the list.

Entries are import paths so that listing names costs no torch import.
"""

from __future__ import annotations

import importlib

from her2core.errors import UserError

# name -> "module:Class"
FRAMEWORKS: dict[str, str] = {
    "pyramid_pix2pix": "her2core.models.pyramid_pix2pix:PyramidPix2Pix",
    "asp": "her2core.models.asp:ASP",
    "bcistainer": "her2core.models.bcistainer:BCIStainer",
    "bbdm": "her2core.models.bbdm:BBDM",
    "ddib": "her2core.models.ddib:DDIB",
    "consistency": "her2core.models.consistency:ConsistencyModel",
}


def names() -> list[str]:
    return list(FRAMEWORKS)


def get(name: str):
    """The Framework class registered under `name` (a user error if unknown)."""
    key = name.lower().replace("-", "_")
    if key not in FRAMEWORKS:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(FRAMEWORKS)}")
    module, cls = FRAMEWORKS[key].split(":")
    return getattr(importlib.import_module(module), cls)


def family(name: str) -> str:
    """'gan' or 'dm' of a registered framework: the class says, no list elsewhere."""
    return get(name).family
