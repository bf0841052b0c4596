"""GAN frameworks: exact reference parameter counts and the behaviour of their building blocks."""

import pytest
import torch

from her2core.models import registry

# docs/references.md (counted from the upstream code with its own factories)
PAPER_COUNTS = {
    "pyramid_pix2pix": {"G": 11383427, "D": 2768705},
    "asp": {"G": 7837699, "F": 560384, "D": 2791905},
    "bcistainer": {"G": 14955338, "D": 1389442, "C": 2164772},
}


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_parameter_counts_equal_the_references(name):
    cls = registry.get(name)
    with torch.device("meta"):
        model = cls(cls.preset("paper"))
    assert model.parameter_counts() == PAPER_COUNTS[name]


def test_paper_output_shapes_at_256():
    """Shapes of the reference networks (docs/references.md): PatchGAN maps, ASP D 6×6, BCIStainer low-res 32² and 4 levels."""
    x = torch.zeros(1, 3, 256, 256)
    p2p = registry.get("pyramid_pix2pix")(registry.get("pyramid_pix2pix").preset("paper")).eval()
    asp = registry.get("asp")(registry.get("asp").preset("paper")).eval()
    bci = registry.get("bcistainer")(registry.get("bcistainer").preset("paper")).eval()
    with torch.no_grad():
        assert p2p.D(torch.cat([x, x], 1)).shape == (1, 1, 30, 30)
        assert asp.D(x).shape == (1, 1, 6, 6)
        assert [f.shape[1] for f in asp.G(x, [0, 4, 8, 12, 16], encode_only=True)] == [3, 128, 256, 256, 256]
        hr, lr, level = bci.G(x)
        assert (hr.shape, lr.shape, level.shape) == ((1, 3, 256, 256), (1, 3, 32, 32), (1, 4))
        assert [d.shape[-1] for d in bci.D(x)] == [30, 14]


def test_blur_pyramid_halves_and_keeps_a_constant_image():
    from her2core.models.gan_blocks.pyramid import GaussPyramid, blur_pyramid

    x = torch.full((1, 3, 64, 64), 0.3)
    levels = blur_pyramid(x, 4)
    assert [t.shape[-1] for t in levels] == [64, 32, 16, 8]
    assert all(torch.allclose(t, torch.full_like(t, 0.3), atol=1e-6) for t in levels)
    g = GaussPyramid(5)(torch.rand(1, 3, 64, 64))
    assert [t.shape[-1] for t in g] == [64, 32, 16, 8, 4, 2]


def test_patch_nce_prefers_matching_keys():
    from her2core.models.gan_blocks.patchnce import asp_schedule, asp_weights, patch_nce

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2 * 16, 32), dim=1)
    same, _ = patch_nce(q, q.clone(), batch_size=2)
    other, _ = patch_nce(q, torch.nn.functional.normalize(torch.randn(32, 32), dim=1), batch_size=2)
    assert same.mean() < 0.1 < other.mean()
    assert asp_schedule(0.5) == 1.0 and asp_schedule(0.875) == pytest.approx(0.5)
    w = asp_weights(torch.tensor([0.9, -0.5, 0.1, 0.5]), p=0.0)
    assert w.mean() == pytest.approx(1.0) and w[1] == 0 and w[0] > w[3] > w[2]


def test_focal_loss_and_ssim():
    from her2core.models.gan_blocks.losses import focal_loss, ssim

    logits = torch.tensor([[4.0, 0, 0, 0], [0, 0, 0, 4.0]])
    good, bad = focal_loss(logits, torch.tensor([0, 3])), focal_loss(logits, torch.tensor([1, 1]))
    assert 0 <= good < 0.01 < bad
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert (ssim(x, torch.rand(2, 3, 32, 32)) < 0.2).all()


def test_modulated_conv_depends_on_style():
    from her2core.models.gan_blocks.stylemod import ResnetModBlock

    torch.manual_seed(0)
    block = ResnetModBlock(8, 4, use_bias=False)
    x = torch.randn(2, 4, 8, 8)
    s = torch.randn(1, 8).repeat(2, 1)
    out = block(x, s)
    assert torch.allclose(out[0:1], block(x[0:1], s[0:1]), atol=1e-5)  # per-sample grouping is right
    assert not torch.allclose(out, block(x, torch.randn(2, 8)), atol=1e-3)
