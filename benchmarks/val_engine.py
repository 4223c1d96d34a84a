"""Validation of engine candidates (model selection; never the test split).

    .venv/bin/python benchmarks/val_engine.py CARD.json [CARD.json ...] --out runs/val_engine

Sets (validation split of ../shared/data): sequences with every frame (N-frame MEF-SSIM and
chroma_hull and chroma_kept against all frames), sequences' extremes (PSNR against the
full-bracket Mertens reference, MEF-SSIM, chroma_hull, chroma_kept) and 8 synthetic pairs of the
validation HDR map (PSNR, LPIPS, chroma_hull, chroma_kept); Mertens, Mertens-all and enfuse
beside the candidates. ``--sets`` may add ``hdr-mis`` and ``seq-mis``: the same pairs with the under frame misaligned (``crmef eval
--misalign``), flow-then-Mertens beside the candidates (give the ``aligned`` cards there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cards", nargs="+", help="engine model cards (or shipped names)")
    p.add_argument("--out", type=Path, default=Path("runs/val_engine"))
    p.add_argument("--sets", default="all,pairs,hdr")
    args = p.parse_args()
    from crmef.evaluation import camera_colour_by_method, data_key, evaluate, load_samples, markdown_table, parse_methods

    models = ",".join(f"model:{c}" for c in args.cards)
    sets = {
        "all": (SHARED / "sequences", "mertens_all,enfuse_all," + models, ["mef_ssim", "chroma_hull", "chroma_kept"], "all", None),
        "pairs": (SHARED / "sequences", "mertens,enfuse," + models, ["psnr", "mef_ssim", "chroma_hull", "chroma_kept"], "pair", None),
        "hdr": (SHARED / "hdr", "mertens,enfuse," + models, ["psnr", "lpips", "chroma_hull", "chroma_kept"], "pair", 8),
        "hdr-mis": (SHARED / "hdr", "flow_mertens," + models, ["psnr", "chroma_hull"], "pair", 8),
        "seq-mis": (SHARED / "sequences", "flow_mertens," + models, ["psnr", "chroma_hull"], "pair", None),
    }
    for name in args.sets.split(","):
        data, methods, metrics, frames, n = sets[name]
        mis = name.endswith("-mis")
        samples, kind = load_samples(data, "val", "auto", n, 0, None, misalign=mis, frames=frames)
        key = data_key(data, kind, "val", 0, n, mis, frames)
        result = evaluate(samples, parse_methods(methods), metrics, args.out / name, key, progress=False)
        print(f"\n## val {name} ({len(samples)})")
        print(markdown_table(result), flush=True)
        if name in ("pairs", "all"):  # colour against the camera's own, at the level shown
            cc = camera_colour_by_method(args.out / name, data)
            print("camera colour (u'v' distance to the whole bracket's colour at the fused level, lower is better): "
                  + ", ".join(f"{k} {v:.5f}" for k, v in cc.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
