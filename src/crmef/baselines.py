"""Classical baselines: Mertens exposure fusion, enfuse, flow-aligned Mertens, per-pixel mean.

All functions take float32 (H, W, 3) RGB images in [0, 1] and return one float32 (H, W, 3)
RGB image clipped to [0, 1].

:func:`enfuse` runs Hugin's ``enfuse`` binary (Debian/Ubuntu package ``enfuse``) as a
subprocess; the others run in process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from skimage.exposure import match_histograms

from crmef.errors import CrmefError, InputError


def _check_frames(frames: Sequence[np.ndarray], minimum: int = 1) -> list[np.ndarray]:
    """Validate a bracket: float-like (H, W, 3) arrays of one size; returns float32 copies."""
    if len(frames) < minimum:
        raise InputError(f"need at least {minimum} frame(s), got {len(frames)}")
    out = []
    for i, f in enumerate(frames):
        a = np.asarray(f)
        if a.ndim != 3 or a.shape[2] != 3:
            raise InputError(f"frame {i + 1}: expected an (H, W, 3) RGB image, got shape {a.shape}")
        if a.shape != np.shape(frames[0]):
            raise InputError(
                f"frame {i + 1} is {a.shape[1]}x{a.shape[0]} but frame 1 is "
                f"{np.shape(frames[0])[1]}x{np.shape(frames[0])[0]}; all frames must have the same size"
            )
        out.append(a.astype(np.float32, copy=False))
    return out


def mertens(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Mertens et al. (2007) exposure fusion with OpenCV's default weights (contrast 1,
    saturation 1, well-exposedness 0: OpenCV leaves the paper's third term out by default).

    The one Mertens wrapper of crmef: the ``mertens`` / ``mertens_all`` baselines and the
    references of brackets without ground truth (:func:`crmef.data.reference.mertens_reference`)
    both call it. RGB in, RGB out; OpenCV gets BGR, because its contrast measure is computed on
    its own BGR-to-grey conversion. ``MergeMertens`` scales its input by 1/255 whatever the dtype,
    so the frames are passed as float32 in 0..255 (no 8-bit quantisation) and the result is
    clipped to [0, 1].

    Args:
        frames: two or more float32 (H, W, 3) RGB images in [0, 1], same size, any order.

    Returns:
        float32 (H, W, 3) RGB in [0, 1].
    """
    fs = _check_frames(frames, 2)
    bgr = [np.ascontiguousarray(f[..., ::-1] * np.float32(255.0)) for f in fs]
    fused = cv2.createMergeMertens().process(bgr)
    return np.clip(fused[..., ::-1], 0.0, 1.0).astype(np.float32)


