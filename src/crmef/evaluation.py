"""Evaluation runner and report writer behind ``crmef eval`` and ``crmef score``.

:func:`evaluate` fuses every sample of a dataset split with every requested method, scores the
results (PSNR / SSIM / LPIPS / FSIM against the reference; MEF-SSIM and the chroma hull distance
against the sources) and
returns an :class:`EvalResult`; :func:`write_tables` writes Markdown and CSV tables (mean ± std
per method, seconds per image, params and GFLOPs for network methods) and :func:`write_report`
an HTML page with side-by-side crops and per-line intensity profiles against the reference (the
paper's "signal maps", Figs. 3-4).

Methods (comma-separated in ``crmef eval --methods``):

- ``mertens``, ``flow_mertens``, ``mean``, ``enfuse`` — pair baselines of :mod:`crmef.baselines`
  (``enfuse`` needs the binary of the Debian package ``enfuse``);
- ``mertens_all``, ``enfuse_all`` — N-frame baselines: every frame of the bracket at once;
- ``model:NAME_OR_PATH`` — a fusion network loaded with :func:`crmef.models.load_model` and run
  with :func:`crmef.inference.fuse`;
- ``folder:DIR`` — already fused images named after the samples (``DIR/<name>.<ext>``, with
  ``/`` and ``:`` in the name replaced by ``_``, or ``DIR/<last part of the name>.<ext>``).

N frames (``load_samples(..., frames="all")``, ``crmef eval --frames all``): every sample also
carries all usable frames of its bracket, darkest first; the no-reference metrics (MEF-SSIM,
chroma hull) of every method are computed against all of them, N-frame methods (``*_all`` and
``model:``) fuse all of them, pair methods fuse the darkest and brightest usable frames. With
the default ``frames="pair"`` every method and metric sees those two frames only.

Fused images are cached as 16-bit PNGs (with their fusion time in a JSON sidecar) under
``<out>/cache/<method>/`` keyed by method, data source and sample, so a second run only scores.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crmef.errors import ConfigError, InputError
from crmef.imageio import IMAGE_SUFFIXES, load_image, write_image
from crmef.utils import atomic_path, atomic_write_text

REFERENCE_METRIC_NAMES = ("psnr", "ssim", "lpips", "fsim")
NO_REFERENCE_METRIC_NAMES = ("mef_ssim", "chroma_hull", "chroma_kept")
ALL_METRIC_NAMES = (*REFERENCE_METRIC_NAMES, *NO_REFERENCE_METRIC_NAMES)
BASELINE_NAMES = ("mertens", "flow_mertens", "mean", "enfuse", "mertens_all", "enfuse_all")
FRAME_MODES = ("pair", "all")
METRIC_DIGITS = {"psnr": 2, "chroma_hull": 5, "chroma_kept": 3}
"""Decimals a metric is shown and stored with (4 for the others)."""


# ----------------------------------------------------------------------------- files and scores


def image_tensor(path: str | Path) -> torch.Tensor:
    """Read an image file as a (3, H, W) float32 tensor in [0, 1] (errors name the file)."""
    return torch.from_numpy(load_image(path).rgb).permute(2, 0, 1).contiguous()


def same_size(paths: Sequence[Path], images: Sequence[torch.Tensor], what: str) -> None:
    """Raise :class:`InputError` naming the files when the images' sizes differ."""
    sizes = [f"{p} ({t.shape[-1]}x{t.shape[-2]})" for p, t in zip(paths, images, strict=True)]
    if len({tuple(t.shape[-2:]) for t in images}) > 1:
        raise InputError(f"{what} must have the same size: " + ", ".join(sizes))


