"""Total-effect head ablation through the hooked forward (seeded random weights, a few noise clips)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, checked
from tiny_project import noise_mel, text_side, write_project_data

from residual_audio.analysis.ablation import ablated_embedding, head_mean_hook, stage_streams, total_ablation
from residual_audio.core.params import ParamError
from residual_audio.evaluation.protocol import make_splits
from residual_audio.methods.residual.inject import head_name
from residual_audio.models.decompose import head_rows
from residual_audio.models.hooked import HookedHTSAT
from residual_audio.data.mel import MelStoreError
from residual_audio.stages.extract import HeadExtractor

N = 4


@pytest.fixture(scope="module")
def hooked(model):
    return HookedHTSAT(model)


@pytest.fixture(scope="module")
def data(model):
    mel, label = noise_mel(model, N)
    with torch.no_grad():
        pre = HeadExtractor(model, ["pre"])(mel)["heads/pre"].numpy()
    names = [head_name(*r) for r in head_rows(HookedHTSAT(model).arch)]
    splits = make_splits(label, np.zeros(N, np.int64), "stratified", 2, 0, 0.0)
    return dict(mel=mel, label=label, pre=pre, names=names, splits=splits, text=text_side(model))


def _one_head_per_stage(names: list[str]) -> list[int]:
    stages = [int(n.split(".")[1]) for n in names]
    return [stages.index(s) + (1 if s else 0) for s in range(4)]


def test_mean_hook_replaces_one_head_on_every_token():
    z = torch.randn(2, 5, 3, 4)
    value = torch.arange(4.0)
    out = head_mean_hook(1, value)(z, "layers.0.blocks.0.attn.hook_z")
    assert torch.equal(out[:, :, 1], value.expand(2, 5, 4))
    assert torch.equal(out[:, :, [0, 2]], z[:, :, [0, 2]]) and not torch.equal(z[:, :, 1], out[:, :, 1])


def test_replacing_z_by_itself_drops_nothing(hooked, data):
    chosen = _one_head_per_stage(data["names"])
    table = total_ablation(hooked, data["mel"].numpy(), data["label"], data["pre"], data["names"], data["splits"],
                           data["text"], batch_size=2, heads=chosen, make_hook=lambda i, mean: (lambda z, name: z.clone()))
    assert table["stage"].tolist() == [0, 1, 2, 3] and table["unit"].tolist() == [data["names"][u] for u in chosen]
    assert (table["total_drop"] == 0).all() and (table["total_drop_std"] == 0).all()
    assert table["total_accuracy"].between(0, 1).all()


def test_cached_stream_ablation_equals_the_full_forward(hooked, data):
    mel = data["mel"][:2]
    means = torch.from_numpy(data["pre"][data["splits"][0].train_all].mean(0))
    streams, embedding = stage_streams(hooked, mel)
    with torch.no_grad():
        assert torch.equal(embedding, hooked(mel)["embedding"])
        for u in (_one_head_per_stage(data["names"])[1], len(data["names"]) - 3):  # a stage-1 and a stage-3 head
            s, b, h = (int(x) for x in data["names"][u].replace("head", "").split(".")[1::2])
            hook = head_mean_hook(h, means[u])
            cached = ablated_embedding(hooked, streams, s, b, hook)
            full = hooked(mel, hooks=[(f"layers.{s}.blocks.{b}.attn.hook_z", hook)])["embedding"]
            torch.testing.assert_close(cached, full, atol=0, rtol=0)
            assert (cached - embedding).abs().max() > 1e-4  # the ablation changed the embedding


# --------------------------------------------------------------------------- the stage


def _params(**ablation):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(datasets=["folder"])
    params["model"].update(checkpoint="random", variant="tiny")
    params["cv"].update(scheme="stratified", k=2, val_fraction=0.0)
    params["ablation"].update({"stages": [3], "device": "cpu", "batch_size": 4, **ablation})
    return params


def test_stage_adds_total_columns_only_when_asked(model, tmp_path, monkeypatch):
    from residual_audio.stages import common
    from residual_audio.stages.ablation import run as ablation_stage

    write_project_data(tmp_path, model, dataset="folder", n=4)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common, "load_model", lambda checkpoint, variant=None: model)
    csv, metrics_path = tmp_path / "plots/ablation/folder.csv", tmp_path / "metrics/folder/ablation.json"

    ablation_stage(_params(), "folder")
    direct_csv, direct_json = csv.read_bytes(), metrics_path.read_bytes()
    direct = pd.read_csv(csv)
    assert "total_drop" not in direct and "total" not in json.loads(direct_json)

    ablation_stage(_params(total=True), "folder")
    table = pd.read_csv(csv)
    pd.testing.assert_frame_equal(table[direct.columns], direct)
    ablated = (table.kind == "head") & (table.stage == 3)
    assert ablated.sum() == 64
    assert table.loc[ablated, ["total_accuracy", "total_drop", "total_drop_std"]].notna().all().all()
    assert table.loc[~ablated, "total_drop"].isna().all()
    assert np.allclose(table.loc[ablated, "total_accuracy"] + table.loc[ablated, "total_drop"],
                       table.loc[ablated, "total_accuracy"].iloc[0] + table.loc[ablated, "total_drop"].iloc[0])  # one baseline
    metrics = json.loads(metrics_path.read_text())
    assert metrics["weights"] == "random" and metrics["total"]["stages"] == [3]
    assert set(metrics["total"]) == {"stages", "head_drop", "direct_vs_total", "fisher"}
    corr = metrics["total"]["direct_vs_total"]
    assert corr == {} or (-1 <= corr["spearman"] <= 1 and corr["n"] == 64)

    # back to total: false gives the direct-only outputs again, byte for byte
    ablation_stage(_params(), "folder")
    assert csv.read_bytes() == direct_csv and metrics_path.read_bytes() == direct_json

    # total needs the mel store: a clear error naming it, outputs as they were
    (tmp_path / "data/mel/folder.zarr").rename(tmp_path / "data/mel/away.zarr")
    with pytest.raises(MelStoreError, match="data/mel/folder.zarr"):
        ablation_stage(_params(total=True), "folder")
    assert csv.read_bytes() == direct_csv and metrics_path.read_bytes() == direct_json


@pytest.mark.parametrize("key, value", [("total", "yes"), ("device", "tpu"), ("batch_size", 0), ("stages", [4]),
                                        ("stages", []), ("stages", [3, 3])])
def test_bad_ablation_params_name_the_key(tmp_path, monkeypatch, key, value):
    from residual_audio.stages.ablation import run as ablation_stage

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamError, match=rf"ablation\.{key}"):
        params = _params(**{key: value})
        params["cv"]["val_fraction"] = 0.1  # the other tests' 0.0 is for direct calls; params.yaml needs > 0
        checked(ablation_stage, params, "folder")
    assert not any(tmp_path.iterdir())


def test_an_undefined_ablation_number_says_why():
    import pandas as pd

    from residual_audio.stages.ablation import _undefined

    zero = pd.Series([0.0, 0.0, 0.0])
    notes = _undefined(zero, {})
    assert any("drop is 0" in n for n in notes) and any("'fisher' is empty" in n for n in notes)
    assert _undefined(pd.Series([0.1, 0.0, 0.2]), {"pre": {"spearman": 0.3}}) == []
    assert any("constant over the heads" in n for n in _undefined(pd.Series([0.1, 0.0]), {}))
