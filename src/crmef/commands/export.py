"""``crmef export``: write the paper's network (a FusionNet from ``crmef train``) as ONNX with
dynamic height and width. (The engine's network ships as ONNX already: ``crmef/weights/exposure.onnx``.)

The graph takes ``under`` and ``over`` (1, 3, H, W) float32 in [0, 1] and returns ``fused``
(1, 3, H, W). H and W must be multiples of the model's padding multiple ``net.multiple`` (2 for
a network with SRSM cascades): the PyTorch model pads odd sizes itself, but the traced pad amount
would be frozen into the graph, so callers of the ONNX model pad (reflect) and crop. A network
with alignment (DASM) uses ``torchvision.ops.deform_conv2d``, which the ONNX exporter of torch
2.14 / torchvision 0.29 does not support; exporting it fails with a clear error.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from crmef.errors import InputError


def export_onnx(net, path: str | Path, opset: int = 19) -> Path:
    """Export ``net`` (a :class:`~crmef.nets.FusionNet`) to ONNX at ``path`` atomically.

    Raises:
        InputError: the model contains deformable convolutions (not exportable).
    """
    import torch

    from crmef.utils import atomic_path

    if net.dasm is not None:
        raise InputError(
            "ONNX export of a network with alignment (DASM) is not supported: torchvision.ops.deform_conv2d "
            "has no ONNX exporter in torch 2.14 / torchvision 0.29; export a network without it"
        )
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise InputError(f"{path}: the output of --onnx must end in .onnx")
    net = net.to("cpu").eval()
    size = 8 * net.multiple * 4
    example = (torch.rand(1, 3, size, size), torch.rand(1, 3, size, size))
    names = ["under", "over"]
    axes = {2: "height", 3: "width"}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, example, str(tmp), input_names=names, output_names=["fused"],
            dynamic_axes={**{n: axes for n in names}, "fused": axes}, opset_version=opset, dynamo=False,
        )
    return path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    p = subparsers.add_parser("export",
                              help="export a crmef train model (the paper network) to ONNX (dynamic H and W)",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--model", required=True,
                   help="PATH.safetensors from crmef train (the engine models ship their network as ONNX "
                        "already: crmef/weights/exposure.onnx)")
    p.add_argument("--onnx", type=Path, required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=19)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``crmef export``."""
    from crmef.engine import engine_card

    if engine_card(args.model) is not None:
        raise InputError(f"{args.model}: an engine model; its network ships as ONNX already "
                         "(crmef/weights/exposure.onnx); crmef export writes the paper's network (.safetensors)")
    from crmef.models import load_model

    out = export_onnx(load_model(args.model, device="cpu"), args.onnx, args.opset)
    print(out)
    return 0
