"""GPU whole-slide benchmark: a >= 40k x 40k synthetic slide through a `paper` network in bf16.

    python benchmarks/gpu_slide.py                       # 40960 x 40960 px, tissue on ~50 %
    python benchmarks/gpu_slide.py --model bcistainer --batch-size 16
    python benchmarks/gpu_slide.py --make-slide /tmp/he40k.ome.tif      # only the slide, then
    python benchmarks/gpu_slide.py --slide /tmp/he40k.ome.tif --model consistency --steps 2

Prints the slide-creation time (not counted), tiles/s up to the last translated tile (reading,
model, blending, and the pyramid written along the way), the time from the last tile to the
finished pyramid, the total wall time of `translate_slide`, the pure model forward speed on
the same tile size and batch for comparison, and GPU peak memory; the last line is the same
as JSON. `--max-seconds` stops the translation early (and says so) rather than overrun.
The network has random weights: speed does not depend on training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slide_inference import MPP, SynthSlide


class OutOfTime(Exception):
    pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=40960, help="slide side in px at 0.5 µm/px")
    p.add_argument("--tissue", type=float, default=0.5, help="share of the slide holding tissue")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--model", default="pyramid_pix2pix", help="a registry name; its `paper` preset")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (diffusion models)")
    p.add_argument("--workers", type=int, default=None,
                   help="reading / blending / encoding threads each (default: cores, up to 8)")
    p.add_argument("--slide", type=Path, default=None, help="use this synthetic slide (kept)")
    p.add_argument("--make-slide", type=Path, default=None, help="only write the slide here")
    p.add_argument("--max-seconds", type=float, default=200.0,
                   help="stop translating after this long (the whole script must stay < 5 min)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (needs ~15 GB)")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only for a smoke run")
    args = p.parse_args(argv)

    import torch

    from her2core.inference.model import Translator
    from her2core.inference.options import InferenceOptions
    from her2core.inference.slide import translate_slide
    from her2core.models import registry
    from her2core.slide import write_pyramid
    from her2core.util.progress import Progress

    if args.make_slide is not None:
        t = time.perf_counter()
        write_pyramid(args.make_slide, SynthSlide(args.size, args.size, tissue=args.tissue),
                      mpp=MPP, tile=512, min_size=512, compression=None)
        print(f"synthetic slide {args.size} x {args.size} px written in "
              f"{time.perf_counter() - t:.1f} s: {args.make_slide}", flush=True)
        return 0
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("gpu_slide: no CUDA device; this benchmark is for a GPU machine", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t_script = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="her2-gpu-slide-", dir=args.workdir))
    try:
        t = time.perf_counter()
        slide = args.slide
        if slide is None:
            slide = write_pyramid(work / "he.ome.tif",
                                  SynthSlide(args.size, args.size, tissue=args.tissue),
                                  mpp=MPP, tile=512, min_size=512, compression=None)
        t_create = time.perf_counter() - t
        if args.slide is not None:  # made earlier (--make-slide): its own size, not --size
            from her2core.slide import open_slide

            with open_slide(slide) as s:
                args.size = max(s.dimensions)
            print(f"synthetic slide {args.size} x {args.size} px: {slide}", flush=True)
        else:
            print(f"synthetic slide {args.size} x {args.size} px written in {t_create:.1f} s",
                  flush=True)

        cls = registry.get(args.model)
        fw = cls(cls.preset("paper"))
        n_params = sum(p.numel() for p in fw.parameters())
        tr = Translator(fw, device, precision=args.precision, work_mpp=MPP, steps=args.steps,
                        name=f"{args.model}[paper]")
        rng = np.random.default_rng(0)
        batch = rng.integers(0, 256, (args.batch_size, args.tile, args.tile, 3), dtype=np.uint8)
        for _ in range(3 if cuda else 1):  # warm-up (cudnn autotune)
            tr(batch, 0)
        sync()
        reps = 10 if cuda else 1
        t = time.perf_counter()
        for i in range(reps):
            tr(batch, i)
        sync()
        fwd_tps = reps * args.batch_size / (time.perf_counter() - t)
        print(f"pure forward of {args.model} ({args.precision}, batch {args.batch_size}, {args.tile} "
              f"px, steps {args.steps}, framework {n_params / 1e6:.1f} M params): {fwd_tps:.1f} "
              "tiles/s", flush=True)
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        state = {"last_tile": None, "done": 0, "total": 0}
        t0 = time.perf_counter()
        before = tr.tiles_translated

        def tick(done, total):
            state["done"], state["total"] = done, total
            if done == total and state["last_tile"] is None:
                state["last_tile"] = time.perf_counter()
                n = tr.tiles_translated - before
                dt = state["last_tile"] - t0
                print(f"translation done: {n} tissue tiles of {total} in {dt:.1f} s = "
                      f"{n / dt:.1f} tiles/s ({n / dt / fwd_tps:.2f} of pure forward); "
                      "finishing the pyramid...", flush=True)
            if time.perf_counter() - t0 > args.max_seconds:
                raise OutOfTime

        finished = True
        try:
            translate_slide(tr, slide, work / "virtual.ome.tif",
                            InferenceOptions(tile=args.tile, overlap=args.overlap,
                                             batch_size=args.batch_size, workers=args.workers),
                            progress=Progress(lambda _stage, done, total: tick(done, total)))
        except OutOfTime:
            finished = False
        t_end = time.perf_counter()
        translated = tr.tiles_translated - before
        t_translate = (state["last_tile"] or t_end) - t0
        res = {
            "model": args.model, "steps": args.steps, "slide_px": args.size, "tissue": args.tissue, "tile": args.tile, "overlap": args.overlap,
            "batch_size": args.batch_size, "precision": args.precision, "finished": finished,
            "tiles_total": state["total"], "tiles_done": state["done"], "tiles_translated": translated,
            "create_s": round(t_create, 1), "translate_s": round(t_translate, 1),
            "last_tile_to_pyramid_s": round(t_end - (state["last_tile"] or t_end), 1),
            "total_s": round(t_end - t0, 1),
            "tiles_per_s": round(translated / t_translate, 2),
            "forward_tiles_per_s": round(fwd_tps, 2),
            "ratio": round(translated / t_translate / fwd_tps, 3),
            "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "script_s": round(time.perf_counter() - t_script, 1),
        }
        if not finished:
            print(f"stopped after {args.max_seconds:.0f} s (--max-seconds): numbers are for the "
                  "part done", flush=True)
        print(f"{translated} of {state['total']} tiles translated (the rest is glass) in "
              f"{t_translate:.1f} s: {res['tiles_per_s']} tiles/s end to end "
              f"({res['ratio']:.2f} of pure forward); pyramid finished "
              f"{res['last_tile_to_pyramid_s']} s after the last tile; "
              f"total {res['total_s']} s; GPU peak {res['gpu_peak_gib']} GiB")
        print(json.dumps(res))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
