"""`her2 import` on files saved the way each reference saves them; its errors; the run it writes.

GAN checkpoints are built at paper size from the reference key lists (tests/fixtures/
reference_keys) with seeded random values and torch.save'd in the reference's container;
the diffusion containers (BBDM's {step, model, epoch, ema} with schedule buffers, DDIB's two
bare state dicts, fp16 consistency weights) are built for the `tiny` networks, under the
reference names (the mapping of the paper-size key lists is pinned in test_import_mapping).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from her2core.cli import main
from her2core.errors import UserError
from her2core.models.importing import convert_checkpoints, importer
from her2core.models.importing.core import DROP, sub_state, to_reference
from her2core.training import load_run
from her2core.training.import_run import import_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "reference_keys"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}


def build(desc, generator):
    if isinstance(desc, dict) and set(desc) == {"shape", "dtype"}:
        dtype = DTYPES[desc["dtype"]]
        if dtype.is_floating_point:
            return (0.02 * torch.randn(desc["shape"], generator=generator)).to(dtype)
        return torch.randint(0, 100, desc["shape"], generator=generator, dtype=dtype)
    if isinstance(desc, dict):
        return {k: build(v, generator) for k, v in desc.items()}
    if isinstance(desc, list):
        return [build(v, generator) for v in desc]
    return desc


def reference_file(tmp_path, name, filename, seed=0):
    desc = json.loads((FIXTURES / f"{name}.json").read_text())["files"][filename]
    obj = build(desc, torch.Generator().manual_seed(seed))
    path = tmp_path / filename
    torch.save(obj, path)
    return path, obj


def reference_names(run_dir, name, prefix, rules):
    """Our imported tensors under `prefix`, mapped back to the reference names."""
    fw = load_run(run_dir)
    return to_reference(sub_state(fw.state_dict(), prefix), rules)


def assert_same(back: dict, ref: dict, skip=()):
    kept = {k: v for k, v in ref.items() if k not in skip}
    assert set(back) == set(kept)
    for k, v in kept.items():
        assert back[k].shape == v.shape and torch.equal(back[k].to(v.dtype), v), k


# -- the three GANs at paper size --------------------------------------------------------------


def test_pix2pix_latest_net_G_imports_exactly_and_translates(tmp_path, capsys):
    from her2core.models.importing.pix2pix import rules

    path, sd = reference_file(tmp_path, "pyramid_pix2pix", "latest_net_G.pth")
    assert main(["import", "pyramid_pix2pix", str(path), "--out", str(tmp_path / "run")]) == 0
    assert_same(reference_names(tmp_path / "run", "pyramid_pix2pix", "G.", rules()), sd)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    src = run["imported"]["sources"][0]
    import hashlib

    assert src["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert run["imported"]["initialised_not_imported"] == ["D"] and run["preset"] == "paper"
    # the run works with `her2 translate` like a trained one
    from her2core.util.atomic import write_png

    tiles = tmp_path / "tiles"
    write_png(tiles / "a.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert main(["translate", "--run", str(tmp_path / "run"), "--tiles", str(tiles),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "a.png").is_file()


def test_asp_spectral_norm_vectors_are_copied(tmp_path):
    from her2core.models.importing.asp import rules

    path, sd = reference_file(tmp_path, "asp", "latest_net_G.pth")
    import_checkpoint("asp", [path], tmp_path / "run")
    back = reference_names(tmp_path / "run", "asp", "G.", rules())
    assert_same(back, sd)
    assert any(k.endswith("weight_u") for k in back)  # u/v copied, not re-estimated


@pytest.mark.parametrize("filename", ["model_best_psnr.pth", "ckpt-000150.pth"])
def test_bcistainer_model_and_checkpoint_files(tmp_path, filename):
    from her2core.models.importing import bcistainer as b

    path, obj = reference_file(tmp_path, "bcistainer", filename)
    if filename.startswith("ckpt"):
        obj["Gema"].update({f"online_model.{k}": v for k, v in obj["G"].items()})  # one module, two names
        torch.save(obj, path)
    import_checkpoint("bcistainer", [path], tmp_path / "run")
    fw = load_run(tmp_path / "run")
    state = fw.state_dict()
    wrapper = obj if filename.startswith("model") else obj["Gema"]
    # inference weights = the wrapper's ema_model
    ema = to_reference(sub_state(state, "G_ema.model."), b.g_rules())
    assert_same({f"ema_model.{k}": v for k, v in ema.items()},
                {k: v for k, v in wrapper.items() if k.startswith("ema_model.")})
    assert int(fw.G_ema.step) == int(wrapper["step"][0])
    online = obj if filename.startswith("model") else {f"online_model.{k}": v for k, v in obj["G"].items()}
    g = to_reference(sub_state(state, "G."), b.g_rules())
    assert_same({f"online_model.{k}": v for k, v in g.items()},
                {k: v for k, v in online.items() if k.startswith("online_model.")})
    if filename.startswith("ckpt"):
        assert_same(to_reference(sub_state(state, "D."), b.d_rules(2)), obj["D"])
        assert_same(to_reference(sub_state(state, "C."), b.c_rules()), obj["C"])
        # the online model in Gema must be G itself
        obj["Gema"]["online_model.inconv.conv.1.weight"] = obj["G"]["inconv.conv.1.weight"] + 1
        torch.save(obj, path)
        with pytest.raises(UserError, match=r"'online_model\.inconv\.conv\.1\.weight' differs from G"):
            import_checkpoint("bcistainer", [path], tmp_path / "run2")


def test_bcistainer_d_scales_are_reversed():
    """layer1 of the reference D sees the full-size image: it is our scales.0."""
    from her2core.models.importing.bcistainer import d_rules

    r = d_rules(2)
    assert r.to_ours("layer1.0.conv.1.weight") == "scales.0.0.1.weight"
    assert r.to_ours("layer0.4.weight") == "scales.1.4.weight"
    assert r.to_ref("scales.0.0.1.weight") == "layer1.0.conv.1.weight"


# -- errors: one line naming the key or the file ------------------------------------------------


def _p2p_dict(seed=0):
    desc = json.loads((FIXTURES / "pyramid_pix2pix.json").read_text())["files"]["latest_net_G.pth"]
    return build(desc, torch.Generator().manual_seed(seed))


def _cli_error(capsys, *args):
    code = main(["import", *map(str, args)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_wrong_shape_names_the_first_mismatching_key(tmp_path, capsys):
    sd = _p2p_dict()
    sd["model.10.conv_block.1.weight"] = torch.zeros(256, 128, 3, 3)
    torch.save(sd, tmp_path / "g.pth")
    err = _cli_error(capsys, "pyramid_pix2pix", tmp_path / "g.pth", "--out", tmp_path / "run")
    assert "g.pth" in err and "'model.10.conv_block.1.weight' has shape [256, 128, 3, 3], expected [256, 256, 3, 3]" in err
    assert not (tmp_path / "run").exists()


def test_missing_key_is_named_by_its_reference_name(tmp_path, capsys):
    sd = _p2p_dict()
    del sd["model.12.conv_block.6.weight"]
    torch.save(sd, tmp_path / "g.pth")
    err = _cli_error(capsys, "pyramid_pix2pix", tmp_path / "g.pth", "--out", tmp_path / "run")
    assert "missing tensor 'model.12.conv_block.6.weight'" in err


def test_extra_key_is_refused(tmp_path, capsys):
    from her2core.models.importing.asp import rules

    desc = json.loads((FIXTURES / "asp.json").read_text())["files"]["latest_net_G.pth"]
    sd = build(desc, torch.Generator().manual_seed(0))
    sd["model.30.weight_orig"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "g.pth")
    err = _cli_error(capsys, "asp", tmp_path / "g.pth", "--out", tmp_path / "run")
    assert "unexpected tensor 'model.30.weight_orig'" in err
    assert rules().to_ours("model.30.weight_orig") == "model.30.parametrizations.weight.original"


def test_pickled_object_is_refused_without_unpickling(tmp_path, capsys):
    net = torch.nn.Linear(2, 2)
    torch.save(net, tmp_path / "whole_model.pth")  # a full module pickle: needs more than weights_only
    err = _cli_error(capsys, "pyramid_pix2pix", tmp_path / "whole_model.pth", "--out", tmp_path / "run")
    assert "whole_model.pth" in err and "refused without unpickling" in err


def test_not_a_checkpoint_and_wrong_file_count(tmp_path, capsys):
    (tmp_path / "notes.pth").write_text("hello")
    err = _cli_error(capsys, "asp", tmp_path / "notes.pth", "--out", tmp_path / "run")
    assert "notes.pth" in err and "not a readable PyTorch checkpoint" in err
    err = _cli_error(capsys, "ddib", tmp_path / "notes.pth", "--out", tmp_path / "run")
    assert "give 2 checkpoint file(s)" in err
    torch.save({"step": 1}, tmp_path / "bbdm.pth")
    err = _cli_error(capsys, "bbdm", tmp_path / "bbdm.pth", "--out", tmp_path / "run")
    assert "no 'model' entry" in err


def test_existing_run_is_kept_unless_overwrite(tmp_path):
    path = tmp_path / "g.pth"
    torch.save(_p2p_dict(), path)
    import_checkpoint("pyramid_pix2pix", [path], tmp_path / "run")
    with pytest.raises(UserError, match="already holds a run"):
        import_checkpoint("pyramid_pix2pix", [path], tmp_path / "run")
    torch.save(_p2p_dict(seed=1), path)
    import_checkpoint("pyramid_pix2pix", [path], tmp_path / "run", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "latest.json", "step_00000000.json", "step_00000000.safetensors"]


# -- diffusion containers (tiny networks under the reference names) ----------------------------


def _tiny_reference(name, prefix, rules, seed):
    """A `tiny` network's tensors under the reference names/layouts, seeded random values."""
    cls, _ = importer(name)
    torch.manual_seed(seed)
    fw = cls(cls.preset("tiny"))
    sd = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
          for k, v in sub_state(fw.state_dict(), prefix).items()}
    return to_reference(adm(sd, name), rules)


