"""η sweep of the hardware-aware search (the paper's Table VIII, on this machine).

Runs (or reuses) one search per η with the same config, data and seed, then rebuilds every
derived net from its ``genotype.json`` and times them at 512×512 on the CPU in this one process,
interleaved round-robin (median of ``--latency-runs``), and prints a table of params, GFLOPs,
measured latency and validation L1. Checks: latency does not increase with η, and the largest η
is at least 30 % faster than η = 0.

    .venv/bin/python benchmarks/bench_search_eta.py --config configs/search/cpu.yaml \\
        --etas 0,0.5,1 --runs-dir runs/eta            # add --launch to run missing searches
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/search/cpu.yaml")
    p.add_argument("--etas", default="0,0.5,1")
    p.add_argument("--runs-dir", default="runs/eta", type=Path)
    p.add_argument("--launch", action="store_true", help="run the searches that have no derived.json yet (sequentially)")
    p.add_argument("--latency-runs", type=int, default=7)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch threads for timing (the table's setting)")
    args = p.parse_args()

    from crmef.complexity import count_flops, count_params
    from crmef.config import load_config
    from crmef.search import SearchConfig, build_derived, measure_latency
    from crmef.space import Genotype
    from crmef.utils import atomic_write_text

    etas = [e.strip() for e in args.etas.split(",") if e.strip()]
    runs = {e: args.runs_dir / f"eta{e}" for e in etas}
    for e, run in runs.items():
        if not (run / "derived.json").is_file():
            if not args.launch:
                print(f"missing {run / 'derived.json'} (use --launch to run the search)", file=sys.stderr)
                return 1
            cmd = [sys.executable, "-m", "crmef.cli", "search", "--config", args.config, "--set", f"search.eta={e}", "--out", str(run)]
            print("running:", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)

    torch.set_num_threads(args.threads)
    nets, rows = {}, {}
    for e, run in runs.items():
        cfg = load_config(SearchConfig, run / "config.yaml")
        d = json.loads((run / "derived.json").read_text())
        geno = Genotype.load(run / "genotype.json")
        net = build_derived(cfg, geno)
        nets[e] = net
        rows[e] = {"params": count_params(net), "gflops": count_flops(net, (args.size, args.size)) / 1e9,
                   "val_l1": d["val_l1"], "val_l1_inherited": d["val_l1_inherited"], "table_ms": d["table_ms_derived"],
                   "table_fastest": d["table_ms_fastest"], "table_uniform": d["table_ms_uniform"],
                   "drm": ",".join(geno.drm), "search_s": d.get("search_s")}
    load0 = os.getloadavg()
    lat = measure_latency(nets, args.size, args.latency_runs, torch.device("cpu"))
    load1 = os.getloadavg()
    print(f"\nη sweep, C={cfg.model.channels}, CPU ({args.threads} thread), latency at {args.size}x{args.size}, "
          f"median of {args.latency_runs} interleaved runs; load avg {load0[0]:.2f} -> {load1[0]:.2f}\n")
    hdr = f"{'eta':>5} | {'params':>8} | {'GFLOPs':>7} | {'latency s (min-max)':>22} | {'val L1':>7} | {'L1 inh.':>7} | {'table ms':>8} | DRM ops"
    print(hdr)
    print("-" * len(hdr))
    for e in etas:
        r, l = rows[e], lat[e]
        print(f"{e:>5} | {r['params']:>8,} | {r['gflops']:>7.2f} | {l['median_s']:>7.3f} ({l['min_s']:.3f}-{l['max_s']:.3f}) | "
              f"{r['val_l1']:>7.4f} | {r['val_l1_inherited']:>7.4f} | {r['table_ms']:>8.1f} | {r['drm']}")
    print(f"\ntable ms: fastest architecture {rows[etas[0]]['table_fastest']:.1f}, uniform mix {rows[etas[0]]['table_uniform']:.1f}")
    meds = [lat[e]["median_s"] for e in etas]
    mono = all(b <= a * 1.03 for a, b in zip(meds, meds[1:]))  # 3 % timing tolerance
    speedup = 1 - meds[-1] / meds[0]
    print(f"latency non-increasing with η (3 % timing tolerance): {'PASS' if mono else 'FAIL'}")
    print(f"η={etas[-1]} vs η={etas[0]}: {100 * speedup:.1f} % faster -> {'PASS' if speedup >= 0.30 else 'FAIL'} (need >= 30 %)")
    out = args.runs_dir / "sweep.json"
    atomic_write_text(out, json.dumps({"rows": rows, "latency": lat, "load": [load0, load1]}, indent=2))
    return 0 if (mono and speedup >= 0.30) else 1


if __name__ == "__main__":
    sys.exit(main())
