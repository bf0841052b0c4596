"""openai/consistency_models checkpoints (`ema_<rate>_NNNNNN.pt`, `modelNNNNNN.pt`, `target_modelNNNNNN.pt`).

The reference saves plain state dicts, fp16 where it trained in fp16 (cast to float32 here,
exactly). The rules map onto the ADM layout of guided-diffusion (`ADMLayout`, then relaid out
exactly onto our diffusers UNet), which differs from upstream only in the attention blocks:
upstream `qkv` and `proj_out` are 1×1 `Conv2d` (C', C, 1, 1), ADM's `Conv1d` (C', C, 1); and
upstream orders the qkv output rows q|k|v first, then heads (`b (three h d) s`), where the ADM
legacy layout is heads first, then q|k|v. So qkv rows are permuted (three, heads, d) ->
(heads, three, d); proj_out only drops the trailing 1. The file fills the online UNet, the
CT target and the sampling EMA. The published checkpoints are unconditional (3 input
channels); ours is conditioned on the H&E tile (6), so those fail on `input_blocks.0.0.weight`.
"""

from __future__ import annotations

import re

from her2core.models.diffusion.unet import ADMLayout
from her2core.models.importing.core import Part, Plan, Rules, strip_module_prefix, tensor_dict

FILES = ("ema_*.pt | model*.pt",)
HINT = ("the paper preset is the LSUN-256 UNet (256 ch, attention 32,16,8, 64-channel heads) with 6 input "
        "channels (noisy image + H&E)")

_QKV = re.compile(r".*\.qkv\.(weight|bias)")
_PROJ = re.compile(r".*\.proj_out\.weight")


def rules(unet_config) -> Rules:
    def heads(channels: int) -> int:
        hc = unet_config.num_head_channels
        return channels // hc if hc > 0 else unet_config.num_heads

    def to_ours_value(name, t):
        if _QKV.fullmatch(name):
            c3 = t.shape[0]
            h = heads(c3 // 3)
            return t.reshape(3, h, c3 // (3 * h), *t.shape[1:]).transpose(0, 1).reshape(c3, *t.shape[1:]) \
                .reshape(*((c3, t.shape[1], 1) if t.ndim > 1 else (c3,)))
        if _PROJ.fullmatch(name):
            return t.reshape(t.shape[0], t.shape[1], 1)
        return t

    def to_ref_value(name, t):
        if _QKV.fullmatch(name):
            c3 = t.shape[0]
            h = heads(c3 // 3)
            t = t.reshape(h, 3, c3 // (3 * h), *t.shape[1:]).transpose(0, 1).reshape(c3, *t.shape[1:])
            return t.reshape(c3, t.shape[1], 1, 1) if t.ndim > 1 else t
        if _PROJ.fullmatch(name):
            return t.reshape(t.shape[0], t.shape[1], 1, 1)
        return t

    return Rules(value_to_ours=to_ours_value, value_to_ref=to_ref_value)


def plan(objects, paths, config) -> Plan:
    sd = strip_module_prefix(tensor_dict(objects[0], str(paths[0]), "consistency-model state dict"))
    r = rules(config.unet)
    parts = [Part(str(paths[0]), sd, prefix, r, layout=ADMLayout(config.unet)) for prefix in ("unet.", "target.", "unet_ema.")]
    return Plan(parts, {"dtype": str(next(iter(sd.values())).dtype)})