def score_tensors(metrics: Sequence[str], img: torch.Tensor, ref: torch.Tensor | None = None,
                  sources: Sequence[torch.Tensor] | None = None) -> dict[str, float]:
    """Score one image.

    Args:
        metrics: names from ``psnr, ssim, lpips, fsim, mef_ssim, chroma_hull, chroma_kept``.
        img: (3, H, W) RGB in [0, 1].
        ref: (3, H, W) reference, needed for the full-reference metrics.
        sources: the (3, H, W) exposures (two or more), needed for ``mef_ssim``,
            ``chroma_hull`` and ``chroma_kept``.

    Returns:
        ``{metric: value}``.
    """
    from crmef.metrics import REFERENCE_METRICS, mef_ssim

    out: dict[str, float] = {}
    for name in metrics:
        if name in REFERENCE_METRICS:
            if ref is None:
                raise InputError(f"metric {name} needs a reference image")
            out[name] = float(REFERENCE_METRICS[name](img, ref)[0])
        elif name == "mef_ssim":
            if not sources:
                raise InputError("metric mef_ssim needs the source exposures")
            out[name] = float(mef_ssim(list(sources), img)[0])
        elif name in ("chroma_hull", "chroma_kept"):
            if not sources:
                raise InputError(f"metric {name} needs the source exposures")
            from crmef.metrics import chroma

            def hwc(t: torch.Tensor) -> np.ndarray:
                return t.detach().cpu().permute(1, 2, 0).numpy()

            out[name] = getattr(chroma, name)([hwc(s) for s in sources], hwc(img))
        else:
            raise InputError(f"unknown metric {name!r}; choose from {', '.join(ALL_METRIC_NAMES)}")
    return out


def parse_metrics(text: str) -> list[str]:
    """Split ``"psnr,ssim"`` into names, checking each one."""
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    if not names:
        raise InputError("no metric given; choose from " + ", ".join(ALL_METRIC_NAMES))
    for n in names:
        if n not in ALL_METRIC_NAMES:
            raise InputError(f"unknown metric {n!r}; choose from {', '.join(ALL_METRIC_NAMES)}")
    return names


def check_lpips_ready(metrics: Sequence[str]) -> None:
    """Fail before any work when LPIPS is requested but its weights are missing."""
    if "lpips" in metrics:
        from crmef.metrics.lpips import load_lpips_net

        load_lpips_net("cpu")


# ----------------------------------------------------------------------------- methods


@dataclass
class Method:
    """One fusion method of an evaluation.

    Attributes:
        spec: as given on the command line (``mertens``, ``model:general``, ``folder:DIR``).
        label: short name for tables.
        fuse: ``fn(under, over, name) -> fused`` on float32 (H, W, 3) arrays.
        key: identity for the cache (changes when the model file changes).
        params: parameter count (network methods).
        net: the network (network methods), for FLOP counting.
        fuse_frames: ``fn(frames, name) -> fused`` for N-frame methods, used on samples that
            carry all their frames (``Sample.frames``); None: the method fuses pairs only.
    """

    spec: str
    label: str
    fuse: Callable[[np.ndarray, np.ndarray, str], np.ndarray]
    key: str
    params: int | None = None
    net: torch.nn.Module | None = None
    cacheable: bool = True
    fuse_frames: Callable[[Sequence[np.ndarray], str], np.ndarray] | None = None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def _folder_method(spec: str, folder: Path) -> Method:
    if not folder.is_dir():
        raise InputError(f"{spec}: {folder} is not a folder")

    def fuse(under: np.ndarray, over: np.ndarray, name: str) -> np.ndarray:
        stems = [_safe(name), name.replace("/", "_").replace(":", "_"), name.split("/")[-1].split(":")[0]]
        tried = []
        for stem in dict.fromkeys(stems):
            for suffix in IMAGE_SUFFIXES:
                for cand in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
                    tried.append(cand)
                    if cand.is_file():
                        img = load_image(cand).rgb
                        if img.shape != under.shape:
                            raise InputError(
                                f"{cand}: fused image is {img.shape[1]}x{img.shape[0]} but its sources are "
                                f"{under.shape[1]}x{under.shape[0]}"
                            )
                        return img
        raise InputError(f"{spec}: no fused image for sample {name!r}; looked for {tried[0]} (or .png/.jpg/... variants)")

    return Method(spec, f"folder:{folder.name}", fuse, key=f"folder:{folder.resolve()}", cacheable=False)


def model_label(name: str) -> str:
    """The table label of ``model:NAME_OR_PATH``: ``model:<file stem>`` for a path, else ``model:<name>``."""
    path = Path(name)
    return f"model:{path.stem if path.suffix else name}"


def data_key(root: str | Path, kind: str, split: str, seed: int, samples: int | None, misalign: bool = False,
             frames: str = "pair") -> str:
    """Identity of an evaluated dataset (what :func:`load_samples` was asked for), for the cache key."""
    key = f"{Path(root).resolve()}|{kind}|{split}|{seed}|{samples}"
    if misalign:
        key += "|misalign"
    return key + "|all-frames" if frames == "all" else key


