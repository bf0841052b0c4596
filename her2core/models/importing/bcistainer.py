"""BCIStainer model and checkpoint files (quqixun/BCIStainer, `libs/utils/base.py`).

What the reference writes:
- `model_best_psnr.pth` (and `_ssim`, `_clsf`): `state_dict()` of the ema-pytorch 0.0.10
  wrapper around G: `initted`, `step` (shape [1]), `online_model.*`, `ema_model.*`;
  a run without EMA writes G's own state dict instead.
- `ckpt-NNNNNN.pth`: {epoch, D, G, D_opt, G_opt, Gema, C, C_opt}; `Gema` is that wrapper.
Inference uses `ema_model` (ours: `G_ema.model`).

Name rules (reference -> ours):
- a `ConvNormAct` keeps its layers in `.conv` (`inconv.conv.1.weight`); ours is the
  Sequential itself (`inconv.1.weight`); same for encoder1/2, decoder2 and C's encoder;
- a modulated block wraps each ModConv2d with its LeakyReLU (`decoder1.0.conv1.0.weight.data`);
  ours holds the ModConv2d directly (`decoder1.0.conv1.weight.data`);
- the multi-scale D stores scale i as `layer{depths-1-i}` (`layer1` sees the full-size
  image); ours is `scales.{i}`;
- the wrapper's `step` [1] is our `G_ema.step` (a scalar); `initted` (a flag) is dropped;
  in a `ckpt-*` file `Gema.online_model` is the same module as `G` and is checked equal.
Optimiser states and the epoch are not imported (an imported run is for inference).
"""

from __future__ import annotations

import re

import torch

from her2core.errors import UserError
from her2core.models.importing.core import DROP, Part, Plan, Rules, strip_module_prefix, tensor_dict

FILES = ("model_best_psnr.pth | ckpt-NNNNNN.pth",)
HINT = "the paper preset is stainer_basic_cmp/exp3 (full_size 1024, init_channels 32, 9 style blocks)"

_CNA = r"(inconv|encoder1\.\d+|encoder2\.\d+|decoder2\.\d+|encoder\.\d+)"


def _g_to_ours(k: str) -> str:
    k = re.sub(rf"^{_CNA}\.conv\.(\d+)\.", r"\1.\2.", k)
    return re.sub(r"^(decoder1\.\d+\.conv[12])\.0\.", r"\1.", k)


def _g_to_ref(k: str) -> str:
    m = re.match(rf"^{_CNA}\.(\d+)\.(.*)$", k)
    if m:
        return f"{m.group(1)}.conv.{m.group(2)}.{m.group(3)}"
    return re.sub(r"^(decoder1\.\d+\.conv[12])\.", r"\1.0.", k)


def g_rules() -> Rules:
    return Rules(to_ours=_g_to_ours, to_ref=_g_to_ref)


def c_rules() -> Rules:
    return Rules(to_ours=_g_to_ours, to_ref=_g_to_ref)  # C's `encoder.N` ConvNormActs follow the same rule


def d_rules(depths: int) -> Rules:
    def to_ours(k):
        m = re.match(r"^layer(\d+)\.(\d+)\.(?:conv\.)?(.*)$", k)
        if not m:
            return k
        i = depths - 1 - int(m.group(1))
        return f"scales.{i}.{m.group(2)}.{m.group(3)}"

    def to_ref(k):
        m = re.match(r"^scales\.(\d+)\.(\d+)\.(.*)$", k)
        if not m:
            return k
        j = depths - 1 - int(m.group(1))
        inner = m.group(3)
        # a ConvNormAct (every layer but the final bare conv) keeps its layers under `.conv`
        return f"layer{j}.{m.group(2)}.conv.{inner}" if "." in inner else f"layer{j}.{m.group(2)}.{inner}"

    return Rules(to_ours=to_ours, to_ref=to_ref)


def ema_rules(online: str | None) -> Rules:
    """The ema-pytorch wrapper: ema_model -> G_ema.model, step -> G_ema.step, online_model -> G (or check)."""
    g = g_rules()

    def to_ours(k):
        if k == "initted":
            return DROP
        if k == "step":
            return "G_ema.step"
        if k.startswith("ema_model."):
            return "G_ema.model." + g.to_ours(k[len("ema_model."):])
        if k.startswith("online_model."):
            return DROP if online is None else online + g.to_ours(k[len("online_model."):])
        return k

    def to_ref(k):
        if k == "G_ema.step":
            return "step"
        if k.startswith("G_ema.model."):
            return "ema_model." + g.to_ref(k[len("G_ema.model."):])
        if online is not None and k.startswith(online):
            return "online_model." + g.to_ref(k[len(online):])
        return k

    def value_to_ours(name, t):
        return t.reshape(()) if name == "G_ema.step" else t

    def value_to_ref(name, t):
        return t.reshape(1) if name == "G_ema.step" else t

    return Rules(to_ours=to_ours, to_ref=to_ref, value_to_ours=value_to_ours, value_to_ref=value_to_ref,
                 dropped={"initted": "ema-pytorch's 'copied once' flag; no weights"})


def plan(objects, paths, config) -> Plan:
    obj, src = objects[0], str(paths[0])
    if isinstance(obj, dict) and "G" in obj and isinstance(obj.get("G"), dict):  # ckpt-NNNNNN.pth
        g = strip_module_prefix(tensor_dict(obj["G"], f"{src}['G']", "generator state dict"))
        parts = [Part(f"{src}['G']", g, "G.", g_rules())]
        if "D" in obj:
            d = tensor_dict(obj["D"], f"{src}['D']", "discriminator state dict")
            parts.append(Part(f"{src}['D']", d, "D.", d_rules(config.d_depths)))
        if "C" in obj:
            c = tensor_dict(obj["C"], f"{src}['C']", "comparator state dict")
            parts.append(Part(f"{src}['C']", c, "C.", c_rules()))
        if "Gema" in obj:
            wrapper = tensor_dict(obj["Gema"], f"{src}['Gema']", "EMA state dict")
            _check_online_equals(wrapper, g, f"{src}['Gema']")
            parts.append(Part(f"{src}['Gema']", wrapper, "", ema_rules(None), scope=("G_ema.",)))
            source = "Gema.ema_model"
        else:
            parts.append(Part(f"{src}['G']", g, "G_ema.model.", g_rules()))
            source = "G (the run kept no EMA)"
        return Plan(parts, {"inference_weights": source, "epoch": obj.get("epoch")})
    sd = tensor_dict(obj, src)
    if "initted" in sd:  # model_best_*.pth of an EMA run: the wrapper
        return Plan([Part(src, sd, "", ema_rules("G."), scope=("G.", "G_ema."))],
                    {"inference_weights": "ema_model"})
    sd = strip_module_prefix(sd)
    return Plan([Part(src, sd, "G.", g_rules()), Part(src, sd, "G_ema.model.", g_rules())],
                {"inference_weights": "G (a model file of a run without EMA)"})


def _check_online_equals(wrapper: dict, g: dict, src: str) -> None:
    for k, v in wrapper.items():
        if k.startswith("online_model."):
            ref = g.get(k[len("online_model."):])
            if ref is None or ref.shape != v.shape or (not v.is_meta and not torch.equal(ref, v)):
                raise UserError(f"{src}: '{k}' differs from G's tensor of that name; the file is inconsistent")
