"""How sure a model is, per pixel: K predictions of a tile -> uncertainty -> confidence.

The one place that turns several predictions of the same H&E tile into a map:

* **uncertainty** `u` = the mean over R, G, B of the per-pixel standard deviation (population,
  ddof 0) of the K predictions, in [0, 1] intensity units (uint8 / 255). `u` is 0 where every
  sample agrees and at most 0.5; in practice a few hundredths.
* **confidence** `c = 1 - min(u / U_MAX, 1)` with `U_MAX = 0.25` (a spread of 64 grey levels:
  the model is guessing), stored as `round(255 c)`; so `u = U_MAX (1 - v / 255)` for a stored
  value v, one uint8 step is 0.001 of intensity std (a quarter grey level).

Which K predictions, per framework family (`her2core.models.registry.family`, nowhere else):

* diffusion (`dm`): `seeds` — K samples with different seeds (the sampler's own noise);
* GAN (`gan`): `tta` — the dihedral group (8 rotations/flips of the input, each output
  transformed back); where the network has dropout (pyramid pix2pix `paper`), `tta+dropout`:
  each op also draws its own dropout mask (only the dropout layers run in train mode);
* optionally an ensemble of runs: sample k uses run k mod R (`extra` frameworks).

Sample 0 is the plain translation (identity op, the caller's seed), so the virtual HER2 and its
confidence describe the same prediction. Defaults are small on a CPU, larger on a GPU.

Why this statistic and no other (measured on the embedded artefact slide, tiny presets, nine
pix2pix runs: 200 / 300 / 400 steps x 3 seeds, and BBDM; README "Confidence maps"): the spread
of optical density, or of RGB relative to the mean intensity, was not consistently better than
the RGB std (AUROC mean 0.80 against 0.79, better in some runs, worse in others); smoothing the
predictions first (spread of the local stain level, not of edge placement) was worse at every
scale (edges carry the signal); masking glass changes nothing on tissue tiles; the GAN
discriminator's score as an out-of-distribution term flips sign between runs (AUROC 0.35 to
0.92), so it is not calibrated and not used. Live dropout helps (with a dropout generator,
dropout samples beat TTA alone in 3 of 3 seeds). An ensemble of runs (`--runs`) raises the mean
but is not robust either: the dihedral spread of a generator trained with dihedral augmentation
is its left-over non-equivariance, which training removes on familiar tissue and leaves to
chance on unfamiliar tissue: which artefact kinds a run flags changes with its seed and length.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from her2core.errors import UserError
from her2core.inference.options import CONFIDENCE_METHODS as METHODS

#: intensity std (in [0, 1] units) that maps to confidence 0
U_MAX = 0.25
#: (cpu, gpu) default K per method
#: (cpu, gpu) default K per method. tta+dropout was 8 on a CPU: with a dropout pix2pix (tiny,
#: 300 steps, 3 seeds) K = 4 told artefact tiles from clean ones as well or better (AUROC 0.861 /
#: 0.706 / 0.827 against 0.861 / 0.685 / 0.814), at half the cost; the 90° ops add spread that
#: follows the tissue's texture rather than its strangeness (TTA alone: the same, K = 4 >= 8).
DEFAULT_SAMPLES = {"seeds": (4, 8), "tta": (4, 8), "dropout": (4, 8), "tta+dropout": (4, 8)}
MEANING = (f"confidence of the virtual HER2 per pixel: v/255 = 1 - min(u/{U_MAX:g}, 1), u = mean "
           "over RGB of the per-pixel std of K predictions in [0,1] units; 255 also where nothing "
           "was translated (glass, outside the ROI)")


def uncertainty_to_confidence(u: np.ndarray) -> np.ndarray:
    """Confidence in [0, 1] (float32) of an uncertainty map (monotone decreasing, see above)."""
    return (1.0 - np.minimum(np.asarray(u, np.float32) / U_MAX, 1.0)).astype(np.float32)


def confidence_to_uint8(c: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(c, np.float32) * 255.0), 0, 255).astype(np.uint8)


def uint8_to_uncertainty(v: np.ndarray) -> np.ndarray:
    """The uncertainty a stored confidence value stands for (exact below U_MAX, to 1/255)."""
    return (U_MAX * (1.0 - np.asarray(v, np.float32) / 255.0)).astype(np.float32)


def pixel_uncertainty(samples: np.ndarray) -> np.ndarray:
    """(K, N, H, W, 3) uint8 or [0,1] predictions -> (N, H, W) float32 uncertainty `u`."""
    s = np.asarray(samples)
    x = s.astype(np.float32) / 255.0 if s.dtype == np.uint8 else s.astype(np.float32)
    return x.std(axis=0).mean(axis=-1).astype(np.float32)


# --------------------------------------------------------------------------- dihedral ops

def dihedral(x: np.ndarray, op: int) -> np.ndarray:
    """Op 0..7 of the dihedral group on (N, H, W, C): rotate by 90°·(op % 4), then flip if op ≥ 4."""
    y = np.rot90(x, op % 4, axes=(1, 2))
    return np.ascontiguousarray(y[:, :, ::-1] if op >= 4 else y)


def dihedral_inverse(y: np.ndarray, op: int) -> np.ndarray:
    x = y[:, :, ::-1] if op >= 4 else y
    return np.ascontiguousarray(np.rot90(x, -(op % 4), axes=(1, 2)))


def dihedral_ops(k: int, square: bool) -> list[int]:
    """The first k ops in an order that spreads them (identity, flips, 180°, then 90°s).

    Non-square tiles get only the ops that keep their shape (at most 4)."""
    order = [0, 4, 2, 6, 1, 5, 3, 7] if square else [0, 4, 2, 6]
    return order[:max(1, min(k, len(order)))]


# --------------------------------------------------------------------------- dropout

def dropout_layers(framework) -> list:
    """The framework's dropout layers with p > 0 (where dropout sampling changes anything)."""
    import torch

    return [m for m in framework.modules()
            if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]