def _engine_method(spec: str, name: str, card: Path) -> Method:
    """``model:general`` / ``model:aligned`` / ``model:CARD.json``: the default engine, every frame."""
    from crmef.engine import ExposureModel, fuse_bracket

    model = ExposureModel.from_card(card)
    stamp = name
    for file in (card, model.path):
        st = file.stat()
        stamp += f":{file.resolve()}:{st.st_mtime_ns}:{st.st_size}"

    def fuse_all(frames: Sequence[np.ndarray], _: str) -> np.ndarray:
        return np.clip(fuse_bracket(model, frames)[0], 0.0, 1.0)

    def fuse(under: np.ndarray, over: np.ndarray, n: str) -> np.ndarray:
        return fuse_all([under, over], n)

    return Method(spec, model_label(name), fuse, key=f"engine:{stamp}", fuse_frames=fuse_all)


def _model_method(spec: str, name: str, device: str) -> Method:
    from crmef.engine import engine_card

    card = engine_card(name)
    if card is not None:
        return _engine_method(spec, name, card)
    try:
        from crmef.models import load_model, resolve_model_paths
    except ImportError as exc:
        raise ConfigError(f"{spec}: model loading is not available in this install ({exc})") from exc
    try:
        from crmef.inference import fuse as fuse_frames
    except ImportError as exc:
        raise ConfigError(f"{spec}: crmef.inference is not available in this install ({exc})") from exc
    from crmef.complexity import count_params

    net = load_model(name, device=device)
    # Key the fused-image cache on the weight and card files themselves (a retrained default
    # model under the same name must not reuse the old fusions).
    stamp = name
    for file in resolve_model_paths(name):
        st = file.stat()
        stamp += f":{file.resolve()}:{st.st_mtime_ns}:{st.st_size}"

    def fuse_all(frames: Sequence[np.ndarray], _: str) -> np.ndarray:
        out = fuse_frames(list(frames), model=net, device=device)
        return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)

    def fuse(under: np.ndarray, over: np.ndarray, name: str) -> np.ndarray:
        return fuse_all([under, over], name)

    # All frames go to crmef.inference.fuse as a user would pass them; it decides which it uses.
    return Method(spec, model_label(name), fuse, key=f"model:{stamp}",
                  params=count_params(net), net=net, fuse_frames=fuse_all)


def parse_methods(text: str, device: str = "cpu") -> list[Method]:
    """Build the methods of ``--methods`` (see the module docstring)."""
    from crmef.baselines import FRAME_BASELINES, PAIR_BASELINES, require_enfuse

    methods: list[Method] = []
    for spec in (s.strip() for s in text.split(",")):
        if not spec:
            continue
        if spec in ("enfuse", "enfuse_all"):
            require_enfuse()  # fail before any work, naming the package to install
        if spec in PAIR_BASELINES:
            fn = PAIR_BASELINES[spec]
            methods.append(Method(spec, spec, lambda u, o, _n, fn=fn: fn(u, o), key=f"baseline:{spec}:v1"))
        elif spec in FRAME_BASELINES:
            fn_all = FRAME_BASELINES[spec]
            methods.append(Method(spec, spec, lambda u, o, _n, fn=fn_all: fn([u, o]), key=f"baseline:{spec}:v1",
                                  fuse_frames=lambda fs, _n, fn=fn_all: fn(list(fs))))
        elif spec.startswith("model:") and spec[6:]:
            methods.append(_model_method(spec, spec[6:], device))
        elif spec.startswith("folder:") and spec[7:]:
            methods.append(_folder_method(spec, Path(spec[7:]).expanduser()))
        else:
            raise InputError(
                f"unknown method {spec!r}; use {', '.join(BASELINE_NAMES)}, model:NAME_OR_PATH or folder:DIR"
            )
    if not methods:
        raise InputError("no method given to --methods")
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise InputError(f"methods must be distinct, got {', '.join(labels)}")
    return methods


# ----------------------------------------------------------------------------- data


@dataclass
class Sample:
    """One evaluation sample: float32 (H, W, 3) arrays in [0, 1]; ``ref`` may be None.

    ``frames``: every usable frame of the bracket, darkest first (``under`` and ``over`` are
    its ends), when the samples were loaded with ``frames="all"``; else None.
    """

    name: str
    under: np.ndarray
    over: np.ndarray
    ref: np.ndarray | None
    frames: list[np.ndarray] | None = None

    @property
    def sources(self) -> list[np.ndarray]:
        """What the no-reference metrics compare with: all frames, or (under, over)."""
        return list(self.frames) if self.frames else [self.under, self.over]


