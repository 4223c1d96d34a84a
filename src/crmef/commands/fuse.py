"""``crmef fuse``: fuse a bracket (or a folder of brackets) into well-exposed images.

Examples::

    crmef fuse under.jpg over.jpg -o fused.jpg
    crmef fuse a.tif b.tif c.tif d.tif -o fused.tif          # every usable frame, 16-bit kept
    crmef fuse --batch scenes/ -o fused/                      # one output per scene folder

The default models (``general``, ``aligned``) and engine cards run the engine
(:mod:`crmef.engine`: numpy, OpenCV and onnxruntime; torch is never imported); a ``.safetensors``
file from ``crmef train`` runs the paper's network (:mod:`crmef.inference`, torch).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from crmef.errors import CrmefError, InputError

if TYPE_CHECKING:
    from crmef.imageio import LoadedImage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
"""Output suffixes (the same as :data:`crmef.imageio.IMAGE_SUFFIXES`; a test keeps them equal)."""

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
        "Every usable frame is fused at once (frames that are nearly all black or white are skipped, "
        "and said so); --extremes fuses only the darkest and brightest.",
    )
    p.add_argument("images", nargs="*", type=Path, help="frames of one scene (JPEG, PNG, TIFF; 8 or 16 bit)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output image (format from the extension) or, with --batch, output folder")
    p.add_argument("--batch", type=Path, metavar="DIR", help="fuse every scene sub-folder of DIR")
    p.add_argument("--model", default="general",
                   help="general | aligned (hand-held: frames aligned first) | PATH.json (an engine card) | "
                        "PATH.safetensors (the paper's network, from crmef train); default: general")
    p.add_argument("--extremes", action="store_true", help="fuse only the darkest and brightest usable frames")
    p.add_argument("--bits", type=int, choices=(8, 16), help="output bit depth (default: that of the input)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--resize", action="store_true", help="resample frames of a different size instead of failing")
    p.add_argument("--ext", default=None, help="with --batch: output extension (default: that of the frames)")
    p.add_argument("--jobs", type=int, default=None,
                   help="with --batch: scenes fused in parallel (default: the number of cores)")
    paper = p.add_argument_group("the paper's network (a .safetensors from crmef train)")
    paper.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default: auto)")
    g = paper.add_mutually_exclusive_group()
    g.add_argument("--fast", dest="mode", action="store_const", const="fast",
                   help="predict the maps at reduced resolution, guided upsampling (default on CPU above 2 MP)")
    g.add_argument("--full", dest="mode", action="store_const", const="full", help="network at full resolution")
    p.set_defaults(mode="auto")
    paper.add_argument("--tile", type=int, help="tile side in pixels for --full (default: from --max-memory)")
    paper.add_argument("--max-memory", type=parse_memory, default="768M",
                       help="working-memory budget of the network, e.g. 800M, 1.5G (default 768M)")
    paper.add_argument("--fast-size", type=int, default=512, help="longest side of the reduced image in fast mode")
    p.set_defaults(func=run)


Fuser = Callable[[list["LoadedImage"], list[str], "int | None"], Any]
"""``fuser(frames, names, out_bits) -> fused`` (H, W, 3): one scene's checked frames, fused
(float32 in [0, 1], or sRGB codes of ``out_bits``)."""


def make_fuser(args: argparse.Namespace) -> Fuser:
    """The fusion a ``crmef fuse`` command line asks for, loaded once (shared by a batch's scenes)."""
    from crmef.engine import engine_card

    card = engine_card(args.model)
    if card is not None:
        from crmef.engine import ExposureModel, fuse_bracket

        model = ExposureModel.from_card(card)

        def engine(frames: list[LoadedImage], names: list[str], out_bits: int | None = None) -> Any:
            out, skipped = fuse_bracket(model, [f.codes for f in frames], names, extremes=args.extremes,
                                        resize=args.resize, out_bits=out_bits)
            for i in skipped:
                print(f"crmef fuse: skipped {names[i]} (nearly all black or all white)", file=sys.stderr)
            return out

        return engine

    from crmef.imageio import quiet_decoders
    from crmef.inference import FuseConfig, check_frames, fuse_ordered, get_device, get_model, order_files

    cfg = FuseConfig(mode=args.mode, tile=args.tile, max_memory=args.max_memory, fast_size=args.fast_size,
                     resize=args.resize)
    device = get_device(args.device)
    net = get_model(args.model, device)

    def paper(frames: list[LoadedImage], names: list[str], out_bits: int | None = None) -> Any:
        with quiet_decoders():  # ordering reads EXIF again: keep codec chatter off stderr
            order = order_files([f.path for f in frames])
        index = {f.path: i for i, f in enumerate(frames)}
        ordered = [frames[index[p]] for p in order]
        arrays = check_frames([f.rgb for f in ordered], [names[index[p]] for p in order], resize=cfg.resize)
        return fuse_ordered(net, arrays, cfg, device)

    return paper


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
            than :data:`crmef.engine.MIN_SIDE` pixels on a side, or two files with identical content.
    """
    from crmef.engine import MIN_SIDE
    from crmef.imageio import load_image

    loaded: dict[Path, LoadedImage] = {}
    seen: dict[str, Path] = {}
    for p, img in zip(paths, _decoded(paths, load_image)):
        h, w = img.codes.shape[:2]
        if min(h, w) < MIN_SIDE:
            raise InputError(f"{p}: image is {w}x{h} pixels; crmef fuse needs at least {MIN_SIDE} pixels on each side")
        if img.digest in seen:
            raise InputError(f"{p}: identical content to {seen[img.digest]} (the same photo twice)")
        seen[img.digest] = p
        loaded[p] = img
    return loaded


def _decoded(paths: list[Path], load: Callable[[Path], LoadedImage]) -> Iterator[LoadedImage]:
    """``load(p)`` of each path in order, decoded on up to four threads (the decoders
    release the GIL); the first failure in path order is raised, as a sequential loop would."""
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(paths), os.cpu_count() or 1, 4)
    if workers < 2:
        yield from map(load, paths)
        return
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(load, p) for p in paths]
        try:
            for fut in futures:
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()


def check_inputs(paths: list[Path], output: Path) -> dict[Path, LoadedImage]:
    """Every check a scene's files can fail, before any work; returns the decoded frames.

    The output must have an image suffix, not be a folder and not be one of the inputs; there
    must be two frames or more, no frame given twice, each decodable, at least :data:`crmef.engine.MIN_SIDE`
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


def fuse_files(paths: list[Path], output: Path, fuser: Fuser, bits: int | None, quality: int,
               loaded: dict[Path, LoadedImage] | None = None) -> Path:
    """Fuse the image files of one scene into ``output`` (written atomically).

    Every check a file can fail (:func:`check_inputs`) runs first; ``loaded`` passes its result
    when the caller has run it already. Each file is decoded once.
    """
    from crmef.imageio import output_bits, write_image

    paths = [Path(p) for p in paths]
    if loaded is None:
        loaded = check_inputs(paths, output)  # clear per-file errors first
    frames = [loaded[p] for p in paths]
    out_bits = output_bits(output, bits or max(f.bits for f in frames))
    result = fuser(frames, [str(p) for p in paths], out_bits)
    meta = next((f for f in frames if f.exif or f.icc), frames[0])
    check_paths(paths, output)  # still not an input (a link may have been made meanwhile)
    return write_image(output, result, bits=out_bits, quality=quality, exif=meta.exif, icc=meta.icc)


def find_scenes(root: Path) -> list[tuple[str, list[Path]]]:
    """Scene folders of ``root``: sub-folders holding image files (sorted by name)."""
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    scenes = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        frames = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if frames:
            scenes.append((d.name, frames))
    if not scenes:
        raise InputError(f"{root}: no scenes found (expected sub-folders with the image files of one bracket each)")
    return scenes


_WORKER: dict[str, Any] = {}


def _init_worker(args: argparse.Namespace, threads: int | None) -> None:
    """Per-process set-up of a batch worker: its own fuser (and thread budget)."""
    if threads:  # before numpy loads (cv2 imports it): OpenBLAS reads these once, at import
        os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
        import cv2

        cv2.setNumThreads(threads)
    _WORKER["fuser"] = make_fuser(args)
    _WORKER["args"] = args


def _fuse_scene(name: str, frames: list[Path], out: Path) -> tuple[str, str | None]:
    """Fuse one scene in a worker; ``(name, None)`` or ``(name, failure line)``."""
    args = _WORKER["args"]
    try:
        fuse_files(frames, out, _WORKER["fuser"], args.bits, args.quality)
        return name, None
    except CrmefError as exc:
        return name, str(exc)
    except Exception as exc:  # a bug, not the user's files: report it and go on with the others
        if getattr(args, "debug", False):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return name, f"internal error ({type(exc).__name__}: {first}); rerun with --debug"


def run_batch(args: argparse.Namespace) -> int:
    """Fuse every scene folder (``--jobs`` at a time); skip done scenes, go on past failures."""
    from tqdm import tqdm

    from crmef.engine import engine_card

    # the output folder inside DIR is not a scene (its fused images are not one bracket)
    scenes = [(n, f) for n, f in find_scenes(args.batch) if not _same_file(args.batch / n, args.output)]
    if args.output.exists() and not args.output.is_dir():
        raise InputError(f"{args.output}: not a directory; with --batch, -o names the output folder")
    todo, skipped = [], 0
    for name, frames in scenes:
        ext = args.ext or frames[0].suffix.lower()
        ext = ext if ext.startswith(".") else f".{ext}"
        out = args.output / f"{name}{ext}"
        if out.exists():
            skipped += 1
        else:
            todo.append((name, frames, out))
    # Scenes in parallel for the engine (one thread each; workers are spawned, never forked from
    # a process whose OpenCV / onnxruntime threads may hold locks); the paper's torch network
    # in-process.
    jobs = args.jobs or os.cpu_count() or 1
    jobs = max(1, min(jobs, len(todo))) if engine_card(args.model) is not None else 1
    failures: list[str] = []
    bar = tqdm(total=len(todo), desc="fusing", unit="scene", file=sys.stderr)
    if jobs == 1:
        _init_worker(args, None)
        results = (_fuse_scene(*t) for t in todo)
        for name, failure in results:
            if failure:
                failures.append(f"{name}: {failure}")
            bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(args, 1)) as pool:
            for name, failure in pool.map(_fuse_scene, *zip(*todo)):
                if failure:
                    failures.append(f"{name}: {failure}")
                bar.update()
    bar.close()
    done = len(todo) - len(failures)
    print(f"crmef fuse: {done} fused, {skipped} already done, {len(failures)} failed", file=sys.stderr)
    for line in failures:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if failures else 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``crmef fuse``."""
    if args.batch is not None:
        if args.images:
            raise InputError("give either image files or --batch DIR, not both")
        return run_batch(args)
    paths = list(args.images)
    loaded = check_inputs(paths, args.output)  # every file checked before the model is loaded
    out = fuse_files(paths, args.output, make_fuser(args), args.bits, args.quality, loaded=loaded)
    print(out)
    return 0