@contextlib.contextmanager
def live_dropout(framework):
    """Dropout layers sample masks while everything else stays in eval mode (BatchNorm running
    statistics untouched): a forward pre-hook puts each dropout layer in train mode, whatever
    the framework's `translate` does with `.eval()`."""
    layers = dropout_layers(framework)
    was = [m.training for m in layers]

    def force(module, _args):
        module.training = True

    hooks = [m.register_forward_pre_hook(force) for m in layers]
    try:
        yield layers
    finally:
        for h, m, w in zip(hooks, layers, was):
            h.remove()
            m.training = w


# --------------------------------------------------------------------------- the estimator

def sample_seed(seed: int, k: int) -> int:
    """Seed of sample k (k = 0: the caller's seed, i.e. the plain translation)."""
    return (int(seed) + 104_729 * int(k)) % (2**31 - 1)


def resolve_method(framework, method: str = "auto") -> str:
    """'auto' -> the family's method (registry), checked against what the network has."""
    from her2core.models import registry

    if method not in METHODS:
        raise UserError(f"--confidence-method {method!r}: choose one of {', '.join(METHODS)}")
    family = registry.family(framework.name)
    has_dropout = bool(dropout_layers(framework))
    if method == "auto":
        if family == "dm":
            return "seeds"
        return "tta+dropout" if has_dropout else "tta"
    if "dropout" in method and not has_dropout:
        raise UserError(f"--confidence-method {method}: {framework.name} has no dropout layers "
                        "(p > 0); use tta or seeds")
    return method


def default_samples(method: str, device) -> int:
    cpu, gpu = DEFAULT_SAMPLES[method]
    return gpu if getattr(device, "type", str(device)) == "cuda" else cpu


@dataclass
class ConfidenceSettings:
    method: str = "auto"
    samples: int | None = None  # K; None -> DEFAULT_SAMPLES for the device

    def check(self) -> None:
        if self.samples is not None and self.samples < 2:
            raise UserError(f"--confidence-samples {self.samples}: needs at least 2 predictions")


class ConfidenceEstimator:
    """K predictions per tile from one framework (or an ensemble), as uncertainty or uint8 maps.

    `frameworks`: the main framework first, optional ensemble members after it (same family).
    """

    def __init__(self, frameworks, settings: ConfidenceSettings | None = None, *,
                 steps: int | None = None, device=None):
        from her2core.inference.tiles import _device_of

        self.frameworks = list(frameworks) if isinstance(frameworks, (list, tuple)) else [frameworks]
        settings = settings or ConfidenceSettings()
        settings.check()
        self.method = resolve_method(self.frameworks[0], settings.method)
        self.device = device if device is not None else _device_of(self.frameworks[0])
        self.samples = settings.samples or default_samples(self.method, self.device)
        if "tta" in self.method and self.samples > 8:
            raise UserError(f"--confidence-samples {self.samples}: the dihedral group has 8 ops")
        self.steps = steps

    def describe(self) -> dict:
        from her2core.models import registry

        return {"method": self.method, "samples": int(self.samples),
                "family": registry.family(self.frameworks[0].name),
                "ensemble": len(self.frameworks), "u_max": U_MAX,
                "uncertainty": "mean over RGB of per-pixel std of K predictions, [0,1] units",
                "confidence": "1 - min(u / u_max, 1), uint8 = round(255 c)"}

    def predictions(self, he_uint8: np.ndarray, seed: int = 0):
        """Yields K predictions, each RGB uint8 (N, H, W, 3) in the input's orientation."""
        import torch

        from her2core.inference.tiles import translate_batch

        he = np.asarray(he_uint8)
        if he.ndim == 3:
            he = he[None]
        square = he.shape[1] == he.shape[2]
        ops = (dihedral_ops(self.samples, square) if "tta" in self.method
               else [0] * self.samples)
        k_total = len(ops)
        for k in range(k_total):
            fw = self.frameworks[k % len(self.frameworks)]
            op, s = ops[k], sample_seed(seed, k)
            x = dihedral(he, op)
            ctx = live_dropout(fw) if "dropout" in self.method else contextlib.nullcontext()
            devices = [self.device] if getattr(self.device, "type", "") == "cuda" else []
            with ctx, torch.random.fork_rng(devices=devices):
                torch.manual_seed(s)  # dropout masks draw from the global generator
                y = translate_batch(fw, x, steps=self.steps, seed=s, device=self.device)
            yield dihedral_inverse(y, op)

    def uncertainty(self, he_uint8: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(first prediction uint8 (N, H, W, 3), uncertainty float32 (N, H, W)), Welford-streamed."""
        first, mean, m2, n = None, None, None, 0
        for y in self.predictions(he_uint8, seed):
            x = y.astype(np.float32) / 255.0
            if first is None:
                first, mean, m2 = y, np.zeros_like(x), np.zeros_like(x)
            n += 1
            d = x - mean
            mean += d / n
            m2 += d * (x - mean)
        u = np.sqrt(np.maximum(m2 / n, 0.0)).mean(axis=-1).astype(np.float32)
        return first, u

    def confidence_uint8(self, he_uint8: np.ndarray, seed: int = 0) -> np.ndarray:
        """(N, H, W) uint8 confidence maps."""
        return confidence_to_uint8(uncertainty_to_confidence(self.uncertainty(he_uint8, seed)[1]))
