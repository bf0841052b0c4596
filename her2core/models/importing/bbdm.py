"""BBDM `last_model.pth` / `top_model_*.pth` (xuekt98/BBDM, `runners/BaseRunner.py`).

The reference saves {step, model, epoch, ema}: `model` is the BrownianBridgeModel's
state dict — the UNet under `denoise_fn.` plus the bridge schedule buffers (`m_t`,
`m_tminus`, `variance_t`, `variance_tminus`, `variance_t_tminus`, `posterior_variance_t`);
`ema` is a plain {name: tensor} dict of the trainable parameters only (same prefix), and
is what the reference samples with. The UNet's names are the ADM UNet's (`denoise_fn.` ->
`unet.` / `unet_ema.`, relaid out onto our diffusers UNet by `ADMLayout`). The schedule buffers are not stored: our bridge recomputes them
from the settings, and the import checks that they agree (a `sin` m_t schedule or another
max_var fails here rather than sampling wrongly). A file without `ema` (use_ema False)
samples with the model weights, as the reference does.
"""

from __future__ import annotations

import numpy as np
import torch

from her2core.errors import UserError
from her2core.models.diffusion.unet import ADMLayout
from her2core.models.importing.core import DROP, Part, Plan, Rules, entry, tensor_dict

FILES = ("last_model.pth | top_model_*.pth",)
HINT = "the paper preset is Template-BBDM.yaml's pixel UNet (128 ch, mult 1,4,8, 6 input channels)"

SCHEDULE = ("m_t", "m_tminus", "variance_t", "variance_tminus", "variance_t_tminus", "posterior_variance_t")


def schedule(num_timesteps: int, max_var: float) -> dict[str, np.ndarray]:
    """The reference's linear-m_t schedule buffers, from their definitions (docs/references.md)."""
    m_t = np.linspace(0.001, 0.999, num_timesteps)
    m_tminus = np.append(0.0, m_t[:-1])
    var_t = 2.0 * (m_t - m_t ** 2) * max_var
    var_tminus = np.append(0.0, var_t[:-1])
    var_t_tminus = var_t - var_tminus * ((1.0 - m_t) / (1.0 - m_tminus)) ** 2
    post = var_t_tminus * var_tminus / var_t
    return dict(zip(SCHEDULE, (m_t, m_tminus, var_t, var_tminus, var_t_tminus, post)))


def rules(target: str, config) -> Rules:
    expect = schedule(config.num_timesteps, config.max_var)

    def to_ours(k):
        if k in SCHEDULE:
            return DROP
        return k[len("denoise_fn."):] if k.startswith("denoise_fn.") else f"<not under denoise_fn.: {k}>"

    def check_drop(k, v):
        want = torch.tensor(expect[k], dtype=torch.float32)
        if v.shape != want.shape or (not v.is_meta and not torch.allclose(v.float(), want, rtol=1e-5, atol=1e-6)):
            raise UserError(f"{target}: schedule buffer '{k}' differs from the linear m_t bridge with "
                            f"num_timesteps {config.num_timesteps}, max_var {config.max_var} (only mt_type "
                            f"'linear' is supported; give --set num_timesteps=... / max_var=...)")

    return Rules(to_ours=to_ours, to_ref=lambda k: "denoise_fn." + k, check_drop=check_drop,
                 dropped={k: "bridge schedule, recomputed from the settings and checked" for k in SCHEDULE})


def plan(objects, paths, config) -> Plan:
    obj, src = objects[0], str(paths[0])
    if not isinstance(obj, dict):
        raise UserError(f"{src}: expected BBDM's {{step, model, epoch, ema}} dict, found {type(obj).__name__}")
    model = tensor_dict(entry(obj, "model", src), f"{src}['model']")
    layout = ADMLayout(config.unet)
    parts = [Part(f"{src}['model']", model, "unet.", rules(f"{src}['model']", config), layout=layout)]
    notes = {"step": obj.get("step"), "epoch": obj.get("epoch")}
    if "ema" in obj and obj["ema"] is not None:
        ema = tensor_dict(obj["ema"], f"{src}['ema']", "EMA dict")
        parts.append(Part(f"{src}['ema']", ema, "unet_ema.", rules(f"{src}['ema']", config), layout=layout))
        notes["sampling_weights"] = "ema"
    else:
        parts.append(Part(f"{src}['model']", model, "unet_ema.", rules(f"{src}['model']", config), layout=layout))
        notes["sampling_weights"] = "model (the file has no 'ema')"
    return Plan(parts, notes)
