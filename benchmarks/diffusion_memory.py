"""Peak memory of one `paper` BBDM training step, with and without gradient checkpointing.

    python benchmarks/diffusion_memory.py                      # CPU: 256², batch 1
    python benchmarks/diffusion_memory.py --size 512 --batch 8 --device cuda

One training step = BBDM's bridge loss (x_t ‖ H&E through the 237 M-parameter UNet),
backward, and an Adam step, on random tiles. Each setting runs in its own subprocess so the
two peaks do not share an allocator. What is measured:
- CPU: the process's peak resident set (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) and the
  resident set just before the step (/proc/self/statm), so `step` = peak - before is what the
  step itself added (activations, gradients, Adam moments); weights are in `before`.
- CUDA: `torch.cuda.max_memory_allocated` over the step (weights included), the allocator's
  own count rather than the process's.
The ratio printed is checkpointed / plain, for the peak and for the step's increment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_step(size: int, batch: int, checkpointing: bool, device: str, attention: str) -> dict:
    import resource

    import torch

    sys.path.insert(0, str(ROOT))
    from her2core.models.bbdm import BBDM
    from her2core.util.configs import replace

    torch.manual_seed(0)
    cfg = BBDM.preset("paper")
    cfg = replace(cfg, unet=replace(cfg.unet, gradient_checkpointing=checkpointing, attention=attention))
    model = BBDM(cfg).to(device).train()
    opt = torch.optim.Adam(model.unet.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    he = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    ihc = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    loss = model.loss(he, ihc)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        how = "torch.cuda.max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        how = "ru_maxrss (peak RSS of the process)"
    return {"checkpointing": checkpointing, "peak_bytes": peak, "before_bytes": before,
            "step_bytes": peak - before, "loss": float(loss), "measured_with": how}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "math"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(one_step(args.size, args.batch, args.checkpointing, args.device, args.attention)))
        return 0
    results = []
    for ckpt in (False, True):
        cmd = [sys.executable, __file__, "--child", "--size", str(args.size), "--batch", str(args.batch),
               "--device", args.device, "--attention", args.attention, "--threads", str(args.threads)]
        cmd += ["--checkpointing"] if ckpt else []
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            return out.returncode
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gib = 2.0 ** 30
    plain, ckpt = results
    print(f"paper BBDM, one training step, {args.size}² batch {args.batch}, {args.device}, "
          f"attention {args.attention}; measured with {plain['measured_with']}")
    for r in results:
        print(f"  gradient checkpointing {'on ' if r['checkpointing'] else 'off'}: peak {r['peak_bytes'] / gib:.2f} GiB"
              f" (before the step {r['before_bytes'] / gib:.2f} GiB, the step added {r['step_bytes'] / gib:.2f} GiB)")
    summary = {"size": args.size, "batch": args.batch, "device": args.device, "attention": args.attention,
               "results": results, "peak_ratio": ckpt["peak_bytes"] / plain["peak_bytes"],
               "step_ratio": ckpt["step_bytes"] / plain["step_bytes"]}
    print(f"  ratio checkpointed / plain: peak {summary['peak_ratio']:.3f}, step {summary['step_ratio']:.3f}")
    if args.json:
        from her2core.util.atomic import write_json

        write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
