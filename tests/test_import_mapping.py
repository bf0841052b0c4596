"""`her2 import` name mapping against the reference repositories' own key lists (paper settings).

tests/fixtures/reference_keys/<framework>.json holds, per file the reference code writes, the
names, shapes and dtypes of everything in it (written by benchmarks/reference_import.py
--write-fixtures from the reference code). Here those become meta tensors (no memory) and go
through the importer against our `paper` networks: every reference tensor must land in exactly
one of our tensors (or be a documented, checked drop), every one of our tensors the file is
meant to fill must be filled, and mapping back must give the reference names and shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from her2core.errors import UserError
from her2core.models.importing import IMPORTERS, framework_config, importer
from her2core.models.importing.core import DROP, convert, to_reference

FIXTURES = Path(__file__).parent / "fixtures" / "reference_keys"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}


def build(desc, device="meta", generator=None):
    """The saved object of a fixture, tensors on `device` (random values when not meta)."""
    if isinstance(desc, dict) and set(desc) == {"shape", "dtype"}:
        dtype = DTYPES[desc["dtype"]]
        if device == "meta":
            return torch.empty(desc["shape"], dtype=dtype, device="meta")
        if dtype.is_floating_point:
            return torch.randn(desc["shape"], generator=generator).to(dtype)
        return torch.randint(0, 100, desc["shape"], generator=generator, dtype=dtype)
    if isinstance(desc, dict):
        return {k: build(v, device, generator) for k, v in desc.items()}
    if isinstance(desc, list):
        return [build(v, device, generator) for v in desc]
    return desc


def fixture(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())


def skeleton(name, preset="paper", overrides=None):
    cls, mod = importer(name)
    cfg = framework_config(cls, preset, overrides)
    with torch.device("meta"):
        net = cls(cfg)
    return cls, mod, cfg, net.state_dict()


CASES = [(fw, f) for fw in IMPORTERS for f in fixture(fw)["files"]]

# our networks a file does not hold, which stay initialised (inference never uses them)
NOT_IN_FILE = {("pyramid_pix2pix", "latest_net_G.pth"): {"D"}, ("asp", "latest_net_G.pth"): {"D", "F"},
               ("bcistainer", "model_best_psnr.pth"): {"C", "D"}}
DROPPED = {"bcistainer": {"initted"},  # the ema-pytorch flag (and, in ckpt-*, Gema.online_model == G)
           "bbdm": {"m_t", "m_tminus", "variance_t", "variance_tminus", "variance_t_tminus",
                    "posterior_variance_t"}}


@pytest.mark.parametrize("name,filename", CASES)
def test_reference_keys_land_exactly_once_and_round_trip(name, filename):
    _cls, mod, cfg, ours = skeleton(name)
    saved = build(fixture(name)["files"][filename])
    paths = [Path(filename)] * len(mod.FILES)
    plan = mod.plan([saved] * len(mod.FILES), paths, cfg)
    filled = {}
    for part in plan.parts:
        out = convert(part.tensors, part.target(ours), part.rules, source=part.label)
        kept = {k: v for k, v in part.tensors.items() if part.rules.to_ours(k) is not DROP}
        dropped = set(part.tensors) - set(kept)
        assert {k.split(".")[0] for k in dropped} <= DROPPED.get(name, set()) | {"online_model"}, dropped
        assert len(out) == len(kept)  # one of ours per reference tensor, none twice
        back = to_reference(out, part.rules)
        assert set(back) == set(kept)
        assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in kept.items()}
        for k in part.land(out):  # the ADM view of a diffusers UNet, relaid out onto its own names
            assert part.prefix + k not in filled, f"{k} filled by {filled[part.prefix + k]} and {part.label}"
            filled[part.prefix + k] = part.label
    left = {k.split(".")[0] for k in ours if k not in filled}
    assert left == NOT_IN_FILE.get((name, filename), set())


def test_paper_counts_match_the_fixture_parameter_totals():
    """The fixture's trainable-weight totals equal the counts in docs/references.md."""
    expect = {"pyramid_pix2pix": 11383427, "asp": 7837699, "consistency": 526311683}
    for name, total in expect.items():
        (desc,) = list(fixture(name)["files"].values())
        n = 0
        for key, d in desc.items():
            if d["dtype"] != "float32" or key.endswith(("running_mean", "running_var", "_u", "_v", "filt")):
                continue
            n += int(torch.tensor(d["shape"]).prod()) if d["shape"] else 1
        assert n == total, name


def _saved(name, filename):
    return build(fixture(name)["files"][filename])


def _plan_and_convert(name, saved, overrides=None, filename="x.pth"):
    _cls, mod, cfg, ours = skeleton(name, overrides=overrides)
    plan = mod.plan([saved] * len(mod.FILES), [Path(filename)] * len(mod.FILES), cfg)
    for part in plan.parts:
        convert(part.tensors, part.target(ours), part.rules, source=part.label, hint=mod.HINT)


def test_unconditional_consistency_checkpoint_fails_on_its_first_conv():
    saved = _saved("consistency", "ema_0.9999432189950708_000000.pt")
    saved["input_blocks.0.0.weight"] = torch.empty(256, 3, 3, 3, device="meta")  # the published models
    with pytest.raises(UserError, match=r"'input_blocks\.0\.0\.weight' has shape \[256, 3, 3, 3\], "
                                        r"expected \[256, 6, 3, 3\]"):
        _plan_and_convert("consistency", saved)


def test_class_conditional_guided_diffusion_checkpoint_is_refused_by_name():
    saved = _saved("ddib", "ema_0.9999_NNNNNN.pt")
    saved = {"label_emb.weight": torch.empty(1000, 512, device="meta"), **saved}
    with pytest.raises(UserError, match=r"unexpected tensor 'label_emb\.weight'"):
        _plan_and_convert("ddib", saved)


def test_other_hyper_parameters_are_given_with_set():
    """A 192-channel UNet's checkpoint fits once --set unet.model_channels=192 says so."""
    cls, _mod, cfg, _ours = skeleton("ddib", overrides={"unet.model_channels": 192})
    assert cfg.unet.model_channels == 192 and cfg.unet.channel_mult == (1, 1, 2, 2, 4, 4)
    with pytest.raises(UserError, match=r"unknown setting 'unet\.channels'"):
        framework_config(cls, "paper", {"unet.channels": 3})
    saved = _saved("ddib", "ema_0.9999_NNNNNN.pt")
    with pytest.raises(UserError, match=r"'time_embed\.0\.weight' has shape \[512, 128\], expected \[768, 192\]"):
        _plan_and_convert("ddib", saved, overrides={"unet.model_channels": 192})


def test_consistency_attention_rows_are_permuted_not_reshaped():
    """Upstream qkv rows are (q|k|v, heads, d); ours (heads, q|k|v, d): the permutation is exact."""
    from her2core.models.diffusion.unet import UNetConfig
    from her2core.models.importing.consistency import rules

    r = rules(UNetConfig(num_head_channels=2))
    c = 4  # 2 heads of 2 channels
    ref = torch.arange(3 * c * c, dtype=torch.float32).reshape(3 * c, c, 1, 1)
    ours = r.value_to_ours("middle_block.1.qkv.weight", ref)
    assert ours.shape == (3 * c, c, 1)
    rows = ours[:, 0, 0].long() // c  # which reference row each of our rows holds
    # ours: head 0 -> q0 q1 k0 k1 v0 v1, head 1 -> q2 q3 ...; ref rows: q0..q3, k0..k3, v0..v3
    assert rows.tolist() == [0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11]
    assert torch.equal(r.value_to_ref("middle_block.1.qkv.weight", ours), ref)
