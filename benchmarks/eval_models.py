"""Held-out quality of the default models beside the baselines (the training issue's table).

Test sets (scenes never used for training or search; the committed split of ``../shared/data``):

- ``sequences``: test scenes of ``../shared/data/sequences``, darkest and brightest usable frames
  in, reference = OpenCV Mertens of the full bracket (crmef.data.reference).
- ``hdr``: synthetic pairs from the held-out HDR map (test split), reference = the documented
  tone mapping of the radiance.
- ``hdr-misaligned`` / ``sequences-misaligned``: the same with the under frame misaligned by a
  random homography (±8 px, ±2°, ±2 %) plus a 2 px smooth local field (``crmef eval --misalign``).
- ``sequences-all``: the test sequences with every usable frame (3 to 9; ``crmef eval --frames
  all``): N-frame MEF-SSIM and chroma hull against all frames; ``mertens_all`` / ``enfuse_all``
  fuse every frame, the models get every frame as ``crmef fuse`` would, ``mertens`` the extremes.

Every set has the enfuse row (Hugin's enfuse, Debian package ``enfuse``) when the binary is on
PATH, and beside MEF-SSIM ``chroma_hull`` (colour outside the sources' chromaticities, lower is
better) and ``chroma_kept`` (the share of the best-exposed source's colourfulness kept, higher is
better: a pale, washed-out fusion stays inside the hull).

Targets checked (and printed as PASS/MISS with the margin):

- general, sequences: PSNR ≥ Mertens + 1 dB and MEF-SSIM ≥ Mertens's; chroma hull ≤ 0.0025 and
  no scene above Mertens's value for that scene + 0.002;
- general, hdr: PSNR ≥ Mertens + 2 dB and LPIPS < Mertens's; chroma hull ≤ enfuse's;
- general, sequences-all: N-frame MEF-SSIM ≥ Mertens-all + 0.002, chroma hull ≤ Mertens-all's,
  chroma kept ≥ enfuse-all's (and ≥ 0.95 × Mertens-all's, whose saturation weight favours the
  most saturated frame);
- general, sequences and hdr: chroma kept ≥ Mertens's;
- aligned, misaligned sets: PSNR ≥ flow-then-Mertens + 3 dB; chroma hull ≤ Mertens's.

It also fuses the real hand-held bracket (``../shared/data/misaligned/handheld``) with every
method and writes a side-by-side PNG with a zoomed crop, to be looked at for ghosting.

    .venv/bin/python benchmarks/eval_models.py --out runs/eval_models \\
        [--general PATH_OR_NAME] [--aligned PATH_OR_NAME] [--hdr-samples 8] [--write-cards]

``--write-cards`` stores the test metrics in the cards of the evaluated models (``metrics.test``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
METRICS = ["psnr", "ssim", "lpips", "fsim", "mef_ssim", "chroma_hull", "chroma_kept"]
#: Per-image rows of every set (method, sample, metrics), filled by :func:`run_set`.
ROWS: dict[str, list[dict]] = {}


def with_enfuse(methods: str) -> str:
    """``methods`` with the enfuse baseline after Mertens (``enfuse_all`` after ``mertens_all``)
    when its binary is installed."""
    from crmef.baselines import enfuse_binary

    if enfuse_binary() is None:
        print("enfuse not on PATH (Debian package 'enfuse'): no enfuse rows", file=sys.stderr)
        return methods
    names = methods.split(",")
    anchor, extra = ("mertens_all", "enfuse_all") if "mertens_all" in names else ("mertens", "enfuse")
    names.insert(names.index(anchor) + 1, extra)
    return ",".join(names)


def run_set(name: str, data: Path, methods: str, out: Path, hdr_samples: int, misalign: bool,
            frames: str = "pair") -> dict[str, dict]:
    """Evaluate one test set; returns ``{method label: summary entry}`` and writes its tables."""
    from crmef.evaluation import data_key, evaluate, load_samples, markdown_table, parse_methods, write_tables

    n = hdr_samples if "hdr" in name else None
    samples, kind = load_samples(data, "test", "auto", n, 0, None, misalign=misalign, frames=frames)
    key = data_key(data, kind, "test", 0, n, misalign, frames)
    result = evaluate(samples, parse_methods(with_enfuse(methods)), METRICS, out / name, key, progress=True)
    ROWS[name] = result.rows
    counts = sorted({len(s.sources) for s in samples})
    what = f"{len(samples)} images" + (f", {counts[0]}-{counts[-1]} frames each" if frames == "all" else "")
    write_tables(result, out / name, header=f"# {name}: {data} ({kind}, test split, {what})")
    print(f"\n## {name} ({what}, {samples[0].under.shape[1]}x{samples[0].under.shape[0]} first)")
    print(markdown_table(result))
    return {e["method"]: e for e in result.summary()}


def worst_excess(set_: str, method: str, base: str, metric: str = "chroma_hull") -> tuple[float, str]:
    """Largest per-scene ``method - base`` of ``metric`` in a set, and the scene."""
    rows = ROWS[set_]
    ref = {r["sample"]: r[metric] for r in rows if r["method"] == base}
    diffs = [(r[metric] - ref[r["sample"]], r["sample"]) for r in rows if r["method"] == method]
    return max(diffs) if diffs else (float("nan"), "-")


def handheld_figure(models: dict[str, str], out: Path) -> Path | None:
    """Fuse the real hand-held bracket with each method; write a labelled side-by-side PNG."""
    import cv2

    from crmef.baselines import flow_mertens, mertens
    from crmef.imageio import read_image, write_image
    from crmef.inference import fuse, order_files, usable_pair

    folder = SHARED / "misaligned" / "handheld"
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif", ".tiff"})
    ordered = order_files(files)
    frames = [read_image(p) for p in ordered]
    i, j = usable_pair(frames)
    under, over = frames[i], frames[j]
    panels = {"under": under, "over": over, "mertens": mertens([under, over]),
              "flow_mertens": flow_mertens(under, over)}
    from crmef.engine import engine_card

    for label, model in models.items():
        if engine_card(model) is not None:  # the engine: every usable frame of the bracket
            panels[f"model:{label}"] = fuse(frames, model=model)
        else:
            panels[f"model:{label}"] = fuse([under, over], model=model, device="cpu", mode="full")
    h, w = under.shape[:2]
    scale = 480 / w
    cy, cx, side = h // 2, w // 2, min(h, w) // 4  # centre crop, 2x zoom
    tiles = []
    for label, img in panels.items():
        img = np.clip(img, 0, 1)
        full = cv2.resize(img, (480, round(h * scale)), interpolation=cv2.INTER_AREA)
        crop = img[cy - side:cy + side, cx - side:cx + side]
        crop = cv2.resize(crop, (480, 480), interpolation=cv2.INTER_NEAREST)
        tile = np.concatenate([full, np.ones((8, 480, 3), np.float32), crop], 0)
        tile = (tile * 255).round().astype(np.uint8).copy()
        cv2.putText(tile, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 0), 2, cv2.LINE_AA)
        tiles.append(tile)
        write_image(out / "handheld" / f"{label.replace(':', '_')}.png", img)
    sep = np.full((tiles[0].shape[0], 8, 3), 255, np.uint8)
    rows = [np.concatenate([t for k in range(r, min(r + 3, len(tiles))) for t in (tiles[k], sep)][:-1], 1)
            for r in range(0, len(tiles), 3)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path = out / "handheld_side_by_side.png"
    write_image(path, np.concatenate(rows, 0).astype(np.float32) / 255.0)
    print(f"\nhand-held bracket ({ordered[i].name} + {ordered[j].name}): {path}")
    return path


def check(rows: list[tuple[str, bool, str]]) -> None:
    print("\n## Targets")
    print("| target | result | margin |\n|---|---|---|")
    for what, ok, margin in rows:
        print(f"| {what} | {'PASS' if ok else 'MISS'} | {margin} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--general", default="general", help="model name or path for `general`")
    p.add_argument("--aligned", default="aligned", help="model name or path for `aligned` ('' to skip)")
    p.add_argument("--out", type=Path, default=Path("runs/eval_models"))
    p.add_argument("--hdr-samples", type=int, default=8, help="synthetic pairs from the held-out HDR map")
    p.add_argument("--write-cards", action="store_true", help="store the test metrics in the models' cards")
    args = p.parse_args()
    if not SHARED.is_dir():
        print(f"{SHARED} not found: the held-out data live in ../shared/data", file=sys.stderr)
        return 2
    models = {"general": args.general}
    if args.aligned:
        models["aligned"] = args.aligned
    mods = ",".join(f"model:{m}" for m in models.values())
    seq, hdr = SHARED / "sequences", SHARED / "hdr"
    res = {
        "sequences": run_set("sequences", seq, f"mertens,flow_mertens,mean,{mods}", args.out, args.hdr_samples, False),
        "hdr": run_set("hdr", hdr, f"mertens,flow_mertens,mean,{mods}", args.out, args.hdr_samples, False),
    }
    if args.aligned:
        for name, data in (("hdr-misaligned", hdr), ("sequences-misaligned", seq)):
            res[name] = run_set(name, data, f"mertens,flow_mertens,{mods}", args.out, args.hdr_samples, True)
    res["sequences-all"] = run_set("sequences-all", seq, f"mertens_all,mertens,{mods}", args.out, args.hdr_samples,
                                   False, frames="all")

    from crmef.evaluation import camera_colour_by_method, model_label

    def val(set_: str, method: str, metric: str) -> float:
        entry = res[set_]
        return entry[method if method in entry else model_label(method)][metric][0]

    g, a = args.general, args.aligned
    rows = []
    d = val("sequences", g, "psnr") - val("sequences", "mertens", "psnr")
    rows.append(("general, sequences: PSNR ≥ Mertens + 1 dB", d >= 1.0, f"{d:+.2f} dB"))
    d = val("sequences", g, "mef_ssim") - val("sequences", "mertens", "mef_ssim")
    rows.append(("general, sequences: MEF-SSIM ≥ Mertens", d >= 0, f"{d:+.4f}"))
    d = val("hdr", g, "psnr") - val("hdr", "mertens", "psnr")
    rows.append(("general, held-out HDR: PSNR ≥ Mertens + 2 dB", d >= 2.0, f"{d:+.2f} dB"))
    d = val("hdr", g, "lpips") - val("hdr", "mertens", "lpips")
    rows.append(("general, held-out HDR: LPIPS < Mertens", d < 0, f"{d:+.4f}"))
    c = val("sequences", g, "chroma_hull")
    rows.append(("general, sequences: chroma hull ≤ 0.0025", c <= 0.0025, f"{c:.5f} ({c - 0.0025:+.5f})"))
    d, scene = worst_excess("sequences", model_label(g), "mertens")
    rows.append(("general, sequences: no scene's chroma hull above Mertens's + 0.002", d <= 0.002,
                 f"worst {d:+.5f} ({scene})"))
    if "enfuse" in res["hdr"]:
        d = val("hdr", g, "chroma_hull") - val("hdr", "enfuse", "chroma_hull")
        rows.append(("general, held-out HDR: chroma hull ≤ enfuse", d <= 0, f"{d:+.5f}"))
    d = val("sequences-all", g, "mef_ssim") - val("sequences-all", "mertens_all", "mef_ssim")
    rows.append(("general, sequences-all: N-frame MEF-SSIM ≥ Mertens-all + 0.002", d >= 0.002, f"{d:+.4f}"))
    d = val("sequences-all", g, "chroma_hull") - val("sequences-all", "mertens_all", "chroma_hull")
    rows.append(("general, sequences-all: chroma hull ≤ Mertens-all", d <= 0, f"{d:+.5f}"))
    if "enfuse_all" in res["sequences-all"]:
        d = val("sequences-all", g, "chroma_kept") - val("sequences-all", "enfuse_all", "chroma_kept")
        rows.append(("general, sequences-all: chroma kept ≥ enfuse-all", d >= 0, f"{d:+.3f}"))
    k, m = val("sequences-all", g, "chroma_kept"), val("sequences-all", "mertens_all", "chroma_kept")
    rows.append(("general, sequences-all: chroma kept ≥ 0.95 × Mertens-all", k >= 0.95 * m,
                 f"{k:.3f} vs {m:.3f} ({k / m:.3f}×)"))
    for set_, base in (("sequences", "mertens"), ("sequences-all", "mertens_all")):
        cc = camera_colour_by_method(args.out / set_, seq)
        print(f"\n{set_}: camera colour (u'v' distance to the whole bracket's colour at the fused level, lower is "
              "better): " + ", ".join(f"{k} {v:.5f}" for k, v in cc.items()))
        d = cc[model_label(g)] - cc[base]
        rows.append((f"general, {set_}: camera colour ≤ {base.replace('_all', '-all').capitalize()}", d <= 0,
                     f"{cc[model_label(g)]:.5f} ({d:+.5f})"))
    for set_ in ("sequences", "hdr"):
        d = val(set_, g, "chroma_kept") - val(set_, "mertens", "chroma_kept")
        rows.append((f"general, {set_}: chroma kept ≥ Mertens", d >= 0, f"{d:+.3f}"))
    if a:
        for set_ in ("hdr-misaligned", "sequences-misaligned"):
            d = val(set_, a, "psnr") - val(set_, "flow_mertens", "psnr")
            rows.append((f"aligned, {set_}: PSNR ≥ flow-then-Mertens + 3 dB", d >= 3.0, f"{d:+.2f} dB"))
            d = val(set_, a, "chroma_hull") - val(set_, "mertens", "chroma_hull")
            rows.append((f"aligned, {set_}: chroma hull ≤ Mertens", d <= 0, f"{d:+.5f}"))
    check(rows)
    handheld_figure(models, args.out)

    if args.write_cards:
        from crmef.engine import engine_card
        from crmef.evaluation import METRIC_DIGITS
        from crmef.models import resolve_model_paths
        from crmef.utils import atomic_write_text

        for label, model in models.items():
            card_path = engine_card(model) or resolve_model_paths(model)[1]
            card = json.loads(card_path.read_text())
            test = {}
            digits = {k: max(4, METRIC_DIGITS.get(k, 4)) for k in METRICS}  # the tables' or 4, the finer
            for set_, entry in res.items():
                m = entry.get(model_label(model))
                base = {b: {k: round(entry[b][k][0], digits[k]) for k in METRICS if entry[b].get(k)}
                        for b in ("mertens", "flow_mertens", "enfuse", "mertens_all", "enfuse_all") if b in entry}
                if m:
                    test[set_] = {"n": m["n"], **{k: round(m[k][0], digits[k])
                                                  for k in METRICS if m.get(k)},
                                  "baselines": base}
            card.setdefault("metrics", {})["test"] = test
            card["metrics"]["test_protocol"] = ("benchmarks/eval_models.py: committed test split of ../shared/data; "
                                                "sequences with full-bracket Mertens references; "
                                                f"{args.hdr_samples} synthetic pairs of the held-out HDR map; "
                                                "misaligned sets via crmef eval --misalign; "
                                                "sequences-all: every usable frame, crmef eval --frames all")
            atomic_write_text(card_path, json.dumps(card, indent=1) + "\n")
            print(f"wrote test metrics into {card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
