"""DDIB: two guided-diffusion checkpoints, the H&E model and the HER2 model (suxuann/ddib).

guided-diffusion's `TrainLoop` saves plain state dicts: `modelNNNNNN.pt` and, per EMA rate,
`ema_0.9999_NNNNNN.pt` (preferred: the EMA weights are what guided-diffusion samples
with). The names are the ADM UNet's, which our diffusers UNet is seen through (`ADMLayout`, an
exact relayout). Each file fills both our online UNet and its EMA
shadow (`unet_he`/`ema_he`, `unet_ihc`/`ema_ihc`); translation uses the shadows.
Class-conditional (`label_emb.weight`) or learned-sigma (6 output channels) checkpoints,
such as the published ImageNet models, are other architectures and fail on that key.
"""

from __future__ import annotations

from her2core.models.diffusion.unet import ADMLayout
from her2core.models.importing.core import Part, Plan, Rules, strip_module_prefix, tensor_dict

FILES = ("H&E model ema_*.pt", "HER2 model ema_*.pt")
HINT = ("the paper preset is model_and_diffusion_defaults() at 256 px (128 ch, attention 16,8, unconditional, "
        "learn_sigma False)")


def plan(objects, paths, config) -> Plan:
    parts, notes = [], {}
    for stain, obj, path in zip(("he", "ihc"), objects, paths):
        sd = strip_module_prefix(tensor_dict(obj, str(path), "guided-diffusion state dict"))
        layout = ADMLayout(config.unet)
        parts += [Part(str(path), sd, f"unet_{stain}.", Rules(), layout=layout),
                  Part(str(path), sd, f"ema_{stain}.", Rules(), layout=layout)]
        if path.name.startswith("model"):
            notes[f"{stain}_weights"] = f"{path.name} is the online model; ema_*.pt files sample better"
    return Plan(parts, notes)