def mean(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Per-pixel mean of the frames (float32 (H, W, 3) in [0, 1])."""
    fs = _check_frames(frames, 1)
    return np.clip(np.mean(np.stack(fs), axis=0), 0.0, 1.0).astype(np.float32)


def flow_grey(rgb: np.ndarray, max_side: int | None = None) -> np.ndarray:
    """The uint8 grey a flow is computed on: ``rgb`` (float32 (H, W, 3) in [0, 1]) area-reduced to
    at most ``max_side`` px on the long side (None: full resolution) -> (h, w) uint8."""
    h, w = rgb.shape[:2]
    s = 1.0 if max_side is None else min(1.0, max_side / max(h, w))
    if s < 1.0:
        rgb = cv2.resize(rgb, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def dis_flow(g_moving: np.ndarray, g_target: np.ndarray,
             preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> np.ndarray:
    """DIS optical flow from ``target`` to ``moving`` on their greys (:func:`flow_grey`, same
    size). The exposures differ, so the grey of ``moving`` is first histogram-matched to the grey
    of ``target``.

    Returns:
        (h, w, 2) float32 flow in pixels of the greys' resolution: ``target`` pixel + flow = where
        it lies in ``moving``.
    """
    matched = np.clip(np.round(match_histograms(g_moving, g_target)), 0, 255).astype(np.uint8)
    return cv2.DISOpticalFlow_create(preset).calc(g_target, matched, None)


def warp(moving: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``moving`` sampled at every pixel + ``flow`` (bilinear, borders replicated); a flow
    computed at a lower resolution is scaled up to ``moving``'s size first.

    Args:
        moving: float32 (H, W, 3).
        flow: (h, w, 2) float32 in pixels of its own resolution (not modified).

    Returns:
        float32 (H, W, 3).
    """
    h, w = moving.shape[:2]
    fh, fw = flow.shape[:2]
    if (fh, fw) != (h, w):
        pos = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
        pos[..., 0] *= w / fw
        pos[..., 1] *= h / fh
    else:
        pos = flow.astype(np.float32, copy=True)
    pos[..., 0] += np.arange(w, dtype=np.float32)  # flow + pixel grid: where to sample, in place
    pos[..., 1] += np.arange(h, dtype=np.float32)[:, None]
    return cv2.remap(moving, pos, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def align_to(moving: np.ndarray, target: np.ndarray, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
             max_side: int | None = None) -> np.ndarray:
    """Warp ``moving`` onto ``target`` with DIS optical flow on brightness-normalised grey images
    (:func:`dis_flow`, then :func:`warp`): the flow-then-fuse baseline's aligner.

    Args:
        moving: float32 (H, W, 3) RGB in [0, 1] (e.g. the under-exposed frame).
        target: float32 (H, W, 3) RGB in [0, 1], same size (e.g. the over-exposed frame).
        preset: OpenCV DIS preset.
        max_side: compute the flow at most this many pixels on the long side and scale it up;
            None: full resolution.

    Returns:
        float32 (H, W, 3), ``moving`` resampled on ``target``'s pixel grid.
    """
    moving, target = _check_frames([moving, target], 2)
    return warp(moving, dis_flow(flow_grey(moving, max_side), flow_grey(target, max_side), preset))


def flow_mertens(under: np.ndarray, over: np.ndarray) -> np.ndarray:
    """"Flow then fuse": the under frame warped onto the over frame (DIS flow on
    histogram-matched grey), then Mertens fusion of the aligned pair.

    Args:
        under: float32 (H, W, 3) RGB in [0, 1].
        over: float32 (H, W, 3) RGB in [0, 1], same size.

    Returns:
        float32 (H, W, 3) RGB in [0, 1], on the over frame's pixel grid.
    """
    return mertens([align_to(under, over), np.asarray(over, dtype=np.float32)])


class EnfuseError(CrmefError):
    """The ``enfuse`` binary is missing or failed (the CLI prints the message, exit code 2)."""


ENFUSE_PACKAGE = "enfuse"
"""The Debian/Ubuntu package that provides the ``enfuse`` binary (``apt-get install enfuse``)."""


def enfuse_binary() -> str | None:
    """Path of the ``enfuse`` binary on PATH (``$CRMEF_ENFUSE`` overrides), or None."""
    return os.environ.get("CRMEF_ENFUSE") or shutil.which("enfuse")


def require_enfuse() -> str:
    """Path of the ``enfuse`` binary; :class:`EnfuseError` naming the package when there is none."""
    exe = enfuse_binary()
    if exe is None:
        raise EnfuseError(
            f"the enfuse baseline needs the 'enfuse' binary (Hugin's exposure fusion), not found on PATH: "
            f"install the Debian/Ubuntu package '{ENFUSE_PACKAGE}' (apt-get install {ENFUSE_PACKAGE}) "
            "or set CRMEF_ENFUSE to the binary"
        )
    return exe


def enfuse(frames: Sequence[np.ndarray], threads: int | None = None, timeout: float | None = 600.0) -> np.ndarray:
    """Exposure fusion by Hugin's ``enfuse`` with its default settings (what photographers use).

    The frames are written as 16-bit RGB TIFFs into a temporary folder (no 8-bit quantisation),
    ``enfuse -o out.tif frame1.tif ... frameN.tif`` runs with no other option, and its 16-bit
    result is read back without the alpha channel enfuse adds; the folder is removed afterwards.

    Args:
        frames: two or more float32 (H, W, 3) RGB images in [0, 1], same size, any order.
        threads: OpenMP threads for enfuse (``OMP_NUM_THREADS``); None keeps the environment's.
        timeout: seconds before the subprocess is stopped (None: no limit).

    Returns:
        float32 (H, W, 3) RGB in [0, 1].

    Raises:
        InputError: bad frames (fewer than two, different sizes).
        EnfuseError: no ``enfuse`` binary (the message names the package to install), or enfuse
            failing (its last output lines are in the message).
    """
    fs = _check_frames(frames, 2)
    exe = require_enfuse()
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(int(threads))
    with tempfile.TemporaryDirectory(prefix="crmef-enfuse-") as tmp:
        names = []
        for i, f in enumerate(fs):
            name = Path(tmp) / f"frame{i:03d}.tif"
            bgr16 = np.rint(np.clip(f[..., ::-1], 0.0, 1.0) * 65535.0).astype(np.uint16)
            if not cv2.imwrite(str(name), bgr16):
                raise EnfuseError(f"enfuse: could not write a temporary frame into {tmp}")
            names.append(str(name))
        out = Path(tmp) / "fused.tif"
        try:
            run = subprocess.run([exe, "-o", str(out), *names], capture_output=True, text=True, env=env,
                                 timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise EnfuseError(f"enfuse ({exe}) did not finish within {timeout} s") from None
        except OSError as exc:
            raise EnfuseError(f"enfuse ({exe}) could not run: {exc}") from exc
        img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED) if out.is_file() else None
        if run.returncode != 0 or img is None:
            tail = "\n".join((run.stderr or run.stdout or "").strip().splitlines()[-5:])
            raise EnfuseError(f"enfuse ({exe}) failed with exit code {run.returncode}: {tail or 'no output'}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    scale = 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0
    rgb = img[..., 2::-1].astype(np.float32) / np.float32(scale)  # BGR(A) -> RGB, alpha dropped
    if rgb.shape != fs[0].shape:
        raise EnfuseError(f"enfuse returned a {rgb.shape[1]}x{rgb.shape[0]} image for {fs[0].shape[1]}x{fs[0].shape[0]} frames")
    return np.clip(rgb, 0.0, 1.0)


#: Pair baselines by name: ``fn(under, over) -> fused``.
PAIR_BASELINES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mertens": lambda under, over: mertens([under, over]),
    "flow_mertens": flow_mertens,
    "mean": lambda under, over: mean([under, over]),
    "enfuse": lambda under, over: enfuse([under, over]),
}
#: N-frame baselines by name: ``fn(frames) -> fused``, every frame of a bracket at once
#: (``crmef eval --frames all``; with two frames they equal their pair counterparts).
FRAME_BASELINES: dict[str, Callable[[Sequence[np.ndarray]], np.ndarray]] = {
    "mertens_all": mertens,
    "enfuse_all": enfuse,
}
