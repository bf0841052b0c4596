"""Small pieces the three diffusion frameworks share: seeded noise, EMA shadows, tile resizing, chunks."""

from __future__ import annotations

import copy

import torch
from torch import nn


def randn(shape, generator: torch.Generator | None, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device, then moved: same seed, same noise on any device."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A shadow copy (EMA or consistency target): same weights, never trained by an optimiser."""
    shadow = copy.deepcopy(module)
    shadow.requires_grad_(False)
    shadow.eval()
    return shadow


def extract(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] shaped (N, 1, 1, ...) for broadcasting against an ndim tensor."""
    out = values.to(t.device)[t]
    return out.reshape(-1, *([1] * (ndim - 1)))


def pad_to_multiple(x: torch.Tensor, multiple: int):
    """Reflect-pad H and W up to a multiple of the UNet's downsampling; returns (padded, (h, w))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def in_chunks(fn, x: torch.Tensor, chunk: int, multiple: int) -> torch.Tensor:
    """Apply `fn` to batches of at most `chunk` tiles (bounded memory), padding to the UNet's multiple.

    No precision is chosen here: the caller's autocast (the Translator's `--precision`, recorded
    with every output) is the one that applies.
    """
    outs = []
    for part in x.split(max(chunk, 1)):
        padded, (h, w) = pad_to_multiple(part, multiple)
        outs.append(fn(padded)[..., :h, :w].float())
    return torch.cat(outs)


INPUTS = ("resize", "native")


def input_defaults(config) -> dict:
    """Engine data defaults for a diffusion config's `input` handling (see `resized`)."""
    if config.input not in INPUTS:
        from her2core.errors import UserError
        raise UserError(f"input {config.input!r}: use 'resize' (whole tile at image_size, as the references) "
                        "or 'native' (native-scale crops)")
    if config.input == "resize":
        return {"resize": config.image_size, "crop": None}
    return {"resize": None, "crop": config.crop}


def resized(fn, x: torch.Tensor, config) -> torch.Tensor:
    """`fn` on `x` resized to the model size and its output resized back (input 'resize'); else `fn(x)`.

    The references train and test on the whole tile resized to `image_size`; a tile of another size
    is translated at that size and the result brought back to the tile's pixel grid.
    """
    if getattr(config, "input", "native") != "resize":
        return fn(x)
    from her2core.datasets.paired import resize_image

    size = tuple(x.shape[-2:])
    out = fn(resize_image(x, config.image_size).clamp(-1, 1))
    return resize_image(out, size).clamp(-1, 1)


class eval_mode:
    """Context: put modules in eval mode, restore their previous mode afterwards."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules

    def __enter__(self):
        self.was = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc):
        for m, was in zip(self.modules, self.was):
            m.train(was)


class PlateauOnLoss:
    """ReduceLROnPlateau stepped once per optimisation step on the last training loss.

    The engine steps schedulers with no argument once per step; BBDM upstream calls
    `scheduler.step(loss)` after every optimiser step, so this wrapper supplies the loss.
    """

    def __init__(self, optimizer, **kwargs):
        self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", **kwargs)
        self.last_loss: float | None = None

    def step(self, *_args, **_kwargs):
        if self.last_loss is not None:
            self.inner.step(self.last_loss)

    def get_last_lr(self):
        return [g["lr"] for g in self.inner.optimizer.param_groups]

    def state_dict(self):
        state = {k: v for k, v in self.inner.state_dict().items() if k != "optimizer"}
        state["last_loss"] = self.last_loss
        return state

    def load_state_dict(self, state):
        state = dict(state)
        self.last_loss = state.pop("last_loss", None)
        self.inner.load_state_dict(state)
