"""Reference checkpoints through `her2 import` + `her2 translate`, against the reference code itself.

    python benchmarks/reference_import.py --refs DIR [--frameworks all] [--work DIR] [--threads 2]
    python benchmarks/reference_import.py --refs DIR --write-fixtures tests/fixtures/reference_keys
    python benchmarks/reference_import.py --refs DIR --frameworks ddib,consistency,bbdm --unet-only

DIR holds the six reference repositories as checked out (commits in docs/references.md):
BCI/, AdaptiveSupervisedPatchNCE/, BCIStainer/, BBDM/, ddib/,
consistency_models/. Nothing is downloaded; the reference code is imported from DIR, never
copied. Its own dependencies must be importable: einops (BBDM, consistency_models) and
ema-pytorch 0.0.10 (BCIStainer), e.g. `pip install --target DIR/_deps einops ema-pytorch==0.0.10`
(DIR/_deps is put on sys.path). Modules that only the reference *training* needs are stubbed
in sys.modules (piq, mpi4py, blobfile: consistency_models' karras_diffusion imports them).

For each framework: build the network with the reference factory and the `paper` settings,
give every tensor seeded random values (zero-initialised output layers would make any two
networks agree), save it the way the reference saves it, run `her2 import` and
`her2 translate --tiles` as subprocesses, and compare on 256² tiles:
- float: our run's `translate` (what the CLI calls) against the reference forward / sampler
  on the same input, max |difference| in [-1, 1] (acceptance: <= 1e-4);
- the CLI's PNGs against the reference output rounded the same way (levels 0-255).
Deterministic modes: GANs in eval mode; DDIB's DDIM encode + decode (eta 0, the reference's
encode to alpha-bar 0: `--set encode_to_zero=true`); BBDM and the consistency model through
the UNet at fixed (x_t, t) and the full sampler with the same seeded noise (BBDM 3 steps,
CM one step), the reference drawing from torch's global generator seeded alike.
consistency_models' legacy attention casts q, k, v to fp16; it is run as written and, for
the float comparison, also with that cast made a no-op (a Tensor subclass whose `half()`
returns itself, no reference code changed), since our attention is fp32.

Measured on this project's 2-core CPU (fp32): pix2pix, ASP, BCIStainer and BBDM (UNet and the
3-step sampler) give 0.0 with the former own ADM UNet; with the diffusers UNet2DModel
(2026-12-02) BBDM gives 1.6e-6 for the UNet and 5.2e-6 for the 3-step sampler (PNGs: 40 of
196,608 values one level apart), float rounding of other kernels (separate q/k/v Linear layers
instead of one fused Conv1d); the consistency model 1.8e-6 (UNet 3.2e-6; 8.6e-5 against the fp16
attention as written). DDIB (5 + 5 steps, paper UNets, 256²): 0.0 for the latent, the
decode and the whole translation, once `models/diffusion/ddim.py` followed guided-diffusion's
float32 arithmetic order (before: 2.1e-3). That exactness matters: DDIM encoding to alpha-bar
0 and decoding back amplifies float32 rounding ~1000x, so the reference itself moves by
9.4e-3 when its input moves by 1e-6 (`reference_vs_itself_input_moved_1e-6_max_abs`, a
sensitivity, not a comparison; `translate_within_reference_float32_sensitivity` compares
with it). The CLI's PNGs differ from the rounded reference by one level in ~0.1 % of values
(BBDM 9, consistency 3, DDIB ~230 of 196,608): `her2 translate` feeds channels-last tiles,
so convolutions pick other kernels and values at rounding boundaries flip.

--unet-only (diffusion frameworks) compares the UNet forward alone on the same randomised weights at
64², fixed (x_t, t): measured 2026-12-02 with the diffusers UNet2DModel, BBDM 1.7e-6, DDIB 1.1e-6,
consistency model 4.7e-5 (its reference attention as written, q, k, v cast to fp16); ~2 minutes.

--write-fixtures writes, per framework, the names, shapes and dtypes of what the reference
saves (built on the meta device: no memory), for the CI tests in tests/test_import_*.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import subprocess
import sys
import time
import types
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRAMEWORKS = ("pyramid_pix2pix", "asp", "bcistainer", "bbdm", "ddib", "consistency")
COMMITS = {"BCI": "841bd52ef70b9277706da0bf63eb7ea62e95952c",
           "AdaptiveSupervisedPatchNCE": "b113ed287efaea9b848c8e1859d04072cb6eb449",
           "BCIStainer": "ab2740a12817aa1bd2ed3a01e3c5235293fc4926",
           "BBDM": "02c3b13c9f9dfab0853e32123100680a0640c4ed",
           "ddib": "89e5c2799159e605890bf5463d065992b76f878a",
           "consistency_models": "e32b69ee436d518377db86fb2127a3972d0d8716"}
_TOP_PACKAGES = ("models", "model", "libs", "guided_diffusion", "cm", "runners", "options", "util", "data")


# -- importing the reference code -------------------------------------------------------------


def _file_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def _repo(root: Path, stubs: dict | None = None):
    """`root` first on sys.path, its top-level packages fresh (BCI and ASP both call theirs `models`)."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _TOP_PACKAGES}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(root))
    for k, v in (stubs or {}).items():
        sys.modules[k] = v
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k.split(".")[0] in _TOP_PACKAGES or k in (stubs or {})]:
            del sys.modules[k]
        sys.modules.update(saved)


