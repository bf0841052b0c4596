"""Each GAN, `tiny` preset, trained briefly on embedded same-section tiles, beats the trivial baselines.

Baselines on the held-out test split: identity (H&E returned as is) and mean HER2 colour (every
pixel = the training set's mean IHC colour). Metrics: L1 on uint8 and skimage SSIM
(channel_axis=-1, data_range=255, defaults otherwise) — the references' SSIM.
"""

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from her2core.training import TrainConfig, load_run, train

# steps per framework: about a minute each on 2 CPU cores (ASP's steps are cheaper)
STEPS = {"pyramid_pix2pix": 120, "bcistainer": 120, "asp": 600}


@pytest.fixture(scope="module")
def same_section(tmp_path_factory):
    from her2core.sample import write_tile_dataset

    return write_tile_dataset(tmp_path_factory.mktemp("gan") / "ds", cases=4, tile=128, mpp=0.5, seed=0,
                              mode="same")


def _rgb(p):
    return np.array(Image.open(p).convert("RGB"))


def _scores(pred, target):
    l1 = float(np.abs(pred.astype(np.float64) - target).mean())
    ssim = float(np.mean([structural_similarity(a, b, channel_axis=-1, data_range=255)
                          for a, b in zip(pred, target)]))
    return l1, ssim


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STEPS))
def test_tiny_gan_beats_identity_and_mean_colour(name, same_section, tmp_path):
    from her2core.datasets import open_paired
    from her2core.inference.tiles import translate_batch

    run = train(name, same_section, tmp_path / name,
                train_config=TrainConfig(max_steps=STEPS[name], seed=0, log_every=20,
                                         checkpoint_every=10 ** 6))
    test = open_paired(same_section, "test")
    he = np.stack([_rgb(a) for a, _, _ in test.pairs])
    ihc = np.stack([_rgb(b) for _, b, _ in test.pairs])
    train_ihc = [_rgb(b) for _, b, _ in open_paired(same_section, "train").pairs]
    mean = np.round(np.mean([t.reshape(-1, 3).mean(0) for t in train_ihc], axis=0)).astype(np.uint8)
    mean_img = np.broadcast_to(mean, ihc.shape)

    fake = translate_batch(load_run(run), he)
    model, ident, meanc = _scores(fake, ihc), _scores(he, ihc), _scores(mean_img, ihc)
    print(f"{name}: model L1 {model[0]:.2f} SSIM {model[1]:.4f} | identity {ident[0]:.2f} {ident[1]:.4f} "
          f"| mean colour {meanc[0]:.2f} {meanc[1]:.4f}")
    assert model[0] < ident[0] and model[0] < meanc[0]
    assert model[1] > ident[1] and model[1] > meanc[1]
