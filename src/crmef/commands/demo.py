"""``crmef demo --out DIR``: make a bracket from a real photo, fuse it, write the results.

Needs no data of the user's: the photo is ``skimage.data.astronaut()`` (shipped inside the
scikit-image wheel, a crmef dependency). The bracket is made physically: the sRGB photo is
linearised (inverse sRGB curve), scaled by 2^-2 (under) and 2^+2 (over), clipped to [0, 1] as
a sensor would, re-encoded with the sRGB curve and quantised to 8 bits. The pair is fused with
the default model; when its weights are not installed yet the demo says so and uses OpenCV's
Mertens exposure fusion instead, so the command always produces its four images:
``under.png``, ``over.png``, ``fused.png`` and ``side_by_side.png`` (under | over | fused).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from crmef.errors import InputError

if TYPE_CHECKING:
    import numpy as np


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """Inverse sRGB transfer curve, elementwise on [0, 1]."""
    import numpy as np

    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """sRGB transfer curve, elementwise on [0, 1]."""
    import numpy as np

    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(np.maximum(x, 0.0031308), 1 / 2.4) - 0.055)


def make_bracket(rgb: np.ndarray, stops: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) sRGB float in [0, 1] -> (under, over) at -/+ ``stops`` EV, 8-bit quantised."""
    import numpy as np

    lin = srgb_to_linear(rgb.astype(np.float64))
    frames = []
    for ev in (-stops, stops):
        enc = linear_to_srgb(np.clip(lin * 2.0**ev, 0.0, 1.0))
        frames.append((np.round(enc * 255.0) / 255.0).astype(np.float32))
    return frames[0], frames[1]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    p = subparsers.add_parser("demo", help="fuse a bracket made from a photo shipped with scikit-image")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--model", default="general",
                   help="general | aligned | PATH.json (an engine card) | PATH.safetensors (from crmef train)")
    p.add_argument("--device", default="auto", help="for the paper's network: auto | cpu | cuda | mps")
    p.add_argument("--stops", type=float, default=2.0, help="exposure offset of each frame in EV (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``crmef demo``."""
    import numpy as np
    from skimage import data

    from crmef.imageio import write_image
    from crmef.inference import fuse

    photo = data.astronaut().astype(np.float32) / 255.0
    under, over = make_bracket(photo, args.stops)
    from crmef.engine import engine_card

    try:
        if engine_card(args.model) is not None:
            fused = fuse([under, over], model=args.model)
        else:
            fused = fuse([under, over], model=args.model, device=args.device, mode="full")
        how = f"model {args.model}"
    except InputError as exc:
        if "not installed" not in str(exc):
            raise
        from crmef.baselines import mertens

        print(f"crmef demo: {exc}", file=sys.stderr)
        print("crmef demo: falling back to OpenCV Mertens exposure fusion for fused.png", file=sys.stderr)
        fused = mertens([under, over])
        how = "OpenCV Mertens (default model not installed)"
    out = args.out
    gap = np.ones((under.shape[0], 8, 3), np.float32)
    for name, img in (("under", under), ("over", over), ("fused", fused),
                      ("side_by_side", np.concatenate([under, gap, over, gap, fused], axis=1))):
        write_image(out / f"{name}.png", img)
    print(f"wrote {out}/under.png, over.png, fused.png, side_by_side.png (fused with {how})")
    from crmef.baselines import mertens
    from crmef.metrics.chroma import chroma_hull

    print(f"colour fidelity (chroma_hull, lower is better): fused {chroma_hull([under, over], fused):.5f}, "
          f"OpenCV Mertens {chroma_hull([under, over], mertens([under, over])):.5f}")
    return 0
