"""``crmef fuse``: fuse a bracket (or a folder of brackets) into well-exposed images.

Examples::

    crmef fuse under.jpg over.jpg -o fused.jpg
    crmef fuse a.tif b.tif c.tif --all -o fused.tif          # every frame, 16-bit kept
    crmef fuse --batch scenes/ -o fused/                      # one output per scene folder
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crmef.errors import CrmefError, InputError

if TYPE_CHECKING:
    from crmef.imageio import LoadedImage


# crmef.imageio imports OpenCV, numpy and Pillow: its names are bound lazily here so that
# registering the command (``crmef fuse --help``) imports none of them; they behave as the
# crmef.imageio ones (the module is imported on first use).
def _imageio_function(name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module("crmef.imageio"), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``crmef.imageio.{name}``, imported on first call."
    return call


class _ImageioConstant:
    """A read-only sequence constant of ``crmef.imageio``, imported on first use."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _value(self) -> Any:
        return getattr(importlib.import_module("crmef.imageio"), self._name)

    def __contains__(self, item: object) -> bool:
        return item in self._value()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._value())

    def __len__(self) -> int:
        return len(self._value())

    def __getitem__(self, index: Any) -> Any:
        return self._value()[index]

    def __repr__(self) -> str:
        return repr(self._value())


IMAGE_SUFFIXES = _ImageioConstant("IMAGE_SUFFIXES")
is_image_file = _imageio_function("is_image_file")
load_image = _imageio_function("load_image")
write_image = _imageio_function("write_image")
quiet_decoders = _imageio_function("quiet_decoders")

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}


