"""ASP `latest_net_G.pth` (lifangda01/AdaptiveSupervisedPatchNCE, CUT code base).

The reference saves `net.state_dict()` of the generator: a plain dict. Its convolutions use
the old `torch.nn.utils.spectral_norm` (`weight_orig`, `weight_u`, `weight_v`); ours use
`torch.nn.utils.parametrizations.spectral_norm` (`parametrizations.weight.original`,
`.0._u`, `.0._v`): same tensors, same shapes. u and v are copied, not re-estimated, so
eval-mode outputs are the reference's. The blur filters (`filt`) are buffers in both.
F and D are not in the file; they stay initialised.
"""

from __future__ import annotations

from her2core.models.importing.core import (
    Part,
    Plan,
    Rules,
    regex_rules,
    strip_module_prefix,
    tensor_dict,
)

FILES = ("latest_net_G.pth",)
HINT = "the paper preset is resnet_6blocks, ngf 64, InstanceNorm, spectral norm, antialiased"

_SN = [
    (r"(.*)\.weight_orig", r"\1.parametrizations.weight.original",
     r"(.*)\.parametrizations\.weight\.original", r"\1.weight_orig"),
    (r"(.*)\.weight_u", r"\1.parametrizations.weight.0._u", r"(.*)\.parametrizations\.weight\.0\._u", r"\1.weight_u"),
    (r"(.*)\.weight_v", r"\1.parametrizations.weight.0._v", r"(.*)\.parametrizations\.weight\.0\._v", r"\1.weight_v"),
]


def rules() -> Rules:
    return regex_rules(_SN)


def plan(objects, paths, config) -> Plan:
    sd = strip_module_prefix(tensor_dict(objects[0], str(paths[0]), "generator state dict"))
    return Plan([Part(str(paths[0]), sd, "G.", rules())])
