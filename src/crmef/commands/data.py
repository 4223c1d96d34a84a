"""``crmef data inspect|synth|split``: look at datasets, synthesise paired folders, regenerate splits.

- ``crmef data inspect DIR [--json] [--kind K] [--resize] [--clip-fraction F]`` — every scene
  with its frames in exposure order, sizes and the (under, over) pair it would use. ``--json``
  prints ``{"layout", "scenes": [{"name", "size", "frames": [{"file", "brightness",
  "exposure", "usable"}], "pair": [under, over]}]}``.
- ``crmef data synth --hdr DIR --out DIR --count N [--misalign] [--seed S]`` — synthetic
  brackets from linear radiance maps, written as a paired folder ``DIR/trainA`` (under),
  ``DIR/trainB`` (over), ``DIR/trainC`` (reference), PNG, plus ``DIR/synth.json``.
- ``crmef data split [--root ../shared/data] [--out FILE] [--check]`` — regenerate the committed
  scene-level split of the shared data (deterministic).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crmef.errors import InputError

CLIP_FRACTION_HELP = "0.95"
"""The value of ``crmef.data.exposure.DEFAULT_CLIP_FRACTION``, for ``--help`` without importing it."""


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Print skipped scenes/files as ``crmef: warning: ...`` lines on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                print(f"crmef: warning: {w.message}", file=sys.stderr)


def _scenes_report(root: Path, kind: str, resize: bool, clip_fraction: float) -> dict[str, Any]:
    import numpy as np

    from crmef.data import layouts
    from crmef.data.exposure import select_pair
    from crmef.data.synth import load_radiance

    layout = layouts.detect_layout(root) if kind == "auto" else kind
    scenes: list[dict[str, Any]] = []
    if layout in ("brackets", "sice"):
        scan = layouts.scan_brackets if layout == "brackets" else layouts.scan_sice
        for s in scan(root, resize=resize, clip_fraction=clip_fraction):
            under, over = select_pair(s.frames, clip_fraction)
            scenes.append(
                {
                    "name": s.name,
                    "size": list(s.size),
                    "resized": s.resized,
                    "frames": [
                        {
                            "file": f.path.name,
                            "brightness": round(f.brightness, 4),
                            "exposure": f.exposure,
                            "usable": f.usable(clip_fraction),
                        }
                        for f in s.frames
                    ],
                    "pair": [under.path.name, over.path.name],
                    **({"label": str(s.label)} if s.label else {}),
                }
            )
    elif layout == "paired":
        for prefix, items in layouts.scan_paired(root).items():
            for it in items:
                scenes.append(
                    {
                        "name": it.name,
                        "size": list(it.size),
                        "frames": [{"file": f"{prefix}{x}/{p.name}"} for x, p in zip("ABC", (it.under, it.over, it.ref))],
                        "pair": [f"{prefix}A/{it.under.name}", f"{prefix}B/{it.over.name}"],
                    }
                )
    elif layout == "hdr_synth":
        for path in layouts.scan_hdr(root):
            rad = load_radiance(path)
            lum = rad.mean(axis=2)
            pos = lum[lum > 0]
            lo, hi = np.percentile(pos, [0.01, 99.99]) if pos.size else (1.0, 0.0)
            rng = float(hi / max(float(lo), 1e-12))  # robust: 0.01-99.99 % of positive luminance
            scenes.append({"name": path.name, "size": [rad.shape[1], rad.shape[0]], "dynamic_range": rng, "frames": [], "pair": []})
    else:
        raise InputError(f"unknown layout {layout!r}")
    if not scenes:
        raise InputError(f"{root}: no usable scenes found (layout {layout})")
    return {"layout": layout, "root": str(root), "scenes": scenes}


def _print_text(report: dict[str, Any]) -> None:
    print(f"{report['root']}: layout {report['layout']}, {len(report['scenes'])} scene(s)")
    for s in report["scenes"]:
        w, h = s["size"]
        extra = f", dynamic range {s['dynamic_range']:.3g}:1 (0.01-99.99 %)" if "dynamic_range" in s else ""
        print(f"{s['name']}  {w}x{h}{' (resized)' if s.get('resized') else ''}{extra}")
        for f in s["frames"]:
            if "brightness" in f:
                exp = f"  exposure {f['exposure']:.4g}" if f["exposure"] is not None else ""
                mark = "" if f["usable"] else "  (unusable: nearly all black/white)"
                print(f"    {f['file']:<28} brightness {f['brightness']:.3f}{exp}{mark}")
            else:
                print(f"    {f['file']}")
        if s["pair"]:
            print(f"    pair: under {s['pair'][0]}, over {s['pair'][1]}")


def run_inspect(args: argparse.Namespace) -> int:
    """``crmef data inspect``."""
    root = Path(args.dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    clip_fraction = args.clip_fraction
    if clip_fraction is None:
        from crmef.data.exposure import DEFAULT_CLIP_FRACTION as clip_fraction
    with _warnings_to_stderr():
        report = _scenes_report(root, args.kind, args.resize, clip_fraction)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print_text(report)
    return 0


def run_synth(args: argparse.Namespace) -> int:
    """``crmef data synth``: export synthetic triples to a paired folder."""
    import numpy as np

    from crmef.data.datasets import DataConfig, SourceSpec, SynthDataset, build_dataset
    from crmef.data.synth import SynthConfig
    from crmef.imageio import write_image
    from crmef.utils import atomic_write_text

    if args.count < 1:
        raise InputError(f"--count must be >= 1, got {args.count}")
    jpeg = (args.jpeg_quality, args.jpeg_quality) if args.jpeg_quality else None
    synth = SynthConfig(crop=args.crop, ev_gap=tuple(args.ev_gap), crf=args.crf, jpeg_quality=jpeg)
    cfg = DataConfig(
        sources=[SourceSpec(str(args.hdr), "hdr_synth")],
        crop=args.crop,
        split=args.split,
        misalign=bool(args.misalign),
        samples_per_epoch=args.count,
        seed=args.seed,
        synth=synth,
        augment=False,
    )
    ds = build_dataset(cfg)
    assert isinstance(ds, SynthDataset)
    out = Path(args.out)
    records = []
    for i in range(args.count):
        sample = ds[i]
        name = f"{i:05d}.png"
        for folder, key in (("trainA", "under"), ("trainB", "over"), ("trainC", "ref")):
            write_image(out / folder / name, sample[key].permute(1, 2, 0).numpy().astype(np.float32))
        records.append({"file": name, "source": sample["name"].split("#")[0]})
    meta = {"seed": args.seed, "count": args.count, "crop": args.crop, "misalign": bool(args.misalign),
            "ev_gap": list(args.ev_gap), "crf": args.crf, "jpeg_quality": args.jpeg_quality,
            "maps": [p.name for p in ds.maps], "reference": "global extended Reinhard (key 0.18) + sRGB",
            "samples": records}
    atomic_write_text(out / "synth.json", json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.count} triples to {out}/trainA, trainB, trainC")
    return 0


def run_split(args: argparse.Namespace) -> int:
    """``crmef data split``: regenerate (or ``--check``) the shared-data split table."""
    from crmef.data.splitting import SHARED_SPLIT_FILE, make_shared_split
    from crmef.utils import atomic_write_text

    table = make_shared_split(args.root, seed=args.seed)
    text = json.dumps(table, indent=1) + "\n"
    out = Path(args.out) if args.out else SHARED_SPLIT_FILE
    if args.check:
        current = out.read_text(encoding="utf-8") if out.is_file() else ""
        if current != text:
            print(f"{out} differs from the split regenerated from {args.root}", file=sys.stderr)
            return 1
        print(f"{out} is up to date")
        return 0
    atomic_write_text(out, text)
    counts = ", ".join(f"{k} {v['train']}/{v['val']}/{v['test']}" for k, v in table["counts"].items())
    print(f"wrote {out} (train/val/test: {counts})")
    return 0


def _add(sub: Any, name: str, help_: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_)
    p.set_defaults(func=func)
    return p


def register(subparsers: Any) -> None:
    """Add ``crmef data`` and its sub-commands."""
    parser = subparsers.add_parser("data", help="inspect datasets, synthesise brackets, regenerate splits")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda _args: (parser.print_help(), 2)[1])

    p = _add(sub, "inspect", "list scenes, frames in exposure order, sizes and the pair used", run_inspect)
    p.add_argument("dir", help="dataset folder (bracket folders, SICE, paired folders or HDR maps)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--kind", default="auto", choices=["auto", "brackets", "sice", "paired", "hdr_synth"],
                   help="force the layout (default: detect)")
    p.add_argument("--resize", action="store_true", help="resize frames of different sizes to the largest common size")
    # default None = crmef.data.exposure.DEFAULT_CLIP_FRACTION, resolved in run_inspect (that module
    # imports OpenCV); the help repeats its value (tests/test_cli_lazy.py keeps the two equal)
    p.add_argument("--clip-fraction", type=float, default=None,
                   help=f"drop frames with at least this fraction of nearly black/white pixels (default {CLIP_FRACTION_HELP})")

    p = _add(sub, "synth", "synthesise (under, over, reference) triples from HDR radiance", run_synth)
    p.add_argument("--hdr", required=True, help="folder of .exr/.hdr linear radiance maps")
    p.add_argument("--out", required=True, help="output folder (gets trainA/ trainB/ trainC/)")
    p.add_argument("--count", type=int, required=True, help="number of triples")
    p.add_argument("--misalign", action="store_true", help="misalign the under frame (random homography)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop", type=int, default=256, help="output size in pixels (default %(default)s)")
    p.add_argument("--ev-gap", type=float, nargs=2, default=[2.0, 6.0], metavar=("MIN", "MAX"))
    p.add_argument("--crf", choices=["srgb", "random"], default="srgb", help="camera response")
    p.add_argument("--jpeg-quality", type=int, default=None, help="JPEG-compress under/over at this quality")
    p.add_argument("--split", default="all", choices=["train", "val", "test", "all"],
                   help="only maps of this split (committed table for the shared data)")

    p = _add(sub, "split", "regenerate the committed train/val/test split of the shared data", run_split)
    p.add_argument("--root", default="../shared/data", help="the shared data folder (default %(default)s)")
    p.add_argument("--out", default=None, help="output file (default: the packaged splits/shared.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="only compare with the existing file (exit 1 if different)")