def load_samples(root: str | Path, split: str = "test", kind: str = "auto", samples: int | None = None,
                 seed: int = 0, limit: int | None = None, misalign: bool = False,
                 frames: str = "pair") -> tuple[list[Sample], str]:
    """Full-size (under, over, ref) samples of a dataset split via :mod:`crmef.data`.

    Args:
        root: dataset folder (brackets, SICE, paired folders or HDR radiance maps).
        split: ``train``/``val``/``test``/``all``.
        kind: data source kind (``auto`` detects it).
        samples: number of synthetic samples for ``hdr_synth`` (default: 2 per radiance map).
        seed: synthesis / split seed.
        limit: keep only the first ``limit`` samples.
        misalign: warp each under frame by a random homography plus a smooth local displacement
            (the training defaults of :class:`~crmef.data.misalign.MisalignConfig` with a 2 px
            local field; reproducible for ``seed``); the reference stays aligned with the over
            frame and invalid borders are cropped from all three.
        frames: ``"pair"`` (the darkest and brightest usable frames) or ``"all"``: each sample
            also carries every usable frame of its bracket (:attr:`Sample.frames`; bracket
            folders only, not with ``misalign``).

    Returns:
        The samples and the detected kind.
    """
    from crmef.data import DataConfig, build_dataset
    from crmef.data.datasets import SourceSpec
    from crmef.data.layouts import detect_layout
    from crmef.data.misalign import MisalignConfig

    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"--data {root}: no such folder")
    if frames not in FRAME_MODES:
        raise InputError(f"frames must be one of {', '.join(FRAME_MODES)}, got {frames!r}")
    actual = detect_layout(root) if kind == "auto" else kind
    if frames == "all" and (misalign or actual not in ("brackets", "sice")):
        raise InputError(f"--frames all needs bracket folders without --misalign; {root} is {actual}"
                         f"{' (misaligned)' if misalign else ''}")
    cfg = DataConfig(sources=[SourceSpec(root=str(root), kind=actual)], crop=None, split=split,
                     augment=False, seed=seed, samples_per_epoch=None,
                     misalign=MisalignConfig(local_amplitude=2.0) if misalign else False)
    ds = build_dataset(cfg)
    if actual == "hdr_synth":
        n = samples or 2 * len(getattr(ds, "maps", [0]))
        cfg.samples_per_epoch = n
        ds = build_dataset(cfg)
    count = len(ds) if limit is None else min(limit, len(ds))
    out = []
    for i in range(count):
        item = ds[i]
        arr = {k: item[k].permute(1, 2, 0).numpy().astype(np.float32) for k in ("under", "over")}
        ref = item.get("ref")
        out.append(Sample(str(item["name"]), arr["under"], arr["over"],
                          None if ref is None else ref.permute(1, 2, 0).numpy().astype(np.float32),
                          _all_frames(ds, i, cfg.clip_fraction) if frames == "all" else None))
    return out, actual


def _all_frames(ds: Any, index: int, clip_fraction: float) -> list[np.ndarray]:
    """Every usable frame of sample ``index``'s bracket, darkest first, float32 in [0, 1]."""
    from crmef.data.exposure import usable_frames

    item = ds.items[index % len(ds.items)]
    scene = item.source_scene
    if scene is None:
        raise InputError(f"--frames all: sample {item.name} has no bracket of frames (a labelled pair)")
    return [np.asarray(ds.cache.frame(f.path, item.size), dtype=np.float32) / np.float32(255.0)
            for f in usable_frames(scene.frames, clip_fraction)]


# ----------------------------------------------------------------------------- runner


@dataclass
class EvalResult:
    """Per-image scores and per-method summaries of one evaluation."""

    methods: list[Method]
    metrics: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)  # method, sample, seconds, cached, metrics
    fused: dict[tuple[str, str], Path] = field(default_factory=dict)  # (label, sample) -> cached PNG
    flops_size: tuple[int, int] | None = None
    gflops: dict[str, float] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        """One dict per method: n, mean/std of each metric, seconds per image, params, GFLOPs."""
        out = []
        for m in self.methods:
            rows = [r for r in self.rows if r["method"] == m.label]
            entry: dict[str, Any] = {"method": m.label, "n": len(rows)}
            for k in self.metrics:
                vals = np.array([r[k] for r in rows if r.get(k) is not None and math.isfinite(r[k])], dtype=np.float64)
                entry[k] = (float(vals.mean()), float(vals.std())) if len(vals) else None
            secs = [r["seconds"] for r in rows if r["seconds"] is not None]
            entry["seconds"] = float(np.mean(secs)) if secs else None
            entry["params"] = m.params
            entry["gflops"] = self.gflops.get(m.label)
            out.append(entry)
        return out


