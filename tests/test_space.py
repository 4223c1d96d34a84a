"""Search space: every op, Choice, Genotype validation and JSON round trip."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from crmef.space import ALL_OPS, CONV_OPS, DEFORM_OPS, PRESETS, Choice, DeformOp, Genotype, SearchSpace, get_preset, make_op


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("size", [(32, 32), (33, 47)])
def test_every_op_forward_backward(name: str, size: tuple[int, int]) -> None:
    op = make_op(name, 4, 6)
    x = torch.rand(2, 4, *size, requires_grad=True)
    y = op(x)
    assert y.shape == (2, 6, *size)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in op.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"


@pytest.mark.parametrize("k", [3, 5, 7])
def test_deform_zero_offset_equals_conv(k: int) -> None:
    op = DeformOp(4, 5, k)
    x = torch.rand(2, 4, 33, 47)
    offset, mask = op.offsets_and_mask(x)
    assert torch.count_nonzero(offset) == 0
    assert torch.allclose(mask, torch.ones_like(mask))
    ref = F.conv2d(x, op.weight, op.bias, padding=k // 2)
    assert (op.deform(x, offset, mask) - ref).abs().max() < 1e-5
    # with an explicit zero offset and unit mask too
    kk = k * k
    out = op.deform(x, torch.zeros(2, 2 * kk, 33, 47), torch.ones(2, kk, 33, 47))
    assert (out - ref).abs().max() < 1e-5


def test_deform_offsets_move_sampling() -> None:
    op = DeformOp(1, 1, 3)
    x = torch.rand(1, 1, 16, 16)
    offset = torch.zeros(1, 18, 16, 16)
    offset[:, 1::2] = 1.0  # every tap one pixel to the right
    shifted = op.deform(x, offset, torch.ones(1, 9, 16, 16))
    ref = F.conv2d(F.pad(x[..., 1:], (0, 1)), op.weight, op.bias, padding=1)
    assert (shifted - ref)[..., 1:-2].abs().max() < 1e-5


def test_choice_mixes_with_softmax_alpha() -> None:
    ch = Choice("drm", ["conv_1", "conv_3"], 4, 4)
    assert ch.alpha is not None and ch.alpha.shape == (2,)
    with torch.no_grad():
        ch.alpha.copy_(torch.tensor([0.3, -0.2]))
    x = torch.rand(1, 4, 8, 8)
    w = torch.softmax(ch.alpha, 0)
    expected = w[0] * ch.ops[0](x) + w[1] * ch.ops[1](x)
    assert torch.allclose(ch(x), expected, atol=1e-6)
    assert ch.chosen() == "conv_1"
    fixed = Choice("drm", ["conv_3"], 4, 4)
    assert fixed.alpha is None and not fixed.is_searching


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="drm", candidates=[], c_in=4, c_out=4), "empty"),
        (dict(kind="drm", candidates=["conv_9"], c_in=4, c_out=4), "unknown op 'conv_9'"),
        (dict(kind="drm", candidates=["deform_3"], c_in=4, c_out=4), "not allowed in a drm slot"),
        (dict(kind="dasm", candidates=["conv_3"], c_in=4, c_out=4), "not allowed in a dasm slot"),
        (dict(kind="nope", candidates=["conv_3"], c_in=4, c_out=4), "unknown slot kind"),
    ],
)
def test_choice_rejects_bad_candidates(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Choice(**kwargs)


def test_genotype_json_round_trip(tmp_path) -> None:
    for g in PRESETS.values():
        assert Genotype.from_json(g.to_json()) == g
        g.save(tmp_path / "g.json")
        assert Genotype.load(tmp_path / "g.json") == g
    per_instance = Genotype(srsm=[["conv_1", "conv_3", "conv_5"], ["dilconv_3", "conv_3", "conv_7"]], drm=["conv_3"])
    assert Genotype.from_json(per_instance.to_json()) == per_instance
    assert json.loads(get_preset("paper_general").to_json())["srsm"] == ["conv_3", "conv_3", "conv_3"]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"srsm": ["conv_3", "conv_3", "bogus_3"], "drm": ["conv_3"]}, r"srsm\[0\]\[2\]: unknown op 'bogus_3'"),
        ({"srsm": ["conv_3", "conv_3"], "drm": ["conv_3"]}, r"srsm\[0\] needs 3 ops, got 2"),
        ({"srsm": ["conv_3"] * 3, "drm": ["deform_3"]}, r"drm\[0\]: op 'deform_3' is not allowed in a drm slot"),
        ({"srsm": ["conv_3"] * 3, "drm": ["conv_3"], "dasm": ["deform_3"] * 3}, "dasm needs 4 ops"),
        ({"srsm": ["conv_3"] * 3, "drm": ["conv_3"], "dasm": ["conv_3"] * 4}, r"dasm\[0\]: op 'conv_3' is not allowed"),
        ({"srsm": ["conv_3"] * 3, "drm": []}, "drm needs at least one op"),
        ({"srsm": ["conv_3"] * 3, "drm": ["conv_3"], "extra": 1}, "unknown genotype keys"),
        ({"drm": ["conv_3"]}, "missing 'srsm'"),
    ],
)
def test_genotype_validation(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Genotype.from_dict(data)


def test_genotype_load_names_file(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Genotype.load(bad)


def test_search_space_validation() -> None:
    assert SearchSpace().drm == CONV_OPS and SearchSpace().dasm == DEFORM_OPS
    with pytest.raises(ValueError, match="empty"):
        SearchSpace(drm=())
    with pytest.raises(ValueError, match="not allowed"):
        SearchSpace(srsm=("deform_3",))