def _stub(name: str, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def _cm_stubs():
    class _LPIPS:  # only constructed for loss_norm='lpips'; never called here
        def __init__(self, *a, **k):
            raise RuntimeError("piq.LPIPS is stubbed")

    class _Comm:
        def Get_rank(self):
            return 0

        def Get_size(self):
            return 1

    return {"piq": _stub("piq", LPIPS=_LPIPS), "mpi4py": _stub("mpi4py", MPI=_stub("MPI", COMM_WORLD=_Comm())),
            "mpi4py.MPI": _stub("MPI", COMM_WORLD=_Comm()), "blobfile": _stub("blobfile")}


def _ns(obj):
    """yaml dicts -> attribute namespaces (what BBDM's main.py and omegaconf give the reference code)."""
    if isinstance(obj, dict):
        return Namespace(**{k: _ns(v) for k, v in obj.items()})
    return obj


class _AttrDict(dict):
    """BCIStainer reads configs through omegaconf (not installed): attribute access over a dict."""

    __getattr__ = dict.__getitem__


# -- reference networks (paper settings) --------------------------------------------------------


def ref_pix2pix(refs: Path):
    with _repo(refs / "BCI" / "PyramidPix2pix"):
        nets = _file_module(refs / "BCI/PyramidPix2pix/models/networks.py", "bci_networks")
        return nets.define_G(3, 3, 64, "resnet_9blocks", "batch", True, "normal", 0.02, [])


def ref_asp(refs: Path):
    with _repo(refs / "AdaptiveSupervisedPatchNCE"):
        nets = _file_module(refs / "AdaptiveSupervisedPatchNCE/models/networks.py", "asp_networks")
        opt = Namespace(weight_norm="spectral")
        return nets.define_G(3, 3, 64, "resnet_6blocks", "instance", False, "xavier", 0.02, False, False, [], opt)


def _bcistainer_modules(refs: Path):
    import yaml

    cfg = yaml.safe_load((refs / "BCIStainer/configs/stainer_basic_cmp/exp3.yaml").read_text())
    return cfg, (lambda part: _AttrDict(name=cfg[part]["name"], params=cfg[part]["params"],
                                        init=cfg[part]["init"]))


def ref_bcistainer(refs: Path):
    """(G, D, C, EMA wrapper) as libs/utils/base.py builds them for exp3."""
    _cfg, part = _bcistainer_modules(refs)
    with _repo(refs / "BCIStainer"):
        models = importlib.import_module("libs.models")
        from ema_pytorch import EMA

        G, D, C = models.define_G(part("G")), models.define_D(part("D")), models.define_C(part("C"))
        ema = EMA(G, beta=0.99, update_after_step=100, update_every=1, power=1.0)
    return G, D, C, ema


def _bbdm_config(refs: Path, sample_step: int = 200):
    import yaml

    cfg = yaml.load((refs / "BBDM/configs/Template-BBDM.yaml").read_text(), Loader=yaml.UnsafeLoader)
    bb = cfg["model"]["BB"]["params"]
    bb["UNetParams"]["image_size"] = 256  # the template's 64 is upstream issue #47 (asserted in forward only)
    bb["sample_step"] = sample_step
    return _ns(cfg["model"])


def ref_bbdm(refs: Path, sample_step: int = 200):
    """(BrownianBridgeModel, EMA) as BBDMRunner/BaseRunner build them from Template-BBDM.yaml."""
    with _repo(refs / "BBDM"):
        bbm = importlib.import_module("model.BrownianBridge.BrownianBridgeModel")
        ema_mod = importlib.import_module("runners.base.EMA")
        net = bbm.BrownianBridgeModel(_bbdm_config(refs, sample_step))
        ema = ema_mod.EMA(0.995)
        ema.register(net)
    return net, ema


def ref_ddib(refs: Path, respacing: str = ""):
    """(UNet, SpacedDiffusion) from guided-diffusion's defaults at 256 px (ddib's script_util)."""
    with _repo(refs / "ddib"):
        su = importlib.import_module("guided_diffusion.script_util")
        args = su.model_and_diffusion_defaults()
        args.update(image_size=256, timestep_respacing=respacing)
        return su.create_model_and_diffusion(**args)


LSUN_CT_FLAGS = {"image_size": 256, "num_channels": 256, "num_res_blocks": 2, "channel_mult": "",
                 "attention_resolutions": "32,16,8", "num_heads": 4, "num_head_channels": 64,
                 "num_heads_upsample": -1, "use_scale_shift_norm": False, "dropout": 0.0,
                 "resblock_updown": True, "use_fp16": False, "learn_sigma": False, "class_cond": False,
                 "use_new_attention_order": False}


def ref_consistency(refs: Path):
    """(UNet with 6 input channels, KarrasDenoiser) from cm/script_util with the LSUN-256 CT flags.

    create_model hard-codes in_channels=3; the conditional variant (docs/references.md) takes 6, so
    the UNetModel it calls is wrapped to receive in_channels=6. Attention: the legacy path
    (flash_attn is CUDA-only), by editing AttentionBlock's default, as param_counts.md did.
    """
    with _repo(refs / "consistency_models", _cm_stubs()):
        unet = importlib.import_module("cm.unet")
        su = importlib.import_module("cm.script_util")
        kd = importlib.import_module("cm.karras_diffusion")
        init = unet.AttentionBlock.__init__
        defaults = list(init.__defaults__)
        names = init.__code__.co_varnames[1:init.__code__.co_argcount]
        defaults[names.index("attention_type") - (len(names) - len(defaults))] = "legacy"
        init.__defaults__ = tuple(defaults)
        real = su.UNetModel
        su.UNetModel = lambda **kw: real(**{**kw, "in_channels": 6})
        try:
            net = su.create_model(**LSUN_CT_FLAGS)
        finally:
            su.UNetModel = real
        diffusion = kd.KarrasDenoiser(sigma_data=0.5, sigma_max=80.0, sigma_min=0.002, distillation=True,
                                      weight_schedule="uniform", loss_norm="l2")
        return net, diffusion, kd, unet


# -- what the reference saves ---------------------------------------------------------------------


def saved_objects(fw: str, refs: Path, seed: int = 0) -> dict[str, object]:
    """{file name: object} exactly as the reference's torch.save calls write them (random weights)."""
    import torch

    if fw == "pyramid_pix2pix":
        g = randomize(ref_pix2pix(refs), seed)
        return {"latest_net_G.pth": g.state_dict()}
    if fw == "asp":
        g = ref_asp(refs)
        randomize(g, seed)
        g.train()
        with torch.no_grad():  # a few power iterations, so u and v are not their initial draws
            for _ in range(3):
                g(torch.rand(1, 3, 64, 64) * 2 - 1)
        return {"latest_net_G.pth": g.state_dict()}
    if fw == "bcistainer":
        G, D, C, ema = ref_bcistainer(refs)
        randomize(G, seed)
        randomize(D, seed + 1)
        randomize(C, seed + 2)
        randomize(ema.ema_model, seed + 3)  # the shadow differs from the online model, as after training
        ema.step.fill_(12345)
        ema.initted.fill_(1.0)
        return {"model_best_psnr.pth": ema.state_dict(),
                "ckpt-000150.pth": {"epoch": 150, "D": D.state_dict(), "G": G.state_dict(),
                                    "D_opt": torch.optim.AdamW(D.parameters()).state_dict(),
                                    "G_opt": torch.optim.AdamW(G.parameters()).state_dict(),
                                    "Gema": ema.state_dict(), "C": C.state_dict(),
                                    "C_opt": torch.optim.AdamW(C.parameters()).state_dict()}}
    if fw == "bbdm":
        net, ema = ref_bbdm(refs)
        randomize(net.denoise_fn, seed)
        ema.shadow = {k: v + 0.01 * torch.randn_like(v) for k, v in ema.shadow.items()}
        return {"last_model.pth": {"step": 400000, "model": net.state_dict(), "epoch": 200, "ema": ema.shadow}}
    if fw == "ddib":
        he, _ = ref_ddib(refs)
        ihc, _ = ref_ddib(refs)
        return {"ema_0.9999_he.pt": randomize(he, seed).state_dict(),
                "ema_0.9999_ihc.pt": randomize(ihc, seed + 1).state_dict()}
    if fw == "consistency":
        net = ref_consistency(refs)[0]
        return {"ema_0.9999432189950708_000000.pt": randomize(net, seed).state_dict()}
    raise ValueError(fw)


def randomize(net, seed: int, scale: float = 0.02):
    """Seeded values for every tensor: weights keep their init plus noise (so zero-init layers are
    non-zero), norm gains near 1, BatchNorm statistics off their defaults."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            p.add_(noise.to(p.dtype))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return net


# -- fixtures for the CI tests ------------------------------------------------------------------


def _describe(obj):
    import torch

    if torch.is_tensor(obj):
        return {"shape": list(obj.shape), "dtype": str(obj.dtype).replace("torch.", "")}
    if isinstance(obj, dict):
        return {str(k): _describe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_describe(v) for v in obj]
    return obj if isinstance(obj, (int, float, str, bool)) or obj is None else repr(type(obj))


_REPO_OF = {"pyramid_pix2pix": "BCI", "asp": "AdaptiveSupervisedPatchNCE", "bcistainer": "BCIStainer",
            "bbdm": "BBDM", "ddib": "ddib", "consistency": "consistency_models"}
_BUILT_BY = {
    "pyramid_pix2pix": "PyramidPix2pix/models/networks.py define_G(3, 3, 64, 'resnet_9blocks', 'batch', "
                       "use_dropout=True, 'normal', 0.02); latest_net_G.pth = G.state_dict()",
    "asp": "models/networks.py define_G(3, 3, 64, 'resnet_6blocks', 'instance', False, 'xavier', 0.02, "
           "no_antialias=False, no_antialias_up=False, opt.weight_norm='spectral'); latest_net_G.pth = "
           "G.state_dict()",
    "bcistainer": "configs/stainer_basic_cmp/exp3.yaml through libs/models define_G/D/C and ema_pytorch 0.0.10 "
                  "EMA(G, beta=0.99, update_after_step=100, update_every=1, power=1.0) (libs/utils/base.py); "
                  "model_best_psnr.pth = Gema.state_dict(); ckpt-NNNNNN.pth = _save_checkpoint's dict "
                  "(optimiser states shown for AdamW with default settings)",
    "bbdm": "configs/Template-BBDM.yaml (UNetParams.image_size 256) through BrownianBridgeModel and "
            "runners/base/EMA.py; last_model.pth = get_checkpoint_states()'s {step, model, epoch, ema}",
    "ddib": "guided_diffusion/script_util.py create_model_and_diffusion(**model_and_diffusion_defaults(), "
            "image_size=256); ema_*.pt = model.state_dict() (one file per stain; both alike)",
    "consistency": "cm/script_util.py create_model(LSUN-256 CT flags) with in_channels 6 (conditional "
                   "variant) and legacy attention; ema_*.pt = model.state_dict()",
}


def write_fixtures(refs: Path, out: Path) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    for fw in FRAMEWORKS:
        # BBDM's schedule uses the legacy torch.Tensor constructor, which ignores the meta device
        with torch.device("cpu" if fw == "bbdm" else "meta"):
            files = saved_objects(fw, refs)
        if fw == "ddib":  # both stains have the same layout
            files = {"ema_0.9999_NNNNNN.pt": files["ema_0.9999_he.pt"]}
        repo = _REPO_OF[fw]
        doc = {"framework": fw, "reference": f"{repo}@{COMMITS[repo]}", "built_by": _BUILT_BY[fw],
               "files": {name: _describe(obj) for name, obj in files.items()}}
        path = out / f"{fw}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}")


# -- the check ----------------------------------------------------------------------------------


def _her2(*args, threads: int) -> float:
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "her2core", *map(str, args)], check=True, env=env)
    return time.perf_counter() - t0


def _tiles(folder: Path, n: int, size: int, seed: int):
    """n smooth RGB uint8 tiles (written as PNG) and the same pixels as float NCHW in [-1, 1]."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from her2core.util.atomic import write_png

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 16, size // 16, generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    img = (img + 0.1 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    u8 = (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(u8):
        write_png(folder / f"tile_{i:02d}.png", t)
    # contiguous NCHW, as the references' loaders give: BBDM draws its noise with randn_like(x_t),
    # whose values follow the input's memory layout
    return (torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()


def _png_levels(out_dir: Path, ref):
    """max |level difference| and count of differing values: CLI PNGs vs the reference rounded alike."""
    import numpy as np

    from her2core.datasets.paired import read_rgb

    want = ((ref.clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8)
    want = want.permute(0, 2, 3, 1).numpy().astype(np.int16)
    got = np.stack([read_rgb(p) for p in sorted(out_dir.glob("*.png"))]).astype(np.int16)
    diff = np.abs(got - want)
    return int(diff.max()), int((diff > 0).sum()), int(diff.size)


def _max(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


class _NoHalf:
    """Tensor subclass factory whose `.half()` is a no-op (consistency_models' legacy attention)."""

    @staticmethod
    def make():
        import torch

        class NoHalf(torch.Tensor):
            def half(self, *a, **k):
                return self

        return NoHalf


def check(fw: str, refs: Path, work: Path, threads: int) -> dict:
    import torch

    from her2core.training import load_run

    torch.manual_seed(0)
    d = work / fw
    d.mkdir(parents=True, exist_ok=True)
    files = saved_objects(fw, refs)
    for name, obj in files.items():
        torch.save(obj, d / name)
    n_tiles = 2 if fw in ("pyramid_pix2pix", "asp", "bcistainer") else 1
    x = _tiles(d / "tiles", n_tiles, 256, seed=7)
    res: dict = {"framework": fw}
    seed = 11
    cli_steps: list[str] = []
    imports = {"pyramid_pix2pix": ["latest_net_G.pth"], "asp": ["latest_net_G.pth"],
               "bcistainer": ["model_best_psnr.pth"], "bbdm": ["last_model.pth"],
               "ddib": ["ema_0.9999_he.pt", "ema_0.9999_ihc.pt"],
               "consistency": ["ema_0.9999432189950708_000000.pt"]}[fw]
    sets: list[str] = []
    with torch.no_grad():
        if fw in ("pyramid_pix2pix", "asp"):
            g = (ref_pix2pix if fw == "pyramid_pix2pix" else ref_asp)(refs)
            g.load_state_dict(files["latest_net_G.pth"])
            refs_out = {"translate": g.eval()(x)}
            if fw == "pyramid_pix2pix":  # the reference's test.py --eval (the default is without)
                sets = ["--set", "inference=eval"]
        elif fw == "bcistainer":
            G = ref_bcistainer(refs)[3]
            G.load_state_dict(files["model_best_psnr.pth"])  # as evaluator_basic.py: EMA(G).load_state_dict
            refs_out = {"translate": G.eval()(x)[0]}
        elif fw == "bbdm":
            net, _ = ref_bbdm(refs, sample_step=3)
            net.load_state_dict(files["last_model.pth"]["model"])
            for k, v in files["last_model.pth"]["ema"].items():  # BaseRunner.apply_ema: sample with the shadow
                net.get_parameter(k).data = v
            net.eval()
            g = torch.Generator().manual_seed(3)
            x_t = torch.randn(x.shape, generator=g)
            t = torch.tensor([500] * x.shape[0])
            refs_out = {"unet": net.denoise_fn(x_t, timesteps=t, context=x), "x_t": x_t, "t": t}
            torch.manual_seed(seed)
            refs_out["translate"] = net.p_sample_loop(x, context=None, clip_denoised=True)
            cli_steps = ["--steps", "3"]
        elif fw == "ddib":
            steps = 5
            he, diffusion = ref_ddib(refs, f"ddim{steps}")
            ihc, _ = ref_ddib(refs, f"ddim{steps}")
            he.load_state_dict(files["ema_0.9999_he.pt"])
            ihc.load_state_dict(files["ema_0.9999_ihc.pt"])
            he.eval()
            ihc.eval()
            z = diffusion.ddim_reverse_sample_loop(he, x, clip_denoised=False, device="cpu")
            y = diffusion.ddim_sample_loop(ihc, x.shape, noise=z, clip_denoised=True, device="cpu", eta=0.0)
            refs_out = {"translate": y, "latent": z}
            # fixed (x_t, t) through the HER2 network; the decode alone from the reference latent;
            # and how far the reference itself moves when its input moves by float32 rounding (1e-6)
            g = torch.Generator().manual_seed(3)
            refs_out["x_t"], refs_out["t"] = torch.randn(x.shape, generator=g), torch.tensor([500] * x.shape[0])
            refs_out["unet"] = ihc(refs_out["x_t"], refs_out["t"])
            x_eps = x + 1e-6 * torch.randn(x.shape, generator=g)
            z_eps = diffusion.ddim_reverse_sample_loop(he, x_eps, clip_denoised=False, device="cpu")
            y_eps = diffusion.ddim_sample_loop(ihc, x.shape, noise=z_eps, clip_denoised=True, device="cpu", eta=0.0)
            res["reference_vs_itself_input_moved_1e-6_max_abs"] = _max(y_eps, y)
            cli_steps = ["--steps", str(steps)]
            sets = ["--set", "encode_to_zero=true"]
        elif fw == "consistency":
            net, diffusion, kd, unet_mod = ref_consistency(refs)
            net.load_state_dict(files["ema_0.9999432189950708_000000.pt"])
            net.eval()

            class Cond(torch.nn.Module):  # the conditional variant: the UNet sees (c_in x_t ‖ H&E)
                def __init__(self, inner):
                    super().__init__()
                    self.inner = inner

                def forward(self, x_in, t, cond):
                    return self.inner(torch.cat([x_in, cond], 1), t)

            g = torch.Generator().manual_seed(3)
            x_in = torch.cat([torch.randn(x.shape, generator=g), x], 1)
            t = torch.full((x.shape[0],), 250.0 * float(torch.log(torch.tensor(20.0))))
            refs_out = {"unet_as_written": net(x_in, t), "x_in": x_in, "t": t}
            legacy = unet_mod.QKVAttentionLegacy.forward
            NoHalf = _NoHalf.make()

            def fp32_forward(self, qkv):
                return legacy(self, qkv.as_subclass(NoHalf)).as_subclass(torch.Tensor)

            unet_mod.QKVAttentionLegacy.forward = fp32_forward
            try:
                refs_out["unet"] = net(x_in, t)
                torch.manual_seed(seed)
                refs_out["translate"] = kd.karras_sample(diffusion, Cond(net), x.shape, steps=151,
                                                         model_kwargs={"cond": x}, device="cpu",
                                                         sampler="onestep", clip_denoised=True)
            finally:
                unet_mod.QKVAttentionLegacy.forward = legacy
        del files
    import gc

    gc.collect()
    run = d / "run"
    res["import_s"] = _her2("import", fw, *[d / f for f in imports], "--out", run, "--overwrite", *sets,
                            threads=threads)
    fwk = load_run(run)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        steps = int(cli_steps[1]) if cli_steps else None
        ours = fwk.translate(x, steps=steps, generator=gen)
        res["translate_max_abs"] = _max(ours, refs_out["translate"])
        if fw == "bbdm":
            res["unet_max_abs"] = _max(fwk.unet_ema(torch.cat([refs_out["x_t"], x], 1), refs_out["t"]),
                                       refs_out["unet"])
        if fw == "consistency":
            o = fwk.unet_ema(refs_out["x_in"], refs_out["t"])
            res["unet_max_abs"] = _max(o, refs_out["unet"])
            res["unet_max_abs_vs_fp16_attention_as_written"] = _max(o, refs_out["unet_as_written"])
        if fw == "ddib":
            z = fwk.diffusion.ddim_encode(fwk.ema_he, x, steps=steps, clip=False, to_zero=True)
            res["latent_max_abs"] = _max(z, refs_out["latent"])
            res["unet_max_abs"] = _max(fwk.ema_ihc(refs_out["x_t"], refs_out["t"]), refs_out["unet"])
            res["decode_from_reference_latent_max_abs"] = _max(
                fwk.decode(refs_out["latent"], stain="ihc", steps=steps), refs_out["translate"])
    del fwk
    gc.collect()
    out_dir = d / "translated"
    res["translate_cli_s"] = _her2("translate", "--run", run, "--tiles", d / "tiles", "--out", out_dir,
                                   "--seed", seed, "--batch-size", 8, "--device", "cpu", *cli_steps,
                                   threads=threads)
    res["png_max_level_diff"], res["png_values_differing"], res["png_values"] = \
        _png_levels(out_dir, refs_out["translate"])
    ref_y = refs_out["translate"].float()
    res["reference_output_range"] = [round(float(ref_y.min()), 4), round(float(ref_y.max()), 4)]
    res["reference_output_std"] = round(float(ref_y.std()), 4)
    if "reference_vs_itself_input_moved_1e-6_max_abs" in res:  # DDIB: see the module docstring
        res["translate_within_reference_float32_sensitivity"] = (
            res["translate_max_abs"] <= res["reference_vs_itself_input_moved_1e-6_max_abs"])
    res["pass"] = res["translate_max_abs"] <= 1e-4 and all(
        v <= 1e-4 for k, v in res.items()
        if k.endswith("_max_abs") and "as_written" not in k and not k.startswith("reference_vs_itself"))
    return res


def unet_check(fw: str, refs: Path, work: Path) -> dict:
    """The diffusion UNet alone: the reference network and ours (through `her2 import`'s mapping)
    on the same randomised weights, one forward at 64² and a fixed (x_t, t); fast on a CPU."""
    import torch

    from her2core.models.importing import convert_checkpoints

    torch.manual_seed(0)
    files = saved_objects(fw, refs)
    d = work / f"{fw}_unet"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, obj in files.items():
        torch.save(obj, d / name)
        paths.append(d / name)
    cls, cfg, state, _plan, _skeleton = convert_checkpoints(fw, paths, preset="paper")
    ours = cls(cfg)
    ours.load_state_dict(state, strict=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if fw == "ddib":
            ref, _ = ref_ddib(refs)
            ref.load_state_dict(files["ema_0.9999_he.pt"])
            x, t = torch.randn(1, 3, 64, 64, generator=g), torch.tensor([500])
            a, b = ref.eval()(x, t), ours.ema_he.eval()(x, t)
        elif fw == "consistency":  # the reference's legacy attention runs as written (q, k, v in fp16)
            ref = ref_consistency(refs)[0]
            ref.load_state_dict(files["ema_0.9999432189950708_000000.pt"])
            x, t = torch.randn(1, 6, 64, 64, generator=g), torch.tensor([0.37])
            a, b = ref.eval()(x, t), ours.unet_ema.eval()(x, t)
        elif fw == "bbdm":
            net, _ = ref_bbdm(refs, sample_step=3)
            net.load_state_dict(files["last_model.pth"]["model"])
            x, x_t = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, torch.randn(1, 3, 64, 64, generator=g)
            t = torch.tensor([500])
            a = net.denoise_fn.eval()(x_t, timesteps=t, context=x)
            b = ours.unet.eval()(torch.cat([x_t, x], dim=1), t)  # ours takes the condition concatenated
        else:
            raise ValueError(f"{fw}: --unet-only is for the diffusion frameworks")
    diff = float((a.float() - b.float()).abs().max())
    return {"framework": fw, "unet_max_abs": diff, "reference_max_abs": float(a.abs().max()),
            "pass": diff <= 1e-4}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--refs", type=Path, required=True, help="folder holding the six reference repositories")
    p.add_argument("--frameworks", default="all", help="comma-separated subset (default all)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write-fixtures", type=Path, default=None, help="write the key/shape lists and stop")
    p.add_argument("--unet-only", action="store_true",
                   help="diffusion frameworks: compare the UNet forward alone (minutes, not hours)")
    args = p.parse_args(argv)
    deps = args.refs / "_deps"
    if deps.is_dir():
        sys.path.insert(0, str(deps))
    import torch

    torch.set_num_threads(args.threads)
    if args.write_fixtures:
        write_fixtures(args.refs, args.write_fixtures)
        return 0
    names = FRAMEWORKS if args.frameworks == "all" else tuple(args.frameworks.split(","))
    import tempfile

    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="her2_refimport_")))
        results = []
        for fw in names:
            r = unet_check(fw, args.refs, work) if args.unet_only else check(fw, args.refs, work, args.threads)
            print(json.dumps(r), flush=True)
            results.append(r)
    ok = all(r["pass"] for r in results)
    print("all pass" if ok else "FAILED: " + ", ".join(r["framework"] for r in results if not r["pass"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
