"""`her2 models`: the frameworks the registry knows, with the parameter count of every network.

`--recipe` prints, per framework, every training setting of the preset next to the reference
training code's value and its source (repository:file:line); a differing value carries the
reason, and one without a reason or without a reference entry is flagged, so nothing differs
silently (tests/test_recipes.py keeps that list empty for `paper`).
"""

from __future__ import annotations

import argparse

from her2core.cli import options as opt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", type=opt.preset, default="paper", help="preset whose networks are counted (paper, tiny)")
    p.add_argument("--recipe", action="store_true",
                   help="print every training setting next to the reference value and its source")


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


def _show(value) -> str:
    import dataclasses

    if dataclasses.is_dataclass(value):
        return type(value).__name__
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _same(ours, ref) -> bool:
    def norm(v):
        return tuple(norm(x) for x in v) if isinstance(v, (list, tuple)) else v

    return norm(ours) == norm(ref)


def recipe_rows(name: str, preset: str = "paper") -> list[dict]:
    """One row per setting: {setting, ours, reference, source, status, note}.

    status: 'same', 'differs' (note says why), 'network' (a nested network config, pinned by
    parameter counts), 'UNEXPLAINED' (differs with no note) or 'NO REFERENCE' (no entry).
    """
    import dataclasses

    from her2core.models import registry

    cls = registry.get(name)
    cfg = cls.preset(preset)
    ref = cls.reference_recipe()
    rows = []
    fields = [f.name for f in dataclasses.fields(cfg)] + [k for k in ref if not hasattr(cfg, k)]
    for key in fields:
        ours = getattr(cfg, key, "auto" if key == "precision" else None)
        if key not in ref:
            rows.append({"setting": key, "ours": _show(ours), "reference": "?", "source": "",
                         "status": "NO REFERENCE", "note": ""})
            continue
        value, source, note, *given = ref[key]  # a 4th element: our value of a non-config setting
        if given:
            ours = given[0]
        if dataclasses.is_dataclass(ours):
            status = "network"
        elif _same(ours, value):
            status = "same"
        elif preset != "paper":
            status, note = "differs", note or f"the {preset} preset"
        else:
            status = "differs" if note else "UNEXPLAINED"
        rows.append({"setting": key, "ours": _show(ours), "reference": _show(value), "source": source,
                     "status": status, "note": note})
    return rows


def print_recipes(preset: str) -> None:
    from her2core.models import registry

    for name in registry.names():
        print(f"\n{name} ({preset})")
        print(f"  {'setting':22s} {'ours':>14s}  {'reference':>14s}  {'':8s} source / why it differs")
        for r in recipe_rows(name, preset):
            mark = {"same": "=", "network": "net", "differs": "DIFFERS"}.get(r["status"], r["status"])
            extra = f"  -- {r['note']}" if r["note"] else ""
            print(f"  {r['setting']:22s} {r['ours']:>14s}  {r['reference']:>14s}  {mark:8s} {r['source']}{extra}")


def run(args: argparse.Namespace) -> int:
    from her2core.models import registry

    if args.recipe:
        print_recipes(args.preset)
        return 0
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
