"""The typical camera's saturation profile (``crmef.engine.TYPICAL_PROFILE``), measured on the
training brackets of ``../shared/data``.

Every training sequence (all usable frames, at the engine's work resolution) gives its bins of
:func:`crmef.engine.profile_pairs`; the profile ``L`` at :data:`crmef.engine.PROFILE_KNOTS` is
the pixel-weighted least-squares solution of ``L(grey_b) - L(grey_a) = log chroma ratio`` over
all of them, 0 up to grey 0.3, with a light second-difference smoothness, made non-increasing.
Prints ``exp(L)`` (the saturation relative to the shadows') beside the shipped constant.

    .venv/bin/python benchmarks/camera_profile.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def hat(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """(len(x), len(knots)) linear interpolation weights of ``x`` on evenly spaced ``knots``."""
    n = len(knots) - 1
    j = np.clip((x * n).astype(int), 0, n - 1)
    t = x * n - j
    out = np.zeros((len(x), n + 1))
    out[np.arange(len(x)), j] = 1 - t
    out[np.arange(len(x)), j + 1] = t
    return out


def main() -> int:
    from crmef.engine import (PROFILE_KNOTS, TYPICAL_PROFILE, profile_pairs, reduce_frames, select_frames,
                              work_shape)
    from crmef.imageio import read_image

    if not SHARED.is_dir():
        print(f"{SHARED} not found", file=sys.stderr)
        return 2
    splits = json.loads((ROOT / "src/crmef/data/splits/shared.json").read_text())["scenes"]
    bins = []
    for entry in json.loads((SHARED / "manifest.json").read_text()):
        key = entry["scene"].removeprefix("sequences/")
        if splits.get(key, splits.get(entry["scene"])) != "train":
            continue
        frames = [read_image(SHARED / entry["scene"] / f["file"]) for f in entry["frames"]]
        frames.sort(key=lambda a: float(a.mean()))
        frames = [frames[i] for i in select_frames(frames)[0]]
        b = profile_pairs(reduce_frames(frames, work_shape(*frames[0].shape[:2], 256)))
        if len(b):
            bins.append(b)
    pairs = np.vstack(bins)
    n = len(PROFILE_KNOTS)
    w = np.sqrt(pairs[:, 3] / pairs[:, 3].sum())
    anchor = np.zeros((4, n))
    anchor[np.arange(4), np.arange(4)] = 10.0  # 0 up to grey 0.3
    a = np.vstack([(hat(pairs[:, 1], PROFILE_KNOTS) - hat(pairs[:, 0], PROFILE_KNOTS)) * w[:, None],
                   np.diff(np.eye(n), 2, axis=0) * 0.05, anchor])
    rhs = np.concatenate([pairs[:, 2] * w, np.zeros(n - 2 + 4)])
    prof = np.linalg.lstsq(a, rhs, rcond=None)[0]
    prof = np.minimum(np.minimum.accumulate(prof), 0.0)
    print(f"{len(bins)} training brackets, {int(pairs[:, 3].sum())} pixel pairs")
    print("| grey | " + " | ".join(f"{k:.1f}" for k in PROFILE_KNOTS) + " |")
    print("|---|" + "---|" * n)
    print("| measured | " + " | ".join(f"{v:.3f}" for v in np.exp(prof)) + " |")
    print("| TYPICAL_PROFILE | " + " | ".join(f"{v:.3f}" for v in TYPICAL_PROFILE) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
