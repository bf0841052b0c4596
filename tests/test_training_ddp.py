"""Two-process CPU training through torchrun (gloo) follows the one-process run on the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(tmp_path):
    from her2core.sample import write_tile_dataset
    from her2core.training import TrainConfig, train

    data = write_tile_dataset(tmp_path / "ds", cases=4, tile=64, mpp=0.5, tiles_per_case=2, seed=1)
    # InstanceNorm and no dropout: the loss of a global batch is then the mean of the per-rank
    # losses and the averaged gradient equals the full-batch gradient (BatchNorm would not).
    sets = {"norm": "instance", "use_dropout": False}
    common = ["--model", "pyramid_pix2pix", "--data", str(data), "--max-steps", "3", "--batch-size", "4",
              "--log-every", "1", "--seed", "5", "--device", "cpu", "--no-progress"]
    sets_args = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "her2core", "train", *common, *sets_args, "--out", str(tmp_path / "ddp")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    train("pyramid_pix2pix", data, tmp_path / "one", overrides=sets,
          train_config=TrainConfig(max_steps=3, batch_size=4, log_every=1, seed=5, device="cpu"))

    def losses(run):
        rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        return [{k: r[k] for k in ("G", "G_L1", "D_fake", "D_real")} for r in rows if "G" in r]

    ddp, one = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert len(ddp) == len(one) == 3
    for a, b in zip(ddp, one):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (k, a, b)
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["resolved"]["world_size"] == 2

    # Weights: biases in front of InstanceNorm get zero gradient up to rounding noise, which Adam
    # rescales to ±lr steps, so compare what the weights compute instead.
    from her2core.training import load_run

    x = torch.rand(2, 3, 64, 64) * 2 - 1
    ya, yb = load_run(tmp_path / "ddp").translate(x), load_run(tmp_path / "one").translate(x)
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-2)  # < 1.3 grey levels
    assert (ya - yb).abs().mean() < 1e-3
    assert (ya - x).abs().mean() > 0.05  # a trained, non-trivial mapping
