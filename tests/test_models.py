"""Model cards and safetensors round trip (tiny random-weight models)."""

from __future__ import annotations

import json

import pytest
import torch

from crmef.errors import InputError
from crmef.models import load_model, read_card, save_model
from crmef.nets import FusionNet
from crmef.space import get_preset


@pytest.mark.parametrize("preset", ["paper_general", "paper_aligned"])
def test_save_load_round_trip(tmp_path, preset):
    net = FusionNet.from_genotype(get_preset(preset), channels=4).eval()
    w, c = save_model(net, tmp_path / "m.safetensors", {"name": "tiny", "metrics": {"psnr": 1.0}})
    assert w.is_file() and c.is_file()
    card = read_card(c)
    assert card["name"] == "tiny" and card["channels"] == 4 and card["metrics"] == {"psnr": 1.0}
    assert card["head"] == net.config.head
    loaded = load_model(w)
    assert loaded.derive() == net.derive()
    x, y = torch.rand(1, 3, 20, 28), torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert torch.equal(net(x, y), loaded(x, y))
    assert load_model(c).card["name"] == "tiny"  # the card path works too
    assert not list(tmp_path.glob(".*tmp*"))  # no temporaries left


def test_unknown_and_engine_names_are_clear():
    with pytest.raises(InputError, match=r"unknown model 'paper_general': use general, aligned \(the engine\), an engine "
                                         r"card \.json, or a \.safetensors from crmef train"):
        load_model("paper_general")
    with pytest.raises(InputError, match="'general' is an engine model"):
        load_model("general")


def test_bad_model_files(tmp_path):
    with pytest.raises(InputError, match="unknown model"):
        load_model("nope")
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "absent.safetensors")
    net = FusionNet.from_genotype(get_preset("paper_general"), channels=4)
    w, c = save_model(net, tmp_path / "m", {})
    card = json.loads(c.read_text())
    card["channels"] = 8
    c.write_text(json.dumps(card))
    with pytest.raises(InputError, match="do not match .* of another shape"):
        load_model(w)
    w.write_bytes(b"garbage")
    with pytest.raises(InputError, match="safetensors"):
        load_model(w)
    c.write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        load_model(w)


def test_supernet_cannot_be_saved(tmp_path):
    from crmef.nets import NetConfig

    with pytest.raises(InputError, match="derived"):
        save_model(FusionNet.supernet(NetConfig(channels=4)), tmp_path / "s", {})


def test_weights_of_a_removed_option_are_named(tmp_path):
    """A model saved with tensors this network does not have (e.g. the prior blend of an earlier
    crmef) fails naming them, not with the first line of torch's message."""
    from safetensors.torch import load_file, save_file

    net = FusionNet.from_genotype(get_preset("paper_general"), channels=4)
    w, _ = save_model(net, tmp_path / "m", {})
    state = load_file(str(w))
    state["blend.net.0.weight"] = torch.zeros(24, 12, 3, 3)
    save_file(state, str(w))
    with pytest.raises(InputError, match=r"1 unexpected, e\.g\. blend\.net\.0\.weight"):
        load_model(w)