def parse_memory(text: str) -> int:
    """``"1.5G"``, ``"800M"``, ``"1073741824"`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMG]?B?)\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid memory size {text!r}; use e.g. 800M or 1.5G")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fuse`` sub-command."""
    p = subparsers.add_parser(
        "fuse",
        help="fuse a bracket of exposures into one image",
        description="Fuse a bracket (2+ frames of one scene, any order) into one well-exposed image. "
        "Frames are ordered by EXIF exposure, else brightness; by default the darkest and brightest "
        "usable frames are fused, with --all every frame (progressive pairwise: r = f0; r = fuse(r, fk) "
        "for brighter and brighter fk).",
    )
    p.add_argument("images", nargs="*", type=Path, help="frames of one scene (JPEG, PNG, TIFF; 8 or 16 bit)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output image (format from the extension) or, with --batch, output folder")
    p.add_argument("--batch", type=Path, metavar="DIR", help="fuse every scene sub-folder of DIR")
    p.add_argument("--model", default="general", help="general | aligned | PATH.safetensors (default: general)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default: auto)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fast", dest="mode", action="store_const", const="fast",
                   help="predict the maps at reduced resolution, guided upsampling (default on CPU above 2 MP)")
    g.add_argument("--full", dest="mode", action="store_const", const="full", help="network at full resolution")
    p.set_defaults(mode="auto")
    p.add_argument("--tile", type=int, help="tile side in pixels for --full (default: from --max-memory)")
    p.add_argument("--max-memory", type=parse_memory, default="768M",
                   help="working-memory budget of the network, e.g. 800M, 1.5G (default 768M)")
    p.add_argument("--fast-size", type=int, default=512, help="longest side of the reduced image in fast mode")
    p.add_argument("--bits", type=int, choices=(8, 16), help="output bit depth (default: that of the input)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--all", dest="all_frames", action="store_true", help="fuse every frame, not just two")
    p.add_argument("--resize", action="store_true", help="resample frames of a different size instead of failing")
    p.add_argument("--ext", default=None, help="with --batch: output extension (default: that of the frames)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from crmef.inference import FuseConfig

    return FuseConfig(mode=args.mode, tile=args.tile, max_memory=args.max_memory, fast_size=args.fast_size,
                      all_frames=args.all_frames, resize=args.resize)


MIN_SIDE = 16
"""Smallest frame side (pixels) ``crmef fuse`` accepts."""


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file, however spelt (relative, ``./``, symlink, hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where the paths lead
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_paths(paths: list[Path], output: Path) -> None:
    """Refuse, before any work, an output that is one of the inputs and a frame given twice.

    Raises:
        InputError: ``output`` is (a link to, another spelling of) an input; or two paths name
            the same file.
    """
    for p in paths:
        if _same_file(p, output):
            which = "an input frame" if str(p) == str(output) else f"the input frame {p}"
            raise InputError(f"{output}: the output is {which}; refusing to overwrite it, choose another output")
    for i, p in enumerate(paths):
        for q in paths[:i]:
            if (p.exists() or p.is_symlink()) and _same_file(p, q):
                which = "" if str(p) == str(q) else f" (the same file as {q})"
                raise InputError(f"{p}: frame given twice{which}")


def load_frames(paths: list[Path]) -> dict[Path, LoadedImage]:
    """Read every frame of one scene, with checks that need the pixels or the bytes.

    Raises:
        InputError: an unreadable file (see :func:`crmef.imageio.load_image`), a frame smaller
            than :data:`MIN_SIDE` pixels on a side, or two files with identical content.
    """
    loaded: dict[Path, LoadedImage] = {}
    seen: dict[str, Path] = {}
    for p in paths:
        img = load_image(p)
        h, w = img.rgb.shape[:2]
        if min(h, w) < MIN_SIDE:
            raise InputError(f"{p}: image is {w}x{h} pixels; crmef fuse needs at least {MIN_SIDE} pixels on each side")
        if img.digest in seen:
            raise InputError(f"{p}: identical content to {seen[img.digest]} (the same photo twice)")
        seen[img.digest] = p
        loaded[p] = img
    return loaded


def check_inputs(paths: list[Path], output: Path) -> dict[Path, LoadedImage]:
    """Every check a scene's files can fail, before any work; returns the decoded frames.

    The output must have an image suffix, not be a folder and not be one of the inputs; there
    must be two frames or more, no frame given twice, each decodable, at least :data:`MIN_SIDE`
    pixels on a side and different from the others. Imports neither torch nor the model.

    Raises:
        InputError: the first problem found, naming the file.
    """
    if output.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"{output}: unknown output format {output.suffix!r}; use .jpg, .png or .tif")
    if len(paths) < 2:
        which = f": {paths[0]}" if paths else ""
        raise InputError(f"need at least two frames (an under- and an over-exposed one), got {len(paths)}{which}")
    check_paths(paths, output)
    if output.is_dir():
        raise InputError(f"{output}: is a directory; give an image file name as output")
    folder = next((a for a in output.absolute().parents if a.exists()), None)
    if folder is not None and not folder.is_dir():
        raise InputError(f"{output}: cannot write (a file is in the way of its folder {output.parent})")
    return load_frames(paths)


def fuse_files(paths: list[Path], output: Path, get_net, cfg, device, bits: int | None, quality: int,
               loaded: dict[Path, LoadedImage] | None = None) -> Path:
    """Fuse the image files of one scene into ``output`` (written atomically).

    Every check a file can fail (:func:`check_inputs`) runs before the model; ``loaded`` passes
    its result when the caller has run it already. ``get_net()`` is called only once every frame
    has been read, so a bad file is reported before a slow model load.
    """
    paths = [Path(p) for p in paths]
    if loaded is None:
        loaded = check_inputs(paths, output)  # clear per-file errors first

    from crmef.inference import check_frames, fuse_ordered, order_files

    with quiet_decoders():  # ordering decodes a reduced preview again: keep codec chatter off stderr
        ordered = order_files(paths)
    frames = check_frames([loaded[p].rgb for p in ordered], [str(p) for p in ordered], resize=cfg.resize)
    result = fuse_ordered(get_net(), frames, cfg, device)
    meta = next((loaded[p] for p in ordered if loaded[p].exif or loaded[p].icc), loaded[ordered[0]])
    out_bits = bits or max(img.bits for img in loaded.values())
    check_paths(paths, output)  # still not an input (a link may have been made meanwhile)
    return write_image(output, result, bits=out_bits, quality=quality, exif=meta.exif, icc=meta.icc)


def find_scenes(root: Path) -> list[tuple[str, list[Path]]]:
    """Scene folders of ``root``: sub-folders holding image files (sorted by name)."""
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    scenes = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        frames = sorted(f for f in d.iterdir() if f.is_file() and is_image_file(f))
        if frames:
            scenes.append((d.name, frames))
    if not scenes:
        raise InputError(f"{root}: no scenes found (expected sub-folders with the image files of one bracket each)")
    return scenes


def run_batch(args: argparse.Namespace, cfg, device) -> int:
    """Fuse every scene folder; skip done scenes, continue past failures, report them."""
    from tqdm import tqdm

    from crmef.inference import get_model

    # the output folder inside DIR is not a scene (its fused images are not one bracket)
    scenes = [(n, f) for n, f in find_scenes(args.batch) if not _same_file(args.batch / n, args.output)]
    if args.output.exists() and not args.output.is_dir():
        raise InputError(f"{args.output}: not a directory; with --batch, -o names the output folder")
    net = get_model(args.model, device)
    failures: list[str] = []
    done = skipped = 0
    for name, frames in tqdm(scenes, desc="fusing", unit="scene", file=sys.stderr):
        ext = args.ext or frames[0].suffix.lower()
        ext = ext if ext.startswith(".") else f".{ext}"
        out = args.output / f"{name}{ext}"
        if out.exists():
            skipped += 1
            continue
        try:
            fuse_files(frames, out, lambda: net, cfg, device, args.bits, args.quality)
            done += 1
        except CrmefError as exc:
            failures.append(f"{name}: {exc}")
        except Exception as exc:  # a bug, not the user's files: report it and go on with the others
            if getattr(args, "debug", False):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            failures.append(f"{name}: internal error ({type(exc).__name__}: {first}); rerun with --debug")
    print(f"crmef fuse: {done} fused, {skipped} already done, {len(failures)} failed", file=sys.stderr)
    for line in failures:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if failures else 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``crmef fuse``."""
    if args.batch is not None:
        if args.images:
            raise InputError("give either image files or --batch DIR, not both")
        from crmef.inference import get_device

        return run_batch(args, _config(args), get_device(args.device))
    paths = list(args.images)
    loaded = check_inputs(paths, args.output)  # every file checked before the engine is imported

    from crmef.inference import get_device, get_model

    cfg = _config(args)
    device = get_device(args.device)
    out = fuse_files(paths, args.output, lambda: get_model(args.model, device), cfg, device,
                     args.bits, args.quality, loaded=loaded)
    print(out)
    return 0
