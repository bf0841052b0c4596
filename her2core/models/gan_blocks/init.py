"""Weight initialisation as in the pix2pix/CUT `init_weights` (normal / xavier, gain 0.02)."""

from __future__ import annotations

from torch import nn


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Conv/Linear weights ~ N(0, gain) or xavier(gain), biases 0; BatchNorm weight ~ N(1, gain).

    Parametrised (spectral-norm) layers are initialised through their `original` tensor, and
    StyleGAN2 modulated convolutions through their equalised weight's `data` parameter (as the
    references' `m.weight.data` reaches it: BCIStainer's 18 ModConv2d get N(0, gain) there).
    """
    def weight_of(m):
        p = getattr(m, "parametrizations", None)
        if p is not None and "weight" in p:
            return p["weight"].original
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Module) and isinstance(getattr(w, "data", None), nn.Parameter):
            return w.data  # EqualizedWeight
        return w

    for m in net.modules():
        cls = type(m).__name__
        w = weight_of(m)
        if w is None or not isinstance(w, nn.Parameter):
            continue
        if "Conv" in cls or "Linear" in cls:
            if init_type == "normal":
                nn.init.normal_(w, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(w, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(w, a=0, mode="fan_in")
            else:
                raise ValueError(f"unknown init_type {init_type}")
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias, 0.0)
        elif "BatchNorm2d" in cls:
            nn.init.normal_(w, 1.0, gain)
            nn.init.constant_(m.bias, 0.0)
    return net
