"""Whole-process time and peak memory of ``crmef fuse`` by number of frames (issue 18).

Brackets of 2, 5 and 9 frames (−4 … +4 EV, made in linear light from one real photo as in
``bench_cli.py``) at 1 MP and 12 MP; ``crmef fuse`` with default options (every frame) beside the
Mertens script on the same files, median of ``--repeats`` runs, peak RSS of the process.

    .venv/bin/python benchmarks/bench_frames.py [--repeats 3] [--sizes 1,12] [--frames 2,5,9]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cli import MERTENS_SCRIPT, CommandFailed, Measure, load_manifest, run_once, source_photo, write_bracket  # noqa: E402

SIZES = {1: (1152, 864), 12: (4000, 3000)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", default="1,12", help="megapixels, of 1 and 12")
    p.add_argument("--frames", default="2,5,9")
    p.add_argument("--crmef", default=f"{sys.executable} -m crmef.cli")
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = p.parse_args(argv)
    crmef = shlex.split(args.crmef)
    photo, what = source_photo(args.shared, load_manifest(args.shared))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_frames_") as td:
        tmp = Path(td)
        script = tmp / "mertens.py"
        script.write_text(MERTENS_SCRIPT)
        for mp in (int(s) for s in args.sizes.split(",")):
            for n in (int(s) for s in args.frames.split(",")):
                evs = [-4 + 8 * i / (n - 1) for i in range(n)]
                paths = write_bracket(photo, SIZES[mp], evs, tmp / f"{mp}mp_{n}")
                for label, cmd in (("crmef fuse", [*crmef, "fuse", *map(str, paths), "-o", str(tmp / "c.png")]),
                                   ("Mertens script", [sys.executable, str(script), str(tmp / "m.png"), *map(str, paths)])):
                    m = Measure(label)
                    try:
                        for _ in range(args.repeats):
                            m.runs.append(run_once(cmd, 900))
                    except CommandFailed as exc:
                        m.error = str(exc)
                    rows.append((mp, n, m))
                    print(f"{mp} MP, {n} frames, {label}: {m.seconds} s, {m.peak_mb} MB", file=sys.stderr, flush=True)
    print(f"Frames from {what}; whole process, median of {args.repeats}.\n")
    print("| size | frames | command | s | peak MB |\n|---|---|---|---|---|")
    for mp, n, m in rows:
        s = f"{m.seconds:.2f}" if m.seconds is not None else m.error
        mb = f"{m.peak_mb:.0f}" if m.peak_mb is not None else "–"
        print(f"| {mp} MP | {n} | {m.label} | {s} | {mb} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
