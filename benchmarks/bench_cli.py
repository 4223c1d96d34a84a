"""Whole-process cost of ``crmef`` beside the classical tools, as a user waits for it (issue 19).

Usage::

    python benchmarks/bench_cli.py [--repeats 3] [--quick] [--jobs help,pair12,pair1,bracket9,batch]
                                   [--crmef "crmef"] [--json PATH] [--skip-slow S] [--keep DIR]

Every command runs as its own process, exactly as typed at a shell, on the same files; the table
gives the median wall time of ``--repeats`` runs (the commands of one job are interleaved run by
run, so load drift hits them alike) and the peak RSS (the largest of the runs). Jobs:

- ``help``: ``crmef --help`` vs ``python -c "import cv2"``.
- ``pair12`` / ``pair1``: a ±2 EV pair at 12 MP (4000×3000) / 1 MP (1152×864), PNG:
  ``crmef fuse u.png v.png -o f.png`` (default options) vs the *Mertens script* (a Python file:
  ``cv2.imread`` each frame, ``cv2.createMergeMertens().process``, clip, ``cv2.imwrite`` PNG) vs
  ``enfuse -o f.tif u.png v.png`` (default options).
- ``bracket9``: a 9-frame 1 MP bracket (−4 … +4 EV): ``crmef fuse f1 … f9 -o f.png`` (default
  options, whatever frames crmef picks) vs the Mertens script and enfuse on all nine.
- ``batch``: 50 two-frame real scenes (the darkest and brightest frame of 50 scenes of
  ``../shared/data/sequences``, spread evenly over the manifest's scenes sorted by name; JPEG):
  ``crmef fuse --batch DIR -o OUT`` once vs the Mertens script and ``enfuse --compression=95``
  run once per scene (total time of the loop; peak = the largest single process). All three write
  JPEG (crmef's default for JPEG frames, quality 95).

Frames: one well-exposed real photo (the shared DeepFuse frame whose mean is closest to 0.5,
about 1200×800; without ``../shared``, ``skimage.data.coffee()``) is cropped to 4:3, resized with
``INTER_CUBIC``, linearised (inverse sRGB), scaled by 2^EV, given a little sensor noise
(σ² = 1e-5·x + 1e-6 in linear light), clipped, sRGB-encoded and quantised to 8 bits.

Peak RSS comes from GNU ``/usr/bin/time -f %M`` around each command: not ``os.wait4``, whose
``ru_maxrss`` also counts the RSS of the parent at the time of the spawn (Linux keeps the
pre-exec high-water mark). It is the peak of one process (the largest process of a tree), not the
sum of concurrent worker processes. Without ``/usr/bin/time`` the table says RSS is unavailable.
``--quick`` uses small frames and 3 scenes (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = ROOT.parent / "shared" / "data"
TIME = "/usr/bin/time"
ALL_JOBS = ("help", "pair12", "pair1", "bracket9", "batch")

MERTENS_SCRIPT = r'''"""Fuse frames with OpenCV Mertens: mertens.py OUT IN1 IN2 ..."""
import sys

import cv2
import numpy as np

frames = [cv2.imread(p, cv2.IMREAD_COLOR) for p in sys.argv[2:]]
fused = cv2.createMergeMertens().process(frames)
cv2.imwrite(sys.argv[1], (np.clip(fused, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
'''


# ------------------------------------------------------------------------------------------------
# Measuring one command
# ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    peak_kib: int | None


@dataclass
class Measure:
    """Runs of one command line (or one loop of command lines) of a job."""

    label: str
    runs: list[Run] = field(default_factory=list)
    error: str | None = None
    note: str | None = None

    @property
    def seconds(self) -> float | None:
        return statistics.median(r.seconds for r in self.runs) if self.runs else None

    @property
    def peak_mb(self) -> float | None:
        peaks = [r.peak_kib for r in self.runs if r.peak_kib is not None]
        return max(peaks) / 1024.0 if peaks else None


class CommandFailed(RuntimeError):
    pass


def run_once(cmd: list[str], timeout: float) -> Run:
    """Wall time and peak RSS of one command (stdout discarded, stderr kept for errors)."""
    with tempfile.TemporaryDirectory(prefix="bench_time_") as td:
        rss_file = Path(td) / "rss"
        err_file = Path(td) / "stderr"
        full = [TIME, "-f", "%M", "-o", str(rss_file), *cmd] if os.access(TIME, os.X_OK) else cmd
        with open(err_file, "wb") as err:
            t0 = time.perf_counter()
            try:
                rc = subprocess.run(full, stdout=subprocess.DEVNULL, stderr=err, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                raise CommandFailed(f"timed out after {timeout:.0f} s") from None
            seconds = time.perf_counter() - t0
        if rc != 0:
            tail = err_file.read_text(errors="replace").strip().splitlines()[-3:]
            raise CommandFailed(f"exit code {rc}: {' | '.join(tail)[-300:]}")
        peak = None
        if rss_file.exists():
            lines = rss_file.read_text().strip().splitlines()
            peak = int(lines[-1]) if lines and lines[-1].strip().isdigit() else None
    return Run(seconds, peak)


def run_many(cmds: list[list[str]], timeout: float) -> Run:
    """A loop of commands (one per scene): total wall time, the largest single peak."""
    t0 = time.perf_counter()
    peaks = []
    for cmd in cmds:
        peaks.append(run_once(cmd, timeout).peak_kib)
    known = [p for p in peaks if p is not None]
    return Run(time.perf_counter() - t0, max(known) if known else None)


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def load_manifest(shared: Path) -> list[dict] | None:
    path = shared / "manifest.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def source_photo(shared: Path, manifest: list[dict] | None):
    """(sRGB float32 H×W×3 RGB in [0, 1], description) of one well-exposed real photo."""
    import cv2
    import numpy as np

    if manifest is not None:
        best = min(
            ((abs(f["mean"] - 0.5), e["scene"], f["file"]) for e in manifest
             if "/deepfuse/" in e["scene"] for f in e["frames"]),
            default=None,
        )
        if best is not None:
            path = shared / best[1] / best[2]
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None:
                return bgr[..., ::-1].astype(np.float32) / 255.0, f"{best[1]}/{best[2]}"
    from skimage import data

    return data.coffee().astype(np.float32) / 255.0, "skimage.data.coffee() (../shared absent)"


def write_bracket(photo, size: tuple[int, int], evs: list[float], out_dir: Path, seed: int = 0) -> list[Path]:
    """Frames at ``evs`` of ``photo`` resized to ``size`` (W, H), in linear light, as 8-bit PNG."""
    import cv2
    import numpy as np

    h, w = photo.shape[:2]
    tw, th = size
    if w * th > h * tw:  # too wide: crop the width
        cw = int(round(h * tw / th))
        photo = photo[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    else:
        ch = int(round(w * th / tw))
        photo = photo[(h - ch) // 2 : (h - ch) // 2 + ch]
    img = np.clip(cv2.resize(np.ascontiguousarray(photo), (tw, th), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    lin = np.where(img <= 0.04045, img / 12.92, ((img + 0.055) / 1.055) ** 2.4).astype(np.float32)
    del img
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ev in enumerate(evs):
        x = lin * np.float32(2.0**ev)
        x += np.sqrt(1e-5 * x + 1e-6, dtype=np.float32) * rng.standard_normal(x.shape, dtype=np.float32)
        np.clip(x, 0.0, 1.0, out=x)
        enc = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(np.maximum(x, 0.0031308), 1 / 2.4) - 0.055)
        del x
        u8 = (np.clip(enc, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        del enc
        path = out_dir / f"f{i + 1}_{'m' if ev < 0 else 'p'}{abs(ev):g}ev.png"
        if not cv2.imwrite(str(path), np.ascontiguousarray(u8[..., ::-1])):
            raise RuntimeError(f"could not write {path}")
        paths.append(path)
    return paths


def make_batch(shared: Path, manifest: list[dict], count: int, out_dir: Path) -> list[tuple[str, list[Path]]]:
    """``count`` scene folders of (darkest, brightest) frames, spread over the sorted scenes."""
    scenes = sorted(
        (e for e in manifest if e["scene"].startswith("sequences/") and len(e["frames"]) >= 2),
        key=lambda e: e["scene"],
    )
    usable = []
    for e in scenes:
        frames = sorted(e["frames"], key=lambda f: f["mean"])
        dark, bright = frames[0], frames[-1]
        if (dark["width"], dark["height"]) == (bright["width"], bright["height"]):
            usable.append((e["scene"], dark["file"], bright["file"]))
    if not usable:
        return []
    count = min(count, len(usable))
    picked = [usable[int(i * len(usable) / count)] for i in range(count)]
    out = []
    for scene, dark, bright in picked:
        name = scene.split("/", 1)[1].replace("/", "_")
        d = out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        files = []
        for f in (dark, bright):
            shutil.copyfile(shared / scene / f, d / f)
            files.append(d / f)
        out.append((name, files))
    return out


# ------------------------------------------------------------------------------------------------
# Jobs
# ------------------------------------------------------------------------------------------------


@dataclass
class Job:
    name: str
    title: str
    commands: dict[str, object]  # label -> (out_dir -> argv) or (out_dir -> list of argv)
    writes: bool = True  # the commands write their results into out_dir (checked)


def measure_job(job: Job, repeats: int, timeout: float, skip_slow: float | None, tmp: Path) -> dict[str, Measure]:
    measures = {label: Measure(label) for label in job.commands}
    for r in range(repeats):
        for i, (label, make) in enumerate(job.commands.items()):
            m = measures[label]
            if m.error is not None or (m.note and r > 0):
                continue
            out = tmp / "out" / f"{job.name}_{r}_{i}"
            out.mkdir(parents=True, exist_ok=True)
            argv = make(out)
            try:
                run = run_many(argv, timeout) if argv and isinstance(argv[0], list) else run_once(argv, timeout)
                if job.writes and not any(out.iterdir()):
                    raise CommandFailed(f"exit code 0 but nothing written in {out}")
            except CommandFailed as exc:
                m.error = str(exc)
                continue
            finally:
                shutil.rmtree(out, ignore_errors=True)
            m.runs.append(run)
            print(f"  {job.name:9s} {label:16s} run {r + 1}: {run.seconds:7.2f} s  "
                  f"{'' if run.peak_kib is None else f'{run.peak_kib / 1024:7.0f} MB'}", file=sys.stderr)
            if skip_slow is not None and r == 0 and run.seconds > skip_slow and repeats > 1:
                m.note = f"1 run, > {skip_slow:g} s"
    return measures


def build_jobs(args, crmef: list[str], python: str, tmp: Path) -> tuple[list[Job], list[str]]:
    notes: list[str] = []
    script = tmp / "mertens.py"
    script.write_text(MERTENS_SCRIPT)
    enfuse = shutil.which("enfuse")
    if enfuse is None:
        notes.append("enfuse is not installed: its rows are absent.")
    manifest = load_manifest(args.shared)
    if manifest is None:
        notes.append(f"{args.shared} is absent: frames from skimage.data.coffee(), no batch job.")
    wanted = [j.strip() for j in args.jobs.split(",") if j.strip()]
    unknown = set(wanted) - set(ALL_JOBS)
    if unknown:
        raise SystemExit(f"unknown jobs {sorted(unknown)}; choose from {', '.join(ALL_JOBS)}")

    photo = None
    if any(j in wanted for j in ("pair12", "pair1", "bracket9")):
        photo, desc = source_photo(args.shared, manifest)
        notes.append(f"Frames synthesised in linear light from {desc}.")

    def pair_job(name: str, size: tuple[int, int]) -> Job:
        frames = [str(p) for p in write_bracket(photo, size, [-2.0, 2.0], tmp / name)]
        mp = size[0] * size[1] / 1e6
        cmds = {
            "crmef": lambda o: [*crmef, "fuse", *frames, "-o", str(o / "f.png")],
            "Mertens script": lambda o: [python, str(script), str(o / "f.png"), *frames],
        }
        if enfuse:
            cmds["enfuse"] = lambda o: [enfuse, "-o", str(o / "f.tif"), *frames]
        return Job(name, f"{mp:.1f} MP pair ±2 EV ({size[0]}×{size[1]} PNG)", cmds)

    jobs: list[Job] = []
    for name in wanted:
        if name == "help":
            jobs.append(Job("help", "`crmef --help`", {
                "crmef": lambda o: [*crmef, "--help"],
                'python -c "import cv2"': lambda o: [python, "-c", "import cv2"],
            }, writes=False))
        elif name == "pair12":
            jobs.append(pair_job("pair12", (640, 480) if args.quick else (4000, 3000)))
        elif name == "pair1":
            jobs.append(pair_job("pair1", (320, 240) if args.quick else (1152, 864)))
        elif name == "bracket9":
            size = (320, 240) if args.quick else (1152, 864)
            frames = [str(p) for p in write_bracket(photo, size, [float(e) for e in range(-4, 5)], tmp / name)]
            cmds = {
                "crmef": lambda o, frames=frames: [*crmef, "fuse", *frames, "-o", str(o / "f.png")],
                "Mertens script": lambda o, frames=frames: [python, str(script), str(o / "f.png"), *frames],
            }
            if enfuse:
                cmds["enfuse"] = lambda o, frames=frames: [enfuse, "-o", str(o / "f.tif"), *frames]
            jobs.append(Job(name, f"9-frame bracket −4…+4 EV ({size[0] * size[1] / 1e6:.1f} MP PNG)", cmds))
        elif name == "batch":
            if manifest is None:
                continue
            scenes = make_batch(args.shared, manifest, 3 if args.quick else args.scenes, tmp / "batch")
            if not scenes:
                notes.append("no usable scenes in the manifest: no batch job.")
                continue
            batch_dir = tmp / "batch"
            cmds = {
                "crmef": lambda o: [*crmef, "fuse", "--batch", str(batch_dir), "-o", str(o)],
                "Mertens script": lambda o: [[python, str(script), str(o / f"{n}.jpg"), *map(str, fs)]
                                             for n, fs in scenes],
            }
            if enfuse:
                cmds["enfuse"] = lambda o: [[enfuse, "--compression=95", "-o", str(o / f"{n}.jpg"), *map(str, fs)]
                                            for n, fs in scenes]
            jobs.append(Job(name, f"batch of {len(scenes)} two-frame real scenes (JPEG; tools once per scene)", cmds))
    return jobs, notes


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _fmt_s(m: Measure) -> str:
    if m.error:
        return "failed"
    s = m.seconds
    text = "—" if s is None else (f"{s:.3f}" if s < 1 else f"{s:.2f}")
    return f"{text} ({m.note})" if m.note else text


def _fmt_mb(m: Measure) -> str:
    mb = m.peak_mb
    return "—" if mb is None or m.error else f"{mb:.0f}"


def table(jobs: list[Job], results: dict[str, dict[str, Measure]]) -> tuple[str, list[dict]]:
    lines = ["| job | crmef s | crmef peak MB | tool | tool s | tool peak MB | ratio |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for job in jobs:
        ms = results[job.name]
        c = ms["crmef"]
        for label, m in ms.items():
            if label == "crmef":
                continue
            ratio = (f"{c.seconds / m.seconds:.1f}×" if c.seconds and m.seconds and not (c.error or m.error)
                     else "—")
            lines.append(f"| {job.title} | {_fmt_s(c)} | {_fmt_mb(c)} | {label} | {_fmt_s(m)} | {_fmt_mb(m)} | {ratio} |")
            rows.append({
                "job": job.name, "title": job.title,
                "crmef_s": c.seconds, "crmef_peak_mb": c.peak_mb, "crmef_runs": [r.seconds for r in c.runs],
                "crmef_error": c.error,
                "tool": label, "tool_s": m.seconds, "tool_peak_mb": m.peak_mb, "tool_runs": [r.seconds for r in m.runs],
                "tool_error": m.error,
                "ratio": c.seconds / m.seconds if c.seconds and m.seconds and not (c.error or m.error) else None,
            })
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="runs per command; the median is reported (default 3)")
    ap.add_argument("--quick", action="store_true", help="small frames and 3 scenes: a smoke test")
    ap.add_argument("--jobs", default=",".join(ALL_JOBS), help=f"comma-separated subset of {','.join(ALL_JOBS)}")
    ap.add_argument("--crmef", default=None,
                    help="the crmef command to time, shell-split (default: `crmef` on PATH, else python -m crmef.cli)")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the Mertens script (default: this one)")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--scenes", type=int, default=50, help="scenes in the batch job (default 50)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds before one command counts as failed")
    ap.add_argument("--skip-slow", type=float, default=None, metavar="S",
                    help="do not repeat a command whose first run took longer than S seconds")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    ap.add_argument("--keep", type=Path, default=None, help="make the inputs in this folder and keep them")
    args = ap.parse_args(argv)

    if args.crmef:
        crmef = shlex.split(args.crmef)
    elif shutil.which("crmef"):
        crmef = [shutil.which("crmef")]
    else:
        crmef = [sys.executable, "-m", "crmef.cli"]

    with tempfile.TemporaryDirectory(prefix="bench_cli_") as td:
        tmp = args.keep or Path(td)
        tmp.mkdir(parents=True, exist_ok=True)
        print(f"making inputs in {tmp} …", file=sys.stderr)
        jobs, notes = build_jobs(args, crmef, args.python, tmp)
        if not os.access(TIME, os.X_OK):
            notes.append(f"{TIME} (GNU time) not found: peak RSS not measured.")
        try:
            version = subprocess.run([*crmef, "--version"], capture_output=True, text=True, timeout=120).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = "?"
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        results = {}
        for job in jobs:
            print(f"{job.name}: {job.title}", file=sys.stderr)
            results[job.name] = measure_job(job, args.repeats, args.timeout, args.skip_slow, tmp)

    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load_before is not None:
        notes.append(f"Load average (1 min) {load_before:.1f} at the start, {load_after:.1f} at the end "
                     f"(other processes share the CPUs: compare rows of one job, run side by side).")
    text, rows = table(jobs, results)
    errors = [f"{job.name} / {m.label}: {m.error}" for job in jobs for m in results[job.name].values() if m.error]
    header = (f"Whole process, median of {args.repeats} run(s){' (--quick)' if args.quick else ''}; "
              f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), {time.strftime('%Y-%m-%d')}; "
              f"crmef = `{' '.join(crmef)}` (version {version}); ratio = crmef s / tool s.")
    print(header)
    print()
    print(text)
    if notes or errors:
        print()
    for line in notes + [f"failed: {e}" for e in errors]:
        print(f"- {line}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "header": header, "crmef": crmef, "crmef_version": version, "repeats": args.repeats,
            "quick": args.quick, "cpus": os.cpu_count(), "rows": rows, "notes": notes, "errors": errors,
        }, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
