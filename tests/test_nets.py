"""FusionNet: super-net gradients, derivation round trip, any size, presets, bad input."""

from __future__ import annotations

import pytest
import torch

from crmef.complexity import _direct_flops, count_flops, count_params
from crmef.nets import FusionNet, NetConfig
from crmef.space import Genotype, SearchSpace, get_preset


def _pair(h: int, w: int, b: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(b, 3, h, w) * 0.4, 0.5 + torch.rand(b, 3, h, w) * 0.5


@pytest.mark.parametrize("align", [False, True])
def test_supernet_gives_every_weight_and_alpha_a_gradient(align: bool) -> None:
    net = FusionNet.supernet(NetConfig(channels=4, align=align, cascades=2, head="retinex"))
    assert net.is_supernet
    u, o = _pair(32, 32, b=2)
    y = net(u, o)
    (y - 0.5).abs().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:10]}"
    zero_alpha = [n for n, ch in net.choices() if ch.alpha is not None and ch.alpha.grad.abs().sum() == 0]
    assert not zero_alpha, f"alphas with an all-zero gradient: {zero_alpha}"
    n_slots = len(list(net.choices()))
    assert len(net.arch_parameters()) == n_slots == 4 * 3 + 4 + (4 if align else 0)
    arch = {id(p) for p in net.arch_parameters()}
    assert not arch & {id(p) for p in net.weight_parameters()}
    assert len(net.weight_parameters()) + len(arch) == len(list(net.parameters()))


def test_alpha_is_per_slot_and_derivation_round_trip(tmp_path) -> None:
    net = FusionNet.supernet(NetConfig(channels=4, align=True, cascades=1,
                                       space=SearchSpace(srsm=("conv_1", "conv_3"), drm=("conv_3", "resconv_3"))))
    # give every slot a distinct winner
    with torch.no_grad():
        for i, (_, ch) in enumerate(net.choices()):
            ch.alpha.zero_()
            ch.alpha[i % len(ch.candidates)] = 1.0
    g = net.derive()
    assert len(g.srsm) == 2  # the two SRSM instances chose differently
    path = tmp_path / "genotype.json"
    g.save(path)
    g2 = Genotype.load(path)
    assert g2 == g
    derived = FusionNet.from_genotype(g2, channels=4, cascades=1, head="retinex")
    assert not derived.is_supernet and derived.arch_parameters() == []
    assert derived.slot_ops() == net.slot_ops()
    assert derived.derive() == g
    y = derived(*_pair(32, 32))
    assert y.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("cascades", [0, 1, 3])
@pytest.mark.parametrize("size", [(33, 47), (1, 1), (5, 130)])
def test_any_size_kept_and_in_range(align: bool, cascades: int, size: tuple[int, int]) -> None:
    g = get_preset("paper_aligned" if align else "paper_general")
    net = FusionNet.from_genotype(g, channels=4, cascades=cascades).eval()
    u, o = _pair(*size)
    with torch.no_grad():
        y = net(u, o)
    assert y.shape == u.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    with torch.no_grad():
        y3 = net(u[0], o[0])
    assert y3.shape == u.shape[1:]
    assert torch.allclose(y3, y[0], atol=1e-6)


@pytest.mark.parametrize("head", ["retinex", "direct"])
def test_heads_train(head: str) -> None:
    net = FusionNet.from_genotype(get_preset("paper_general"), channels=4, head=head)
    u, o = _pair(16, 16)
    net(u, o).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_presets_build_and_params() -> None:
    general = FusionNet.from_genotype(get_preset("paper_general"), channels=64)
    assert count_params(general) == 1_793_807
    assert abs(count_params(general) - 1_879_000) / 1_879_000 < 0.05  # paper: 1.879 M
    aligned = FusionNet.from_genotype(get_preset("paper_aligned"), channels=8)
    assert aligned.dasm is not None and aligned.config.head == "direct"
    assert aligned.slot_ops()["dasm.dcn3"] == "deform_5" and aligned.slot_ops()["dasm.dcn_cas"] == "deform_3"


def test_flops_scale_exactly_with_area() -> None:
    for name in ("paper_general", "paper_aligned"):
        net = FusionNet.from_genotype(get_preset(name), channels=4)
        assert count_flops(net, (64, 96)) == _direct_flops(net, (64, 96))
        # odd sizes count the padded area (multiple 2 without alignment, 4 with it)
        m = net.multiple
        assert count_flops(net, (61, 93)) == _direct_flops(net, (61 + (-61) % m, 93 + (-93) % m))
    small = FusionNet.from_genotype(get_preset("paper_general"), channels=4)
    big = FusionNet.from_genotype(get_preset("paper_general"), channels=8)
    assert count_flops(big, (32, 32)) > 3 * count_flops(small, (32, 32))


@pytest.mark.parametrize(
    "under, over, message",
    [
        (torch.rand(1, 3, 20, 30), torch.rand(1, 3, 21, 30), "same size, got 30x20 and 30x21"),
        (torch.rand(1, 4, 20, 30), torch.rand(1, 4, 20, 30), "3 \\(RGB\\) channels, got 4"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), torch.rand(1, 3, 8, 8), "floating-point"),
        (torch.full((1, 3, 8, 8), float("nan")), torch.rand(1, 3, 8, 8), "under contains NaN"),
        (torch.rand(3, 8), torch.rand(3, 8), "shape \\(B, 3, H, W\\)"),
        (torch.rand(2, 3, 8, 8), torch.rand(1, 3, 8, 8), "same shape"),
    ],
)
def test_bad_input_raises_clear_value_error(under, over, message: str) -> None:
    net = FusionNet.from_genotype(get_preset("paper_general"), channels=4)
    with pytest.raises(ValueError, match=message):
        net(under, over)


def test_netconfig_validation() -> None:
    with pytest.raises(ValueError, match="cascades"):
        NetConfig(cascades=4)
    with pytest.raises(ValueError, match="head"):
        NetConfig(head="sigmoid")
    with pytest.raises(ValueError, match="channels"):
        NetConfig(channels=0)
    with pytest.raises(ValueError, match="SRSM triples"):
        FusionNet(NetConfig(channels=4, cascades=1), Genotype(srsm=[["conv_3"] * 3] * 3, drm=["conv_3"]))
    with pytest.raises(ValueError, match="eps must be in"):
        NetConfig(eps=0.0)