def _cache_paths(cache: Path, method: Method, data_key: str, name: str) -> tuple[Path, Path]:
    digest = hashlib.sha1(f"{method.key}|{data_key}|{name}".encode()).hexdigest()[:12]
    folder = cache / _safe(method.label)
    stem = f"{_safe(name)[:80]}-{digest}"
    return folder / f"{stem}.png", folder / f"{stem}.json"


def camera_colour_by_method(out_dir: Path, scenes: Path) -> dict[str, float]:
    """Mean :func:`crmef.metrics.chroma.camera_colour` of every method's cached outputs of a set
    of shared sequences, each checked against its scene's whole bracket (all frames, whatever
    the method fused; read and measured once per scene): ``{method label: mean}``, NaN scenes
    left out.

    Args:
        out_dir: the set's output folder of :func:`evaluate` (its ``cache/<method>/`` holds one
            PNG and one JSON naming the method and the sample per scene).
        scenes: the folder of the scenes (``../shared/data/sequences``): a sample ``ds/scene`` is
            ``scenes / ds / scene``.
    """
    from crmef.imageio import read_image
    from crmef.metrics.chroma import camera_colour_from, camera_evidence

    by_sample: dict[str, list[tuple[str, Path]]] = {}
    for meta in sorted((out_dir / "cache").glob("*/*.json")):
        info = json.loads(meta.read_text())
        by_sample.setdefault(info["sample"], []).append((info["method"], meta.with_suffix(".png")))
    values: dict[str, list[float]] = {}
    for sample, outputs in by_sample.items():
        evidence = camera_evidence([read_image(f) for f in sorted((scenes / sample).iterdir())
                                    if f.suffix.lower() in IMAGE_SUFFIXES])
        for label, png in outputs:
            v = camera_colour_from(evidence, read_image(png))
            if math.isfinite(v):
                values.setdefault(label, []).append(v)
    return {label: float(np.mean(v)) for label, v in sorted(values.items())}


def evaluate(samples: Sequence[Sample], methods: Sequence[Method], metrics: Sequence[str], out_dir: Path,
             data_key: str, progress: bool = True) -> EvalResult:
    """Fuse every sample with every method (reusing cached outputs) and score the results.

    Args:
        samples: the data.
        methods: from :func:`parse_methods`.
        metrics: metric names; reference metrics are skipped for samples without a reference.
        out_dir: folder whose ``cache/`` holds fused images.
        data_key: identity of the data (root, split, kind, seed) for the cache key.
        progress: show a progress bar.

    Returns:
        The :class:`EvalResult`.
    """
    from tqdm import tqdm

    check_lpips_ready(metrics)
    result = EvalResult(list(methods), list(metrics))
    cache = out_dir / "cache"
    bar = tqdm(total=len(samples) * len(methods), desc="eval", unit="img", disable=not progress)
    for s in samples:
        src = [torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1) for f in s.sources]
        ref = None if s.ref is None else torch.from_numpy(s.ref).permute(2, 0, 1)
        wanted = [m for m in metrics if m in NO_REFERENCE_METRIC_NAMES or ref is not None]
        for m in methods:
            bar.set_postfix_str(f"{m.label} {s.name}"[:40])
            png, meta = _cache_paths(cache, m, data_key, s.name)
            cached = m.cacheable and png.is_file() and meta.is_file()
            if cached:
                fused = load_image(png).rgb
                seconds = json.loads(meta.read_text()).get("seconds")
                if fused.shape != s.under.shape:
                    cached = False
            if not cached:
                t0 = time.perf_counter()
                if s.frames and m.fuse_frames is not None:
                    fused = m.fuse_frames(s.frames, s.name)
                else:
                    fused = m.fuse(s.under, s.over, s.name)
                seconds = time.perf_counter() - t0
                if fused.shape != s.under.shape:
                    raise InputError(
                        f"{m.spec}: output for {s.name} is {fused.shape[1]}x{fused.shape[0]}, "
                        f"sources are {s.under.shape[1]}x{s.under.shape[0]}"
                    )
                write_image(png, fused, bits=16)
                atomic_write_text(meta, json.dumps({"method": m.spec, "sample": s.name, "seconds": seconds}))
                fused = load_image(png).rgb  # score what is stored, so a rerun gives identical numbers
            scores = score_tensors(wanted, torch.from_numpy(np.ascontiguousarray(fused)).permute(2, 0, 1), ref, src)
            result.rows.append({"method": m.label, "sample": s.name, "seconds": seconds, "cached": cached, **scores})
            result.fused[(m.label, s.name)] = png
            bar.update(1)
    bar.close()
    if samples:
        h, w = samples[0].under.shape[:2]
        result.flops_size = (h, w)
        for m in methods:
            if m.net is not None:
                from crmef.complexity import count_flops

                result.gflops[m.label] = count_flops(m.net, (h, w)) / 1e9
    return result


