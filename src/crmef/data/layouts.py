"""Dataset layouts on disk: bracket folders, SICE, paired folders, HDR radiance folders.

Public API:

- :class:`Scene` — one view: its frames in exposure order, common size, optional label.
- :class:`PairItem` — one (under, over, reference) sample as files (reference ``None`` means
  "build it from the scene's full bracket", see :mod:`crmef.data.reference`).
- :func:`detect_layout` — ``"paired"``, ``"sice"``, ``"hdr_synth"`` or ``"brackets"``.
- :func:`scan_brackets` — (a) one sub-folder per scene, at any depth (``sequences/*/*``).
- :func:`scan_sice` — (b) ``Dataset_Part1/<n>/*.JPG`` with ``Dataset_Part1/Label/<n>.JPG``.
- :func:`scan_paired` — (c) ``trainA/ trainB/ trainC/`` (under / over / ground truth, same
  file names); any prefix works (``testA/testB/testC``...).
- :func:`scan_hdr` — ``*.exr`` / ``*.hdr`` radiance maps for synthesis.
- :func:`scene_pairs` — the (under, over) pairs of a scene for a pair mode.

Bad input is handled the same way everywhere: a scene with fewer than two usable frames and an
unreadable image are skipped with a :class:`DataWarning` naming the scene or file; frames of
different sizes in one scene raise :class:`~crmef.errors.InputError` naming the scene unless
``resize=True`` (then every frame is resized to the largest size all frames share:
the smallest width by the smallest height).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crmef.data.exposure import (
    DEFAULT_CLIP_FRACTION,
    FrameInfo,
    frame_info,
    select_pair,
    select_pairs,
    sort_frames,
)
from crmef.errors import ConfigError, InputError
from crmef.imageio import is_image_file

HDR_SUFFIXES = (".exr", ".hdr")
LAYOUTS = ("brackets", "sice", "paired", "hdr_synth")


class DataWarning(UserWarning):
    """A scene or file was skipped (too few frames, unreadable image, missing label...)."""


def _warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


@dataclass
class Scene:
    """One view of a scene, frames sorted darkest to brightest.

    Attributes:
        name: scene name relative to the dataset root (posix, e.g. ``"hdrps/Cades_Cove"``).
        path: the folder holding the frames.
        frames: usable and unusable frames, darkest first.
        size: ``(width, height)`` every frame is served at.
        label: ground-truth image (SICE), or ``None`` when the reference is built.
        resized: True when frames had different sizes and are resized to ``size``.
    """

    name: str
    path: Path
    frames: list[FrameInfo]
    size: tuple[int, int]
    label: Path | None = None
    resized: bool = False


@dataclass(frozen=True)
class PairItem:
    """One supervised sample on disk.

    Attributes:
        name: unique name (``"<scene>"`` or ``"<scene>:<under>+<over>"`` for several pairs).
        scene: the scene name, the unit of splitting.
        under: under-exposed frame.
        over: over-exposed frame.
        ref: ground-truth file, or ``None`` to build it from ``source_scene``'s bracket.
        size: ``(width, height)`` to serve all three at.
        source_scene: the scene (needed when ``ref`` is None), else None.
    """

    name: str
    scene: str
    under: Path
    over: Path
    ref: Path | None
    size: tuple[int, int]
    source_scene: Scene | None = field(default=None, compare=False, hash=False)


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_image_file(p)
    )


def _paired_prefixes(root: Path) -> list[str]:
    names = {p.name for p in root.iterdir() if p.is_dir()}
    return sorted(n[:-1] for n in names if n.endswith("A") and n[:-1] + "B" in names and n[:-1] + "C" in names)


def _sice_parts(root: Path) -> list[Path]:
    if (root / "Label").is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "Label").is_dir())


def detect_layout(root: str | os.PathLike[str]) -> str:
    """Guess the layout of a dataset folder.

    Returns:
        ``"paired"`` (``<p>A/<p>B/<p>C`` folders), ``"sice"`` (``Label/`` folders),
        ``"hdr_synth"`` (``.exr``/``.hdr`` files directly inside) or ``"brackets"``.

    Raises:
        ConfigError: the folder does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"data root {root} does not exist or is not a folder")
    if _paired_prefixes(root):
        return "paired"
    if _sice_parts(root):
        return "sice"
    if any(p.suffix.lower() in HDR_SUFFIXES for p in root.iterdir() if p.is_file()):
        return "hdr_synth"
    return "brackets"


def _measure(paths: Sequence[Path]) -> list[FrameInfo]:
    out = []
    for p in paths:
        try:
            out.append(frame_info(p))
        except InputError as exc:
            _warn(f"skipping unreadable image {p}: {exc}")
    return out


def build_scene(
    folder: Path,
    name: str,
    frames: Sequence[Path] | None = None,
    resize: bool = False,
    clip_fraction: float = DEFAULT_CLIP_FRACTION,
    label: Path | None = None,
) -> Scene | None:
    """Measure and order the frames of one folder; ``None`` (with a warning) when unusable.

    Raises:
        InputError: frames of different sizes and ``resize`` is False.
    """
    infos = _measure(list(frames) if frames is not None else _images_in(folder))
    usable = [f for f in infos if f.usable(clip_fraction)]
    if len(usable) < 2:
        _warn(
            f"skipping scene {name} ({folder}): {len(infos)} readable frame(s), {len(usable)} usable; "
            "a scene needs at least two"
        )
        return None
    sizes = sorted({f.size for f in infos})
    if len(sizes) > 1 and not resize:
        listing = ", ".join(f"{f.path.name} {f.width}x{f.height}" for f in infos)
        raise InputError(
            f"scene {name} ({folder}): frames have different sizes ({listing}); "
            "use --resize (resize=True) to resize them to the largest common size"
        )
    size = (min(w for w, _ in sizes), min(h for _, h in sizes))
    return Scene(name, folder, sort_frames(infos), size, label=label, resized=len(sizes) > 1)


