"""`her2 models`: the frameworks the registry knows, with the parameter count of every network."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="paper", help="preset whose networks are counted (paper, tiny)")


def describe(name: str, preset: str) -> dict:
    """{'name', 'family', 'counts': {net: n}} or {'name', 'error': reason} for one registry entry."""
    import torch

    from her2core.errors import UserError
    from her2core.models import registry

    try:
        cls = registry.get(name)
        cfg = cls.preset(preset)
    except UserError as exc:
        return {"name": name, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 (one broken framework must not hide the others)
        return {"name": name, "error": f"{type(exc).__name__}: {exc}"}
    try:
        with torch.device("meta"):  # shapes only: no memory, no init cost for 500M-parameter UNets
            model = cls(cfg)
    except Exception:  # noqa: BLE001
        try:
            model = cls(cfg)
        except Exception as exc:  # noqa: BLE001 (one broken framework must not hide the others)
            return {"name": name, "error": f"{type(exc).__name__}: {exc}"}
    return {"name": cls.name, "family": cls.family, "counts": model.parameter_counts()}


def run(args: argparse.Namespace) -> int:
    from her2core.models import registry

    print(f"preset: {args.preset}")
    for name in registry.names():
        d = describe(name, args.preset)
        if "error" in d:
            print(f"{name:16s} not available: {d['error']}")
            continue
        total = sum(d["counts"].values())
        nets = ", ".join(f"{k} {v:,}" for k, v in d["counts"].items())
        print(f"{d['name']:16s} {d['family']:3s}  {nets}  (total {total:,})")
    return 0
