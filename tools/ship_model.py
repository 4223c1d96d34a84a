"""Install a trained model as one of crmef's shipped defaults (``src/crmef/weights/NAME``).

    .venv/bin/python tools/ship_model.py runs/general/best.safetensors general \\
        --config configs/train/general.yaml [--set dark_guard=1 ...]

Loads the model with :func:`crmef.models.load_model` (so only loadable weights are shipped),
completes its card (name, how the references were made, the training config file, the training
run's step/wall time/hardware, which are already in it) and writes
``src/crmef/weights/NAME.safetensors`` + ``NAME.json`` atomically via
:func:`crmef.models.save_model`. Test metrics are added afterwards by
``benchmarks/eval_models.py --write-cards``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crmef.nets.fusion import FusionNet

ROOT = Path(__file__).resolve().parents[1]

REFERENCES = {
    "brackets": ("OpenCV Mertens exposure fusion of every frame of the bracket, clipped to [0, 1] "
                 "(crmef.data.reference); the network sees only the darkest and brightest usable frames"),
    "hdr_synth": ("global extended Reinhard tone mapping (key 0.18, white at the 99.9th percentile) of "
                  "the noise-free linear radiance, sRGB-encoded (crmef.data.synth)"),
}


def with_options(net: FusionNet, pairs: list[str]) -> FusionNet:
    """The same weights in a network built with some options changed (``KEY=VALUE`` strings).

    Raises:
        SystemExit: a malformed pair or a key that is not a network option.
    """
    from crmef.models import build_from_card
    from crmef.nets.fusion import NET_OPTIONS

    card = dict(net.card)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in NET_OPTIONS:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(NET_OPTIONS)}")
        card[key] = value
    built = build_from_card(card, where="--set")
    built.load_state_dict(net.state_dict(), strict=True)
    built.card = card
    return built.eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="trained model (.safetensors with its .json card)")
    p.add_argument("name", choices=["paper_general", "paper_aligned"])
    p.add_argument("--config", type=Path, required=True, help="the training config it was trained with")
    p.add_argument("--note", default="", help="free text stored as card['notes']")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change an inference option of the network (crmef.nets.fusion.NET_OPTIONS, e.g. "
                        "dark_guard=1) with the weights unchanged; repeatable")
    args = p.parse_args()

    from crmef.models import WEIGHTS_DIR, load_model, save_model

    net = load_model(args.model, device="cpu")
    if args.set:
        net = with_options(net, args.set)
    card = dict(net.card)  # save_model rewrites the structural keys from the network itself
    card["name"] = args.name
    training = card.setdefault("training", {})
    training["config"] = str(args.config)
    kinds = sorted({s["kind"] for s in training.get("data", {}).get("sources", [])})
    training["references"] = {k: REFERENCES.get(k, "given ground truth") for k in kinds}
    training["source_checkpoint"] = str(args.model)
    if args.note:
        card["notes"] = args.note
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    weights, card_path = save_model(net, WEIGHTS_DIR / args.name, card)
    size = weights.stat().st_size
    print(f"shipped {args.model} as {weights} ({size / 1e6:.2f} MB) + {card_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
