"""Scene-level train/val/test splits, and the committed split of ``../shared/data``.

Public API:

- :data:`SHARED_SPLIT_FILE` — ``crmef/data/splits/shared.json`` (package data).
- :func:`make_shared_split` — regenerate that table deterministically from a ``shared/data``
  folder (also ``crmef data split``): per sub-collection of ``sequences/`` (hdrps, deepfuse,
  forth) about 70/10/20 % train/val/test, the HDR maps 4/1/1 (scaled for other counts), and
  everything under ``misaligned/`` in test (real qualitative/test data, never trained on).
  Order inside a collection is ``sha256("<seed>:<name>")``, so it does not depend on library
  versions or on the file system.
- :func:`load_split` / :func:`lookup_split` — read a split table and find a scene in it by the
  tail of its path (``sequences/hdrps/Cades_Cove``), wherever the data folder lives.
- :func:`hash_split` — for scenes not in any table: a stable 70/10/20 assignment by name hash.

Frames never decide a split: a scene (folder, SICE sequence, paired file name or HDR map) is the
unit, so no scene has frames on both sides.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from crmef.errors import ConfigError
from crmef.imageio import is_image_file

SHARED_SPLIT_FILE = Path(__file__).resolve().parent / "splits" / "shared.json"
SPLITS = ("train", "val", "test")
FRACTIONS = (0.7, 0.1, 0.2)


def _order(names: list[str], seed: int) -> list[str]:
    return sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())


def split_counts(n: int, fractions: tuple[float, float, float] = FRACTIONS) -> tuple[int, int, int]:
    """Scene counts per split: at least one val and one test scene when ``n >= 3``."""
    val = max(1, round(n * fractions[1])) if n >= 3 else 0
    test = max(1, round(n * fractions[2])) if n >= 2 else 0
    return n - val - test, val, test


def assign(names: list[str], seed: int = 0, fractions: tuple[float, float, float] = FRACTIONS) -> dict[str, str]:
    """Split a collection of scene names by the seeded hash order and :func:`split_counts`."""
    n_train, n_val, _ = split_counts(len(names), fractions)
    order = _order(names, seed)
    return {n: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, n in enumerate(order)}


def hash_split(name: str, seed: int = 0, fractions: tuple[float, float, float] = FRACTIONS) -> str:
    """A stable split for one scene not listed in a table (name hash in [0, 1))."""
    u = int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:12], 16) / 16**12
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


def _scene_dirs(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if any(is_image_file(f) for f in filenames):
            out.append(Path(dirpath).relative_to(root).as_posix())
    return out


def make_shared_split(root: str | os.PathLike[str], seed: int = 0) -> dict[str, object]:
    """Build the split table of a ``shared/data`` folder.

    Returns:
        ``{"seed", "fractions", "counts", "scenes": {"sequences/hdrps/X": "train", ...}}``.

    Raises:
        ConfigError: ``root/sequences`` is missing.
    """
    root = Path(root)
    seq = root / "sequences"
    if not seq.is_dir():
        raise ConfigError(f"{root}: no sequences/ folder; point at the shared data folder")
    scenes: dict[str, str] = {}
    collections = sorted(p.name for p in seq.iterdir() if p.is_dir())
    for coll in collections:
        names = [f"sequences/{coll}/{n}" for n in _scene_dirs(seq / coll)]
        scenes.update(assign(names, seed))
    hdr = root / "hdr"
    if hdr.is_dir():
        maps = sorted(f"hdr/{p.name}" for p in hdr.iterdir() if p.suffix.lower() in (".exr", ".hdr"))
        n_val = 1 if len(maps) >= 3 else 0
        n_test = 1 if len(maps) >= 2 else 0
        order = _order(maps, seed)
        n_train = len(maps) - n_val - n_test
        scenes.update({m: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, m in enumerate(order)})
    mis = root / "misaligned"
    if mis.is_dir():
        scenes.update({f"misaligned/{n}": "test" for n in _scene_dirs(mis)})
    scenes = dict(sorted(scenes.items()))
    counts: dict[str, dict[str, int]] = {}
    for key, split in scenes.items():
        group = key.split("/")[1] if key.startswith("sequences/") else key.split("/")[0]
        counts.setdefault(group, {s: 0 for s in SPLITS})[split] += 1
    return {"seed": seed, "fractions": list(FRACTIONS), "counts": counts, "scenes": scenes}


@lru_cache(maxsize=8)
def _load(path: str) -> dict[str, str]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        scenes = data["scenes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable split file ({exc})") from exc
    bad = {v for v in scenes.values() if v not in SPLITS}
    if bad:
        raise ConfigError(f"{path}: unknown split names {sorted(bad)}; use train/val/test")
    return dict(scenes)


def load_split(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """``{scene key: split}`` from a split file (default: the committed shared split)."""
    return _load(str(path or SHARED_SPLIT_FILE))


def lookup_split(path: str | os.PathLike[str], table: dict[str, str]) -> str | None:
    """The split of a scene folder or HDR file by the tail of its path (1 to 3 components)."""
    parts = Path(path).resolve().parts
    for k in (3, 2, 1):
        if len(parts) >= k:
            key = "/".join(parts[-k:])
            if key in table:
                return table[key]
    return None