def scan_brackets(
    root: str | os.PathLike[str], resize: bool = False, clip_fraction: float = DEFAULT_CLIP_FRACTION
) -> list[Scene]:
    """Layout (a): every folder under ``root`` (at any depth) holding images is one scene.

    Returns:
        Scenes sorted by name; skipped scenes are reported with :class:`DataWarning`.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"data root {root} does not exist or is not a folder")
    scenes = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        images = _images_in(folder)
        if not images:
            continue
        name = folder.relative_to(root).as_posix()
        scene = build_scene(folder, root.name if name == "." else name, images, resize, clip_fraction)
        if scene is not None:
            scenes.append(scene)
    return sorted(scenes, key=lambda s: s.name)


def _find_label(label_dir: Path, stem: str) -> Path | None:
    for p in sorted(label_dir.iterdir()):
        if p.stem == stem and is_image_file(p):
            return p
    return None


def scan_sice(
    root: str | os.PathLike[str], resize: bool = False, clip_fraction: float = DEFAULT_CLIP_FRACTION
) -> list[Scene]:
    """Layout (b), SICE as distributed: ``Dataset_Part1/<n>/*`` with ``Dataset_Part1/Label/<n>.*``.

    ``root`` may be the folder holding the parts or one part. A sequence without a label is
    skipped with a warning.
    """
    root = Path(root)
    parts = _sice_parts(root) if root.is_dir() else []
    if not parts:
        raise ConfigError(f"{root}: not a SICE folder (expected Dataset_Part*/Label/ or Label/)")
    scenes = []
    for part in parts:
        label_dir = part / "Label"
        for seq in sorted(p for p in part.iterdir() if p.is_dir() and p.name != "Label"):
            name = seq.relative_to(root).as_posix() if part != root else seq.name
            label = _find_label(label_dir, seq.name)
            if label is None:
                _warn(f"skipping SICE sequence {name}: no label {label_dir}/{seq.name}.*")
                continue
            scene = build_scene(seq, name, None, resize, clip_fraction, label=label)
            if scene is not None:
                scenes.append(scene)
    return scenes


def scan_paired(root: str | os.PathLike[str]) -> dict[str, list[PairItem]]:
    """Layout (c): ``<p>A/ <p>B/ <p>C/`` = under / over / ground truth with the same file names.

    Returns:
        ``{prefix: items}`` (e.g. ``{"train": [...], "test": [...]}``); files missing from one of
        the three folders, and unreadable files, are skipped with a warning.

    Raises:
        ConfigError: no ``<p>A/<p>B/<p>C`` folders.
        InputError: the three images of one sample have different sizes.
    """
    root = Path(root)
    prefixes = _paired_prefixes(root) if root.is_dir() else []
    if not prefixes:
        raise ConfigError(f"{root}: not a paired folder (expected trainA/ trainB/ trainC/)")
    out: dict[str, list[PairItem]] = {}
    for prefix in prefixes:
        dirs = [root / f"{prefix}{s}" for s in "ABC"]
        files = [{p.name: p for p in _images_in(d)} for d in dirs]
        items = []
        for fname in sorted(set().union(*files)):
            missing = [str(d.name) for d, f in zip(dirs, files) if fname not in f]
            if missing:
                _warn(f"skipping {fname}: missing from {', '.join(missing)} in {root}")
                continue
            infos = _measure([f[fname] for f in files])
            if len(infos) < 3:
                continue
            if len({i.size for i in infos}) > 1:
                listing = ", ".join(f"{i.path.parent.name}/{fname} {i.width}x{i.height}" for i in infos)
                raise InputError(f"sample {fname} in {root}: images have different sizes ({listing})")
            stem = Path(fname).stem
            name = f"{prefix}/{stem}" if prefix else stem
            items.append(PairItem(name, name, infos[0].path, infos[1].path, infos[2].path, infos[0].size))
        out[prefix] = items
    return out


def scan_hdr(root: str | os.PathLike[str]) -> list[Path]:
    """The ``.exr`` / ``.hdr`` radiance maps directly inside ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"data root {root} does not exist or is not a folder")
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in HDR_SUFFIXES)


def scene_pairs(
    scene: Scene, pair_mode: str | float = "extremes", clip_fraction: float = DEFAULT_CLIP_FRACTION
) -> list[PairItem]:
    """The samples of one scene.

    Args:
        scene: an ordered scene.
        pair_mode: ``"extremes"`` (darkest and brightest usable frames, one sample) or a number
            ``k`` (every usable pair at least ``k`` stops apart).
        clip_fraction: see :func:`crmef.data.exposure.select_pair`.
    """
    if pair_mode == "extremes":
        pairs = [select_pair(scene.frames, clip_fraction)]
    else:
        try:
            k = float(pair_mode)
        except (TypeError, ValueError):
            raise ConfigError(f"pair_mode must be 'extremes' or a number of stops, got {pair_mode!r}") from None
        pairs = select_pairs(scene.frames, k, clip_fraction)
    multi = pair_mode != "extremes"
    return [
        PairItem(
            f"{scene.name}:{u.path.name}+{o.path.name}" if multi else scene.name,
            scene.name,
            u.path,
            o.path,
            scene.label,
            scene.size,
            None if scene.label is not None else scene,
        )
        for u, o in pairs
    ]
