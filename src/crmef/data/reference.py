"""References for brackets without ground truth, and the on-disk cache of decoded frames.

Public API:

- :func:`default_cache_dir` — ``$CRMEF_CACHE`` or ``~/.cache/crmef``; references live in its
  ``refs/`` sub-folder (so ``~/.cache/crmef/refs`` by default), decoded frames in ``decoded/``.
- :func:`mertens_reference` — the reference method: :func:`crmef.baselines.mertens` (OpenCV's
  Mertens exposure fusion with its default weights, the ``mertens_all`` baseline) of **every**
  frame of the bracket.
- :class:`ArrayCache` — uint8 (H, W, 3) RGB arrays stored as ``.npy`` files, written atomically
  (temporary name, then rename) and memory-mapped on read; an entry is never recomputed when
  present. Keys hash the inputs (absolute paths, file sizes and modification times, frame list,
  target size and :data:`REFERENCE_METHOD`), so a changed file or method gets a new entry.

The data folder itself is never written to (``../shared`` is read-only).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from crmef.baselines import mertens
from crmef.data.layouts import Scene
from crmef.imageio import read_image
from crmef.utils import atomic_path

REFERENCE_METHOD = "mertens-cv2-all-frames-clip-v3"
"""Bump when the reference method changes: cached references are keyed by it. v2 entries may hold
near-black references of an early build; v3: OpenCV gets BGR (v2 passed RGB, so its contrast
weight was computed on a grey with red and blue swapped)."""


def default_cache_dir() -> Path:
    """``$CRMEF_CACHE`` when set, else ``~/.cache/crmef``."""
    env = os.environ.get("CRMEF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "crmef"


def _file_id(path: Path) -> list[object]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def load_rgb8(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image as uint8 (H, W, 3) RGB, resized (area filter) to ``size=(w, h)`` if given.

    Raises:
        InputError: unreadable file (named in the message).
    """
    rgb = read_image(path)
    if size is not None and (rgb.shape[1], rgb.shape[0]) != tuple(size):
        rgb = cv2.resize(rgb, tuple(size), interpolation=cv2.INTER_AREA)
    return np.round(rgb * 255.0).astype(np.uint8)


def mertens_reference(frames: Sequence[np.ndarray]) -> np.ndarray:
    """The reference of a bracket: :func:`crmef.baselines.mertens` of all its frames.

    Args:
        frames: float32 (H, W, 3) RGB in [0, 1], any order, same size (two or more).

    Returns:
        float32 (H, W, 3) RGB in [0, 1].
    """
    return mertens(frames)


class ArrayCache:
    """Decoded uint8 RGB arrays on disk (``.npy``), memory-mapped on read.

    Args:
        root: cache folder (created on first write).
        memory: also keep loaded arrays in this process (per DataLoader worker).
    """

    def __init__(self, root: str | os.PathLike[str], memory: bool = True) -> None:
        self.root = Path(root)
        self._memory: dict[str, np.ndarray] | None = {} if memory else None

    def __getstate__(self) -> dict[str, object]:
        # DataLoader workers get an empty in-memory table (never pickle mapped arrays).
        state = dict(self.__dict__)
        state["_memory"] = {} if self._memory is not None else None
        return state

    def path_for(self, kind: str, key_parts: Sequence[object]) -> Path:
        """Cache file of an entry (``<root>/<kind>/<sha1>.npy``)."""
        digest = hashlib.sha1(json.dumps(list(key_parts), default=str).encode()).hexdigest()
        return self.root / kind / f"{digest}.npy"

    def get(self, kind: str, key_parts: Sequence[object], build: Callable[[], np.ndarray]) -> np.ndarray:
        """Return the cached array, building and storing it (atomically) when absent."""
        path = self.path_for(kind, key_parts)
        key = str(path)
        if self._memory is not None and key in self._memory:
            return self._memory[key]
        arr = None
        if path.is_file():
            try:
                arr = np.load(path, mmap_mode="r")
            except (ValueError, OSError):
                arr = None  # truncated by a crash before the rename cannot happen; be safe anyway
        if arr is None:
            built = np.ascontiguousarray(build(), dtype=np.uint8)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, built)
            arr = np.load(path, mmap_mode="r")
        if self._memory is not None:
            self._memory[key] = arr
        return arr

    def frame(self, path: Path, size: tuple[int, int]) -> np.ndarray:
        """A frame decoded to uint8 (H, W, 3) RGB at ``size=(w, h)``."""
        return self.get("decoded", [*_file_id(path), list(size)], lambda: load_rgb8(path, size))

    def reference(self, scene: Scene) -> np.ndarray:
        """The Mertens reference of a scene's full bracket, uint8 (H, W, 3) RGB."""
        key = [REFERENCE_METHOD, str(scene.path.resolve()), [_file_id(f.path) for f in scene.frames], list(scene.size)]

        def build() -> np.ndarray:
            frames = [load_rgb8(f.path, scene.size).astype(np.float32) / 255.0 for f in scene.frames]
            return np.round(mertens_reference(frames) * 255.0)

        return self.get("refs", key, build)
