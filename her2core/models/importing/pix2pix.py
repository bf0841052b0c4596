"""BCI PyramidPix2pix `latest_net_G.pth` (bupt-ai-cz/BCI `PyramidPix2pix`).

The reference saves `net.state_dict()` of the generator (from `net.module` under
DataParallel): a plain dict with BatchNorm running statistics and `num_batches_tracked`.
Our `ResnetGenerator.model` is the same flat Sequential, so names match one to one.
The discriminator is not in the file; it stays initialised (inference does not use it).
"""

from __future__ import annotations

from her2core.models.importing.core import Part, Plan, Rules, strip_module_prefix, tensor_dict

FILES = ("latest_net_G.pth",)
HINT = "the paper preset is resnet_9blocks, ngf 64, BatchNorm; use --set ngf=... / n_blocks=... for others"


def rules() -> Rules:
    return Rules()


def plan(objects, paths, config) -> Plan:
    sd = strip_module_prefix(tensor_dict(objects[0], str(paths[0]), "generator state dict"))
    return Plan([Part(str(paths[0]), sd, "G.", rules())],
                {"inference": "eval mode (running BatchNorm statistics, no dropout); BCI's published test "
                              "command ran without --eval"})