def adm(ours, name):
    """Our diffusers-UNet tensors in the ADM (reference) layout, an exact relayout."""
    from her2core.models.diffusion.unet import ADMLayout

    return ADMLayout(importer(name)[0].preset("tiny").unet).to_adm(ours)


def unet_state(fw, prefix, name):
    return adm(sub_state(fw.state_dict(), prefix), name)


def test_bbdm_model_and_ema_with_schedule_buffers(tmp_path):
    from her2core.models.importing import bbdm

    cfg = importer("bbdm")[0].preset("tiny")
    model = {f"denoise_fn.{k}": v for k, v in _tiny_reference("bbdm", "unet.", bbdm.Rules(), 0).items()}
    model.update({k: torch.tensor(v, dtype=torch.float32)
                  for k, v in bbdm.schedule(cfg.num_timesteps, cfg.max_var).items()})
    ema = {k: v + 1 for k, v in model.items() if k.startswith("denoise_fn.")}
    torch.save({"step": 10, "model": model, "epoch": 1, "ema": ema}, tmp_path / "last_model.pth")
    import_checkpoint("bbdm", [tmp_path / "last_model.pth"], tmp_path / "run", preset="tiny")
    fw = load_run(tmp_path / "run")
    r = bbdm.rules("x", cfg)
    assert_same(to_reference(unet_state(fw, "unet.", "bbdm"), r), model, skip=bbdm.SCHEDULE)
    assert_same(to_reference(unet_state(fw, "unet_ema.", "bbdm"), r), ema)  # sampling uses the EMA
    out = fw.translate(torch.zeros(1, 3, 16, 16), steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 16, 16)
    # a schedule of other settings (here a 'sin' m_t) is refused, by buffer name
    m = 1.0075 ** np.linspace(0, cfg.num_timesteps, cfg.num_timesteps)
    model["m_t"] = torch.tensor(m / m[-1], dtype=torch.float32)
    torch.save({"step": 10, "model": model, "epoch": 1, "ema": ema}, tmp_path / "sin.pth")
    with pytest.raises(UserError, match=r"schedule buffer 'm_t' differs"):
        import_checkpoint("bbdm", [tmp_path / "sin.pth"], tmp_path / "run2", preset="tiny")
    assert r.to_ours("m_t") is DROP