# ----------------------------------------------------------------------------- tables


def _fmt(v: tuple[float, float] | None, metric: str) -> str:
    if v is None:
        return "–"
    digits = METRIC_DIGITS.get(metric, 4)
    return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"


def markdown_table(result: EvalResult) -> str:
    """The summary as a Markdown table (arrows mark the better direction)."""
    from crmef.metrics import HIGHER_IS_BETTER

    heads = ["method", "n"] + [f"{k.upper().replace('_', '-')} {'↑' if HIGHER_IS_BETTER[k] else '↓'}" for k in result.metrics]
    heads += ["s / image", "params (M)", "GFLOPs"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for e in result.summary():
        cells = [e["method"], str(e["n"])] + [_fmt(e[k], k) for k in result.metrics]
        cells.append("–" if e["seconds"] is None else f"{e['seconds']:.3f}")
        cells.append("–" if e["params"] is None else f"{e['params'] / 1e6:.3f}")
        cells.append("–" if e["gflops"] is None else f"{e['gflops']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(result: EvalResult, out_dir: Path, header: str = "") -> dict[str, Path]:
    """Write ``table.md``, ``table.csv`` (summary) and ``per_image.csv`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "table.md", "csv": out_dir / "table.csv", "per_image": out_dir / "per_image.csv"}
    note = ""
    if result.flops_size and result.gflops:
        note = f"\nGFLOPs at {result.flops_size[1]}x{result.flops_size[0]}.\n"
    atomic_write_text(paths["markdown"], (header + "\n\n" if header else "") + markdown_table(result) + note)

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "n"] + [f"{k}_{s}" for k in result.metrics for s in ("mean", "std")] + ["seconds_per_image", "params", "gflops"])
    for e in result.summary():
        vals = []
        for k in result.metrics:
            vals += ["", ""] if e[k] is None else [f"{e[k][0]:.6f}", f"{e[k][1]:.6f}"]
        w.writerow([e["method"], e["n"], *vals, "" if e["seconds"] is None else f"{e['seconds']:.4f}",
                    "" if e["params"] is None else e["params"], "" if e["gflops"] is None else f"{e['gflops']:.3f}"])
    atomic_write_text(paths["csv"], buf.getvalue())

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "sample", "seconds", "cached", *result.metrics])
    for r in result.rows:
        w.writerow([r["method"], r["sample"], f"{r['seconds']:.4f}" if r["seconds"] is not None else "", int(r["cached"]),
                    *[("" if r.get(k) is None else f"{r[k]:.6f}") for k in result.metrics]])
    atomic_write_text(paths["per_image"], buf.getvalue())
    return paths


# ----------------------------------------------------------------------------- report


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def pick_crop(ref: np.ndarray, size: int) -> tuple[int, int, int]:
    """A square crop (top, left, side) around the most detailed region of ``ref`` (H, W, 3)."""
    import cv2

    h, w = ref.shape[:2]
    side = min(size, h, w)
    lum = _luma(ref)
    grad = np.abs(cv2.Sobel(lum, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(lum, cv2.CV_32F, 0, 1))
    energy = cv2.boxFilter(grad, -1, (side, side), normalize=True, borderType=cv2.BORDER_CONSTANT)
    half = side // 2
    energy[:half, :] = energy[h - (side - half) + 1 :, :] = -1
    energy[:, :half] = energy[:, w - (side - half) + 1 :] = -1
    cy, cx = np.unravel_index(int(np.argmax(energy)), energy.shape)
    return int(np.clip(cy - half, 0, h - side)), int(np.clip(cx - half, 0, w - side)), side


def signal_map_figure(sample: Sample, fused: dict[str, np.ndarray], path: Path, crop: int = 160) -> Path:
    """Side-by-side crops (under, over, every method, reference) and the intensity profile of
    the crop's middle row for every method against the reference; saved as PNG.

    Args:
        sample: the sources and reference.
        fused: method label -> fused (H, W, 3) image.
        path: output PNG.
        crop: crop side in pixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = sample.ref if sample.ref is not None else sample.over
    top, left, side = pick_crop(base, crop)
    row = top + side // 2
    panels = [("under", sample.under), ("over", sample.over), *fused.items()]
    if sample.ref is not None:
        panels.append(("reference", sample.ref))
    n = len(panels)
    fig = plt.figure(figsize=(2.2 * n, 5.6), dpi=100)
    grid = fig.add_gridspec(2, n, height_ratios=[1.0, 1.1])
    for i, (label, img) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(np.clip(img[top : top + side, left : left + side], 0, 1), interpolation="nearest")
        ax.axhline(side // 2, color="yellow", lw=0.8, ls="--")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[1, :])
    xs = np.arange(left, left + side)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, img) in enumerate(fused.items()):
        ax.plot(xs, _luma(img[row, left : left + side]), lw=1.2, color=colours[i % len(colours)], label=label)
    if sample.ref is not None:
        ax.plot(xs, _luma(sample.ref[row, left : left + side]), lw=2.0, color="black", ls="--", label="reference")
    ax.plot(xs, _luma(sample.under[row, left : left + side]), lw=0.8, color="0.6", ls=":", label="under")
    ax.plot(xs, _luma(sample.over[row, left : left + side]), lw=0.8, color="0.3", ls=":", label="over")
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"x (row y = {row})")
    ax.set_ylabel("luma")
    ax.set_title(f"signal map: {sample.name}", fontsize=10)
    ax.legend(fontsize=7, ncol=min(6, len(fused) + 3), loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_report(result: EvalResult, samples: Sequence[Sample], out_dir: Path, title: str, max_figures: int = 8,
                 crop: int = 160) -> Path:
    """Write ``index.html`` with the summary table and signal-map figures (``figures/*.png``)."""
    figures = []
    for s in samples[:max_figures]:
        fused = {m.label: load_image(result.fused[(m.label, s.name)]).rgb for m in result.methods}
        figures.append((s.name, signal_map_figure(s, fused, out_dir / "figures" / f"{_safe(s.name)}.png", crop)))
    from crmef.metrics import HIGHER_IS_BETTER

    summary = result.summary()
    head = "".join(f"<th>{html.escape(k.upper())} {'↑' if HIGHER_IS_BETTER[k] else '↓'}</th>" for k in result.metrics)
    rows = []
    for e in summary:
        cells = "".join(f"<td>{html.escape(_fmt(e[k], k))}</td>" for k in result.metrics)
        sec = "–" if e["seconds"] is None else f"{e['seconds']:.3f}"
        par = "–" if e["params"] is None else f"{e['params'] / 1e6:.3f}"
        gfl = "–" if e["gflops"] is None else f"{e['gflops']:.2f}"
        rows.append(f"<tr><td>{html.escape(e['method'])}</td><td>{e['n']}</td>{cells}<td>{sec}</td><td>{par}</td><td>{gfl}</td></tr>")
    figs = "".join(
        f"<figure><img src='{html.escape(p.relative_to(out_dir).as_posix())}' alt='{html.escape(n)}'>"
        f"<figcaption>{html.escape(n)}</figcaption></figure>" for n, p in figures
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
img{{max-width:100%}}figure{{margin:1.5em 0}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Mean ± std over {len(samples)} image(s); seconds per image are fusion time only.
Tables: <a href="table.md">table.md</a>, <a href="table.csv">table.csv</a>, <a href="per_image.csv">per_image.csv</a>.</p>
<table><tr><th>method</th><th>n</th>{head}<th>s / image</th><th>params (M)</th><th>GFLOPs</th></tr>
{''.join(rows)}</table>
<h2>Signal maps</h2>
<p>Top: crops around the most detailed region of the reference; the dashed line marks the
row whose luma profile is plotted below for every method against the reference.</p>
{figs}
</body></html>
"""
    page_path = out_dir / "index.html"
    atomic_write_text(page_path, page)
    return page_path

