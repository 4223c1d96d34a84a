"""Speed and memory of the paper network's fusion (fast and full) beside OpenCV Mertens, same frames.

Usage::

    python benchmarks/bench_fuse.py [--sizes 1,12] [--runs 3] [--full-runs 1] [--model PATH]

Frames: a real photo (``skimage.data.coffee()``) resized to 1 MP / 12 MP (4:3) and bracketed at
±2 EV (inverse sRGB, scale, clip, sRGB, 8-bit). Every configuration runs in its own subprocess
(frames loaded from .npy, model loaded, then the fusion timed ``runs`` times; the median is
reported); peak RSS is that child's ``VmHWM`` (``/proc/self/status``, read at its end; not
``ru_maxrss``, which on Linux also counts the parent's RSS inherited at fork). The model is
``--model`` (a FusionNet ``.safetensors`` from ``crmef train``), otherwise the paper's general
genotype at C=16 with random weights (speed and memory do not depend on the weight values). The
fast-vs-full quality cost (PSNR / SSIM between the two outputs) is printed for each size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time, numpy as np, torch
cfg = json.loads(sys.argv[1])
u = np.load(cfg["dir"] + "/under.npy"); o = np.load(cfg["dir"] + "/over.npy")
times = []
if cfg["method"] == "mertens":
    from crmef.baselines import mertens
    f = lambda: mertens([u, o])
else:
    from crmef.inference import fuse
    from crmef.models import load_model
    net = load_model(cfg["model"], device="cpu")
    f = lambda: fuse([u, o], model=net, device="cpu", mode=cfg["method"])
for _ in range(cfg["runs"]):
    t = time.perf_counter(); y = f(); times.append(time.perf_counter() - t)
np.save(cfg["dir"] + "/" + cfg["method"] + ".npy", y)
# Peak RSS of this process image only: VmHWM belongs to the post-exec address space, whereas
# ru_maxrss from wait4 also counts the parent's RSS inherited at fork (Linux keeps it over exec).
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"times": times, "vmhwm_kib": hwm}))
"""


def bracket(mp: float) -> tuple[np.ndarray, np.ndarray]:
    """A ±2 EV 8-bit bracket of ``skimage.data.coffee()`` at ``mp`` megapixels (4:3)."""
    import cv2
    from skimage import data

    from crmef.commands.demo import make_bracket

    w = int(round((mp * 1e6 * 4 / 3) ** 0.5))
    h = int(round(w * 3 / 4))
    photo = cv2.resize(data.coffee().astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_CUBIC)
    return make_bracket(np.clip(photo, 0, 1), 2.0)


def run_child(method: str, d: str, model: str, runs: int) -> tuple[float, float]:
    """(median seconds, peak RSS MiB) of one configuration in a fresh process."""
    cfg = json.dumps({"method": method, "dir": d, "model": model, "runs": runs})
    proc = subprocess.Popen([sys.executable, "-c", CHILD, cfg], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, _ = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    return float(np.median(result["times"])), result["vmhwm_kib"] / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,12", help="megapixels, comma-separated")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of Mertens and fast (median)")
    ap.add_argument("--full-runs", type=int, default=1, help="timed runs of full mode")
    ap.add_argument("--model", default=None, help="FusionNet .safetensors (default: C=16, random weights)")
    args = ap.parse_args()
    import torch

    from crmef.models import save_model
    from crmef.nets import FusionNet
    from crmef.space import get_preset

    tmp = tempfile.TemporaryDirectory()
    model, note = args.model, "given"
    if model is None:
        torch.manual_seed(0)
        model = str(save_model(FusionNet.from_genotype(get_preset("paper_general"), channels=16),
                               Path(tmp.name) / "general_c16_random", {"name": "random"})[0])
        note = "general preset C=16, RANDOM weights"
    print(f"model: {note}; torch threads: {torch.get_num_threads()}; cpu count: {os.cpu_count()}")
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rows = []
    for mp in (float(s) for s in args.sizes.split(",")):
        d = tempfile.mkdtemp(dir=tmp.name)
        u, o = bracket(mp)
        np.save(f"{d}/under.npy", u)
        np.save(f"{d}/over.npy", o)
        res = {}
        for method, runs in (("mertens", args.runs), ("fast", args.runs), ("full", args.full_runs)):
            t0 = time.time()
            res[method] = run_child(method, d, model, runs)
            print(f"  {mp:g} MP {method}: {res[method][0]:.2f} s, {res[method][1]:.0f} MiB "
                  f"(wall {time.time() - t0:.0f} s)", flush=True)
        fast, full = np.load(f"{d}/fast.npy"), np.load(f"{d}/full.npy")
        psnr = peak_signal_noise_ratio(full, fast, data_range=1.0)
        ssim = structural_similarity(full, fast, data_range=1.0, channel_axis=2)
        rows.append((mp, u.shape, res, psnr, ssim))
    print()
    print("| size | frames (HxW) | Mertens s | fast s | full s | fast / Mertens | peak RSS Mertens / fast / full (MiB) | fast vs full PSNR / SSIM |")
    print("|---|---|---|---|---|---|---|---|")
    for mp, shape, r, psnr, ssim in rows:
        print(f"| {mp:g} MP | {shape[0]}x{shape[1]} | {r['mertens'][0]:.2f} | {r['fast'][0]:.2f} | "
              f"{r['full'][0]:.2f} | {r['fast'][0] / r['mertens'][0]:.2f}x | "
              f"{r['mertens'][1]:.0f} / {r['fast'][1]:.0f} / {r['full'][1]:.0f} | {psnr:.2f} dB / {ssim:.4f} |")


if __name__ == "__main__":
    main()
