"""Latency look-up table: measurement, JSON round-trip, device check, and R(α)."""

from __future__ import annotations

import json

import pytest
import torch

from crmef.errors import InputError
from crmef.latency import ExpectedLatency, LatencyTable, SlotSig, ensure_table, measure_table, slot_sigs, supernet_sigs
from crmef.nets import FusionNet, NetConfig
from crmef.space import SearchSpace

SIGS = [SlotSig("conv_1", 4, 4, None, 8, 8), SlotSig("conv_7", 4, 4, None, 8, 8), SlotSig("deform_3", 4, 4, 4, 8, 8)]


def _table() -> LatencyTable:
    torch.set_num_threads(1)
    return measure_table(SIGS, "cpu", batch=1, runs=3, warmup=1)


def test_table_round_trips_and_records_device(tmp_path):
    table = _table()
    for key in ("device", "device_name", "torch", "threads", "batch", "runs", "loadavg_start", "loadavg_end"):
        assert key in table.meta
    assert table.meta["torch"] == torch.__version__ and table.meta["threads"] == 1
    e = table.entries[SIGS[1].key]
    assert e["min_ms"] <= e["p10_ms"] <= e["median_ms"] <= e["p90_ms"] <= e["max_ms"] and e["runs"] == 3
    path = tmp_path / "t.json"
    table.save(path)
    back = LatencyTable.load(path)
    assert back.entries == json.loads(json.dumps(table.entries))
    assert back.meta == json.loads(json.dumps(table.meta))
    assert back.matches("cpu")[0]
    assert back.ms(SIGS[0]) == pytest.approx(table.ms(SIGS[0]))


def test_table_from_another_device_is_refused_and_remeasured(tmp_path):
    table = _table()
    table.meta["device_name"] = "Some Other CPU 9000"
    path = tmp_path / "t.json"
    table.save(path)
    ok, why = LatencyTable.load(path).matches("cpu")
    assert not ok and "device_name" in why
    messages: list[str] = []
    fresh = ensure_table(path, SIGS, "cpu", batch=1, runs=2, warmup=0, log=messages.append)
    assert any("re-measuring" in m and "Some Other CPU 9000" in m for m in messages)
    assert fresh.matches("cpu")[0] and LatencyTable.load(path).matches("cpu")[0]
    # Same device and batch: reused without measuring.
    messages.clear()
    again = ensure_table(path, SIGS, "cpu", batch=1, runs=2, warmup=0, log=messages.append)
    assert any("reusing" in m for m in messages) and again.entries == LatencyTable.load(path).entries
    # Another torch version is refused too.
    fresh.meta["torch"] = "0.0.1"
    assert not fresh.matches("cpu")[0]


def test_bad_table_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        LatencyTable.load(bad)
    bad.write_text('{"foo": 1}')
    with pytest.raises(InputError, match="not a latency table"):
        LatencyTable.load(bad)


def test_supernet_signatures_cover_every_slot_scale():
    sigs = supernet_sigs(8, 64, align=True, cascades=1, drm_blocks=1)
    sizes = {(s.op.split("_")[0], s.height) for s in sigs}
    assert ("conv", 64) in sizes and ("conv", 32) in sizes  # SRSM at scales 1 and 2
    assert ("deform", 16) in sizes  # DASM L3 at scale 4
    assert any(s.c_in == 16 and s.c_out == 16 and s.height == 64 for s in sigs)  # DRM at 2C


def test_expected_latency_is_normalised_and_differentiable():
    space = SearchSpace(srsm=("conv_1", "conv_3"), drm=("conv_1", "conv_7"))
    net = FusionNet.supernet(NetConfig(channels=4, cascades=1, drm_blocks=1, space=space))
    sigs = {s.key: s for _, ch in net.choices() for s in slot_sigs(ch, 16)}
    table = LatencyTable(meta={}, entries={k: {"median_ms": (10.0 if "conv_7" in k or "conv_3" in k else 1.0)} for k in sigs})
    r = ExpectedLatency(net, table, 16)
    with torch.no_grad():
        for a in net.arch_parameters():
            a.zero_()
    assert float(r().detach()) == pytest.approx(1.0)
    assert r.fastest_ms() == pytest.approx(len(list(net.choices())) * 1.0)
    r().backward()
    for a in net.arch_parameters():
        assert a.grad is not None and a.grad[0] < 0 < a.grad[1]  # pushing toward the fast op lowers R
    with torch.no_grad():
        for a in net.arch_parameters():
            a.copy_(torch.tensor([5.0, -5.0]))
    assert float(r().detach()) < 0.25 and r.derived_ms() == pytest.approx(r.fastest_ms())
