"""The common core of `her2 import`: read a reference checkpoint safely, rename, check, write a run.

Reading: `torch.load(..., weights_only=True)` only, never a full unpickle; a file that needs
more than tensors and plain containers is refused with one line.

Renaming: each framework module gives a `Rules` object per reference state dict: `to_ours`
and `to_ref` (inverse) name functions, optional value transforms for tensors whose layout
differs, and the reference keys that are deliberately not stored (with the reason). The
mapping is by name only: a reference tensor whose name has no counterpart, a shape that
does not fit, or one of our tensors left without a reference tensor is a `UserError`
naming the first such key — never a silent positional match.

Writing: the run folder is the one training writes (run.json in the `her2-run/1` format and
a step checkpoint, written by `her2core.training.import_run`), plus an `imported` record: source
files with their sha256, the container entries used, the hyper-parameters assumed.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from her2core.errors import UserError

#: what `to_ours` returns for a reference key that is deliberately not stored
DROP = object()

# -- reading -----------------------------------------------------------------



def load_reference(path) -> object:
    """The object in a reference checkpoint, read with weights_only=True (tensors, dicts, numbers)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise UserError(f"{path}: holds more than tensors and plain containers, refused without "
                        f"unpickling it ({detail[:160]}); re-save its state dict with torch.save") from None
    except Exception as exc:  # noqa: BLE001 - whatever torch.load trips on, the file is unreadable
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({msg[:160]})") from None


def tensor_dict(obj, source: str, what: str = "state dict") -> dict[str, torch.Tensor]:
    """`obj` as a flat {name: tensor} state dict, or one clear error."""
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(f"{source}: expected a {what} (a dict of tensors), found {type(obj).__name__}")
    for k, v in obj.items():
        if not isinstance(k, str) or not torch.is_tensor(v):
            raise UserError(f"{source}: entry {k!r} of the {what} is a {type(v).__name__}, not a tensor; "
                            f"is this the right file for this framework?")
    return dict(obj)


def strip_module_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the `module.` prefix that (Distributed)DataParallel adds, when every key has it."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def entry(obj: Mapping, key: str, source: str):
    if key not in obj:
        have = ", ".join(sorted(map(str, obj)))[:200]
        raise UserError(f"{source}: no '{key}' entry (has: {have}); is this the right file for this framework?")
    return obj[key]


# -- renaming ----------------------------------------------------------------


def _identity_value(_name: str, t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class Rules:
    """How one reference state dict maps onto the tensors of one of our modules.

    to_ours(ref_name) -> our name, or DROP for a documented, verified drop;
    to_ref(our_name) -> reference name (the inverse; used for messages and round trips).
    value_to_ours / value_to_ref(our_name, tensor): layout changes (reshape, permute).
    check_drop(ref_name, tensor): verify a dropped tensor (e.g. a schedule we recompute).
    """

    to_ours: Callable[[str], object] = lambda k: k
    to_ref: Callable[[str], str] = lambda k: k
    value_to_ours: Callable[[str, torch.Tensor], torch.Tensor] = _identity_value
    value_to_ref: Callable[[str, torch.Tensor], torch.Tensor] = _identity_value
    check_drop: Callable[[str, torch.Tensor], None] = lambda k, v: None
    dropped: dict[str, str] = field(default_factory=dict)  # ref name (or pattern) -> why


def regex_rules(pairs: list[tuple[str, str, str, str]], **kw) -> Rules:
    """Rules from (ref regex, our template, our regex, ref template) rows; first match wins."""
    fwd = [(re.compile(a), b) for a, b, _, _ in pairs]
    inv = [(re.compile(c), d) for _, _, c, d in pairs]

    def apply(table, name):
        for rx, tmpl in table:
            if rx.fullmatch(name):
                return rx.sub(tmpl, name)
        return name

    return Rules(to_ours=lambda k: apply(fwd, k), to_ref=lambda k: apply(inv, k), **kw)


def convert(ref: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor], rules: Rules, *,
            source: str, hint: str = "") -> dict[str, torch.Tensor]:
    """Reference tensors -> our names, shapes checked, dtypes ours; every tensor of `ours` filled.

    `ours` may live on the meta device (only names, shapes and dtypes are used).
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    tail = f"; {hint}" if hint else ""
    for k, v in ref.items():
        name = rules.to_ours(k)
        if name is DROP:
            rules.check_drop(k, v)
            continue
        if name not in ours:
            raise UserError(f"{source}: unexpected tensor '{k}' (no counterpart '{name}' in our network "
                            f"with these settings){tail}")
        if name in origin:
            raise UserError(f"{source}: tensors '{origin[name]}' and '{k}' both map to '{name}'")
        want = tuple(rules.value_to_ref(name, torch.empty(ours[name].shape, device="meta")).shape)
        if tuple(v.shape) != want:
            raise UserError(f"{source}: tensor '{k}' has shape {list(v.shape)}, expected {list(want)} "
                            f"with these settings{tail}")
        if v.is_floating_point() != ours[name].is_floating_point():
            raise UserError(f"{source}: tensor '{k}' is {v.dtype}, expected {ours[name].dtype}")
        out[name] = rules.value_to_ours(name, v).to(ours[name].dtype).contiguous()
        origin[name] = k
    missing = [n for n in ours if n not in out]
    if missing:
        raise UserError(f"{source}: missing tensor '{rules.to_ref(missing[0])}' ({len(missing)} of "
                        f"{len(ours)} missing){tail}")
    return out


def to_reference(ours: Mapping[str, torch.Tensor], rules: Rules) -> dict[str, torch.Tensor]:
    """Our tensors back under their reference names and layouts (the inverse of `convert`)."""
    return {rules.to_ref(k): rules.value_to_ref(k, v) for k, v in ours.items()}


def sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` under `prefix` ('G.'), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@dataclass
class Part:
    """One reference state dict and where it lands: our state-dict prefix plus the rules."""

    label: str  # e.g. "latest_net_G.pth" or "last_model.pth['ema']"
    tensors: dict[str, torch.Tensor]
    prefix: str  # our framework state-dict prefix, e.g. "G." or "unet_ema."
    rules: Rules
    scope: tuple[str, ...] | None = None  # with prefix "": only our keys starting with one of these
    # an exact relayout of our module seen in the reference's own layout (e.g. the diffusers UNet
    # as the ADM UNet, `diffusion.unet.ADMLayout`): `rules` then map onto that view
    layout: object | None = None

    def target(self, ours: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our tensors this part must fill (names relative to `prefix`), in the layout `rules` map onto."""
        sub = sub_state(ours, self.prefix)
        sub = {k: v for k, v in sub.items() if self.scope is None or k.startswith(self.scope)}
        return self.layout.to_adm(sub) if self.layout is not None else sub

    def land(self, converted: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tensors converted onto `target` -> our module's own names and layout."""
        return self.layout.to_ours(converted) if self.layout is not None else converted


@dataclass
class Plan:
    """What one framework's importer decided: the parts, and what it records about them."""

    parts: list[Part]
    notes: dict = field(default_factory=dict)  # recorded under run.json imported.notes
