"""``crmef eval``: fuse a dataset split with several methods and tabulate their scores.

    crmef eval --data DIR --methods mertens,flow_mertens,mean[,enfuse][,model:NAME_OR_PATH][,folder:DIR]
               [--split test] [--report OUT]
    crmef eval --data DIR --frames all --methods mertens_all,enfuse_all[,model:NAME_OR_PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` sub-command."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate fusion methods on a dataset split (tables, optional HTML report)",
        description=(
            "Fuse every sample of a dataset split with each method and score it: PSNR/SSIM/LPIPS/FSIM "
            "against the reference where there is one, MEF-SSIM and the chroma hull distance (colour "
            "outside the sources' chromaticities, lower is better) against the sources. Prints a "
            "Markdown table (mean ± std, seconds per image, params and GFLOPs for models) and writes "
            "table.md, table.csv and per_image.csv; --report adds index.html with signal-map figures. "
            "Fused images are cached, so a second run only scores."
        ),
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (brackets, SICE, paired, HDR maps)")
    parser.add_argument("--kind", default="auto", help="data source kind (auto, brackets, sice, paired, hdr_synth)")
    parser.add_argument("--methods", default="mertens,flow_mertens,mean",
                        help="comma-separated: mertens, flow_mertens, mean, enfuse (needs the Debian package "
                             "enfuse), N-frame mertens_all, enfuse_all, model:NAME_OR_PATH, folder:DIR")
    parser.add_argument("--frames", default="pair", choices=("pair", "all"),
                        help="pair: the darkest and brightest usable frames of each bracket (default); all: every "
                             "usable frame, MEF-SSIM and chroma hull against all of them, N-frame methods "
                             "(mertens_all, enfuse_all, model:) fuse all of them, pair methods the two extremes")
    parser.add_argument("--split", default="test", help="train, val, test or all (default: test)")
    parser.add_argument("--metrics", default="auto",
                        help="comma-separated metrics, or auto: psnr,ssim,lpips,fsim,mef_ssim,chroma_hull,chroma_kept "
                             "(reference metrics only where samples have a reference)")
    parser.add_argument("--report", type=Path, default=None, metavar="OUT",
                        help="write tables, index.html and figures/*.png into OUT (fused cache in OUT/cache)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the tables and the fused cache without --report (default: $CRMEF_HOME/eval)")
    parser.add_argument("--samples", type=int, default=None, help="synthetic samples for HDR data (default 2 per map)")
    parser.add_argument("--misalign", action="store_true",
                        help="misalign each under frame synthetically (homography ±8 px/±2°/±2 %% + 2 px local field)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    parser.add_argument("--seed", type=int, default=0, help="split / synthesis seed")
    parser.add_argument("--figures", type=int, default=8, help="signal-map figures in the report (default 8)")
    parser.add_argument("--device", default="cpu", help="device for model methods (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation and print the table."""
    from crmef.errors import InputError
    from crmef.evaluation import (
        ALL_METRIC_NAMES,
        NO_REFERENCE_METRIC_NAMES,
        data_key,
        evaluate,
        load_samples,
        markdown_table,
        parse_methods,
        parse_metrics,
        write_report,
        write_tables,
    )
    from crmef.metrics.lpips import data_dir

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    metrics = list(ALL_METRIC_NAMES) if args.metrics == "auto" else parse_metrics(args.metrics)
    methods = parse_methods(args.methods, device=args.device)
    samples, kind = load_samples(args.data, args.split, args.kind, args.samples, args.seed, args.limit,
                                  misalign=args.misalign, frames=args.frames)
    if not samples:
        raise InputError(f"--data {args.data}: no samples in split {args.split!r}")
    if all(s.ref is None for s in samples):
        metrics = [m for m in metrics if m in NO_REFERENCE_METRIC_NAMES] or list(NO_REFERENCE_METRIC_NAMES)
    out = args.report or args.out or data_dir() / "eval"
    key = data_key(args.data, kind, args.split, args.seed, args.samples, args.misalign, args.frames)
    result = evaluate(samples, methods, metrics, Path(out), key, progress=not args.no_progress)
    frames = ""
    if args.frames == "all":
        counts = sorted({len(s.sources) for s in samples})
        frames = f", all frames ({counts[0]}-{counts[-1]} per scene)" if len(counts) > 1 else f", all {counts[0]} frames"
    title = (f"crmef eval: {args.data} ({kind}{', misaligned' if args.misalign else ''}{frames}, split {args.split}, "
             f"{len(samples)} images)")
    paths = write_tables(result, Path(out), header=f"# {title}")
    print(title)
    print(markdown_table(result))
    if result.gflops and result.flops_size:
        print(f"GFLOPs at {result.flops_size[1]}x{result.flops_size[0]}")
    cached = sum(r["cached"] for r in result.rows)
    print(f"{len(result.rows)} fused images ({cached} reused from {Path(out) / 'cache'}); tables: {paths['markdown']}, {paths['csv']}")
    if args.report:
        page = write_report(result, samples, Path(args.report), title, max_figures=args.figures)
        print(f"report: {page}")
    return 0