def test_ddib_two_files_fill_each_stain_and_its_ema(tmp_path):
    from her2core.models.importing.core import Rules

    he = _tiny_reference("ddib", "unet_he.", Rules(), 1)
    ihc = _tiny_reference("ddib", "unet_ihc.", Rules(), 2)
    torch.save(he, tmp_path / "ema_0.9999_000100.pt")
    torch.save({f"module.{k}": v for k, v in ihc.items()}, tmp_path / "model000100.pt")  # DDP prefix
    import_checkpoint("ddib", [tmp_path / "ema_0.9999_000100.pt", tmp_path / "model000100.pt"],
                      tmp_path / "run", preset="tiny")
    fw = load_run(tmp_path / "run")
    for prefix, ref in (("unet_he.", he), ("ema_he.", he), ("unet_ihc.", ihc), ("ema_ihc.", ihc)):
        assert_same(unet_state(fw, prefix, "ddib"), ref)
    notes = json.loads((tmp_path / "run" / "run.json").read_text())["imported"]["notes"]
    assert "ema_*.pt" in notes["ihc_weights"]


def test_consistency_fp16_weights_fill_online_target_and_ema(tmp_path):
    from her2core.models.importing.consistency import rules

    cfg = importer("consistency")[0].preset("tiny")
    r = rules(cfg.unet)
    ref = {k: v.half() for k, v in _tiny_reference("consistency", "unet.", r, 3).items()}
    assert any(v.ndim == 4 and k.endswith("qkv.weight") for k, v in ref.items())  # Conv2d layout upstream
    torch.save(ref, tmp_path / "ema_0.999_000010.pt")
    _cls, _cfg2, state, _plan, _ = convert_checkpoints("consistency", [tmp_path / "ema_0.999_000010.pt"],
                                                    preset="tiny")
    assert all(v.dtype == torch.float32 for v in state.values())
    import_checkpoint("consistency", [tmp_path / "ema_0.999_000010.pt"], tmp_path / "run", preset="tiny")
    fw = load_run(tmp_path / "run")
    for prefix in ("unet.", "target.", "unet_ema."):
        back = to_reference(unet_state(fw, prefix, "consistency"), r)
        assert_same({k: v.half() for k, v in back.items()}, ref)
