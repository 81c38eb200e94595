"""Inject-mode ResiDual through the real hooked forward (seeded random weights, a few noise clips)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO, checked
from tiny_project import noise_mel, text_side, write_project_data

from residual_audio.core.params import ParamError
from residual_audio.evaluation import results as al
from residual_audio.evaluation.protocol import Split
from residual_audio.evaluation.results import FoldResult
from residual_audio.evaluation.zeroshot import FrozenHead, TextSide, zeroshot_logits
from residual_audio.methods.residual.inject import FromCache, InjectResiDual, entry_inputs, head_name, restrict
from residual_audio.methods.residual.maths import UnitBases, fit_bases
from residual_audio.methods.training import TrainConfig, evaluate, train, trainable_count
from residual_audio.models.decompose import head_rows
from residual_audio.models.hooked import HookedHTSAT
from residual_audio.data.mel import MelStoreError
from residual_audio.stages.extract import HeadExtractor

N = 8


def run_inject_residual(cache: torch.Tensor, labels: np.ndarray, split: Split, text: TextSide, bases: UnitBases,
                        hooked, stages, cfg: TrainConfig, beyond: str = "keep") -> FoldResult:
    """(Test helper) inject-mode ResiDual: λ on the heads of `stages`, trained through the frozen encoder's forward.

    `cache` [N, ...] holds, for every clip of the store, what the forward starts from (see
    `inject.entry_inputs`); evaluation passes use `train.batch_size` clips, like training.
    """
    device = next(hooked.model.parameters()).device
    inner = InjectResiDual(hooked, FrozenHead(text), bases, stages, beyond).to(device)
    model = FromCache(inner, cache)
    cfg = replace(cfg, eval_batch=cfg.batch_size, batch_progress=True)
    idx = {k: (torch.from_numpy(np.asarray(v, dtype=np.int64)),) for k, v in
           (("train", split.train), ("val", split.val), ("test", split.test))}
    history, lr = train(model, idx["train"], labels[split.train], idx["val"], labels[split.val], cfg,
                        desc=f"residual {split.name}")
    _, _, logits = evaluate(model, idx["test"], torch.from_numpy(labels[split.test]), cfg.eval_batch)
    lam = inner.lam.detach().cpu().numpy().copy()
    return FoldResult("residual", split.name, split.test, logits.numpy(), trainable_count(model), history,
                      {"lam": lam, "owner": inner.bases.owner, "explained": inner.bases.explained, "lr": lr})



@pytest.fixture(scope="module")
def hooked(model):
    return HookedHTSAT(model)


@pytest.fixture(scope="module")
def data(model, hooked):
    """Log-mels, labels, the text side, every head's bases on these clips, the plain forward's cache."""
    mel, label = noise_mel(model, N)
    with torch.no_grad():
        pre = HeadExtractor(model, ["pre"])(mel)["heads/pre"].numpy()
        out, cache = hooked.run_with_cache(mel, names=lambda n: n.endswith(("hook_z", "hook_merge_out")))
    names = [head_name(*r) for r in head_rows(hooked.arch)]
    bases = fit_bases(pre, np.arange(len(names)), names, 0.95)
    return dict(mel=mel, label=label, text=text_side(model), bases=bases, embedding=out["embedding"], cache=cache)


def _lam(model: InjectResiDual, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.lam.copy_(torch.rand(model.lam.shape, generator=gen) * 2)


@pytest.mark.parametrize("stages", [[0], [3], [1, 3]])
def test_lambda_one_gives_exactly_the_zero_shot_logits(hooked, data, stages):
    model = InjectResiDual(hooked, FrozenHead(data["text"]), data["bases"], stages)
    x = entry_inputs(hooked, data["mel"].numpy(), min(stages), 4, "cpu")
    with torch.no_grad():
        logits = model(x).numpy()
        again = model(x).numpy()
    reference = zeroshot_logits(data["embedding"].numpy(), data["text"])
    # λ = 1 adds an exact zero, but the entry cache is built in batches of 4 and the reference in one
    # batch: float32 matmuls regrouped by batch shape differ by a few ulps, so 1e-5 (far below the
    # 1e-3 between classes checked below); the same input twice is the same operation, so exact
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5)
    assert np.array_equal(again, logits)  # no random augmentation
    assert model.lam.numel() == len(restrict(data["bases"], stages).owner) > 0
    assert np.abs(reference[:, 0] - reference[:, 1]).max() > 1e-3  # the logits are not degenerate


def test_stream_into_a_stage_is_the_full_forward_stream(hooked, data):
    for s in (1, 3):
        with torch.no_grad():
            stream = hooked.stream_into(s, data["mel"])
        assert torch.equal(stream, data["cache"][f"layers.{s - 1}.hook_merge_out"])
    assert torch.equal(entry_inputs(hooked, data["mel"].numpy(), 0, 4, "cpu"), data["mel"])


@pytest.mark.parametrize("beyond", ["keep", "drop"])
def test_hook_is_rd_of_every_head_on_every_token(hooked, data, beyond):
    model = InjectResiDual(hooked, FrozenHead(data["text"]), data["bases"], [1], beyond)
    _lam(model, 1)
    name, sl = model.blocks[1]  # layers.1.blocks.1 (a shifted block)
    assert name == "layers.1.blocks.1.attn.hook_z"
    z = data["cache"][name].double()
    with torch.no_grad():
        fn = dict(model.hooks())[name]
        new = fn(data["cache"][name], name).double()
    b = model.bases
    lam = model.lam.detach().double()
    for i, u in enumerate(range(sl.start, sl.stop)):
        rows = b.owner == u
        phi, mu = torch.from_numpy(b.components[rows]).double(), torch.from_numpy(b.means[u]).double()
        x = z[:, :, i]
        if beyond == "keep":  # the directions past the threshold kept as they are: x + Φᵀ diag(λ − 1) Φ (x − μ)
            expected = x + ((x - mu) @ phi.T * (lam[torch.from_numpy(rows)] - 1)) @ phi
        else:
            expected = mu + ((x - mu) @ phi.T * lam[torch.from_numpy(rows)]) @ phi  # components past the threshold dropped
        torch.testing.assert_close(new[:, :, i], expected, atol=1e-4, rtol=1e-5)
    assert (new - z).abs().max() > 1e-3


def test_start_from_cache_equals_the_full_forward_with_rd(hooked, data):
    stages = [1, 3]
    model = InjectResiDual(hooked, FrozenHead(data["text"]), data["bases"], stages)
    _lam(model, 2)
    x = entry_inputs(hooked, data["mel"].numpy(), 1, 4, "cpu")
    with torch.no_grad():
        cached = model.embedding(x)
        full = hooked(data["mel"], hooks=model.hooks())["embedding"]
    torch.testing.assert_close(cached, full, atol=0, rtol=0)
    assert (full - data["embedding"]).abs().max() > 1e-3  # λ ≠ 1 changed the embedding


def _snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_only_lambda_is_trained_and_the_encoder_stays_frozen(model, hooked, data):
    before = _snapshot(model)
    inner = InjectResiDual(hooked, FrozenHead(data["text"]), data["bases"], [0])
    cache = entry_inputs(hooked, data["mel"].numpy(), 0, 4, "cpu")
    wrapped = FromCache(inner, cache)
    assert [n for n, p in wrapped.named_parameters() if p.requires_grad] == ["model.lam"]
    assert not any(k.startswith(("audio_branch", "hooked")) for k in wrapped.state_dict())  # the encoder is held by reference
    y = torch.from_numpy(data["label"])
    loss = F.cross_entropy(wrapped(torch.arange(4)), y[:4])
    loss.backward()
    assert inner.lam.grad is not None and inner.lam.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    inner.lam.grad = None
    idx = (torch.arange(N),)
    history, _ = train(wrapped, idx, data["label"], (torch.arange(0),), data["label"][:0],
                       TrainConfig(max_epochs=2, lr=0.05, batch_size=4, eval_batch=4))
    assert len(history) == 3 and not torch.equal(inner.lam.detach(), torch.ones_like(inner.lam))
    assert not model.training and not any(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "a parameter or buffer of the encoder changed"
    assert "audio_branch.bn0.running_mean" in before and "audio_branch.bn0.num_batches_tracked" in before
    model.train()
    try:
        with pytest.raises(RuntimeError, match="eval"):
            wrapped(torch.arange(2))
    finally:
        model.eval()


def test_training_reduces_the_training_loss(hooked, data):
    inner = InjectResiDual(hooked, FrozenHead(data["text"]), data["bases"], [3])
    wrapped = FromCache(inner, entry_inputs(hooked, data["mel"].numpy(), 3, 4, "cpu"))
    idx, y = (torch.arange(N),), torch.from_numpy(data["label"])
    start, _, _ = evaluate(wrapped, idx, y)
    train(wrapped, idx, data["label"], (torch.arange(0),), data["label"][:0],
          TrainConfig(max_epochs=15, lr=0.05, batch_size=4, eval_batch=8))
    end, acc, _ = evaluate(wrapped, idx, y)
    assert end < 0.5 * start and acc == 1.0, (start, end, acc)


def test_fold_runner_trains_on_the_fold_and_reports_test_logits(hooked, data):
    split = Split("fold0", np.arange(0, 5), np.arange(5, 6), np.arange(6, 8))
    cache = entry_inputs(hooked, data["mel"].numpy(), 3, 4, "cpu")
    cfg = TrainConfig(max_epochs=0, batch_size=3)
    zero = run_inject_residual(cache, data["label"], split, data["text"], data["bases"], hooked, [3], cfg)
    reference = zeroshot_logits(data["embedding"].numpy()[split.test], data["text"])
    np.testing.assert_allclose(zero.logits, reference, atol=1e-5, rtol=1e-5)  # test batches differ from the reference's
    assert zero.params == len(zero.extra["lam"]) == len(restrict(data["bases"], [3]).owner)
    trained = run_inject_residual(cache, data["label"], split, data["text"], data["bases"], hooked, [3],
                                     TrainConfig(max_epochs=2, lr=0.05, batch_size=3))
    assert trained.logits.shape == (2, 2) and np.isfinite(trained.logits).all()
    assert [r["epoch"] for r in trained.history][:2] == [0, 1]


def test_bases_must_cover_whole_blocks(hooked, data):
    partial = restrict(data["bases"], [3])
    with pytest.raises(ParamError, match="fit them on the same inject_layers"):
        InjectResiDual(hooked, FrozenHead(data["text"]), partial, [2])


# --------------------------------------------------------------------------- the stages


def _params(**recipe):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(datasets=["folder"], inject_layers=[3], methods=["zeroshot", "residual_inject"], live=False)
    params["model"].update(checkpoint="random", variant="tiny")
    params["cv"].update(scheme="stratified", k=2, val_fraction=0.34)
    params["residual"]["inject"].update(recipe="identity", micro_batch=4)
    params["residual"]["recipes"]["identity"].update({"max_epochs": 2, "lr": 0.05, "batch_size": 4, **recipe})
    params["train"].update(device="cpu")
    return params


@pytest.mark.slow
def test_stages_end_to_end_in_inject_mode(model, tmp_path, monkeypatch):
    from residual_audio.stages import common
    from residual_audio.stages.evaluate import run as evaluate_stage
    from residual_audio.stages.train import run as train_stage

    write_project_data(tmp_path, model, dataset="folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common, "load_model", lambda checkpoint, variant=None: model)  # the same seeded weights, built once
    params = _params()
    train_stage(params, "folder")
    evaluate_stage(params, "folder")
    res = al.load_results("data/results/folder/residual_inject.npz")
    first = res["folds"][0]
    names = [str(n) for n in res[f"{first}/unit_names"]]
    assert all(n.startswith("layers.3.") for n in names) and len(names) == 64
    assert np.isfinite(res["logits"]).all()
    metrics = json.loads((tmp_path / "plots/alignment/folder/methods/residual_inject.json").read_text())
    assert metrics["weights"] == "random" and len(metrics["accuracy"]["folds"]) == 2
    assert metrics["params"] == max(len(res[f"{f}/lam"]) for f in res["folds"]) > 0
    assert json.loads((tmp_path / "metrics/folder/alignment.json").read_text())["residual_inject"]["params"] == metrics["params"]

    # no training: the zero-shot method (from the stored embedding) up to float rounding through the forward
    train_stage(_params(max_epochs=0), "folder")
    zero = al.load_results("data/results/folder/residual_inject.npz")["logits"]
    zs = al.load_results("data/results/folder/zeroshot.npz")["logits"]
    np.testing.assert_allclose(zero, zs, atol=1e-4, rtol=1e-4)

    # a missing mel store is named; the results stay as they were
    before = (tmp_path / "data/results/folder/residual_inject.npz").read_bytes()
    (tmp_path / "data/mel/folder.zarr").rename(tmp_path / "data/mel/away.zarr")
    with pytest.raises(MelStoreError, match="data/mel/folder.zarr"):
        train_stage(params, "folder")
    assert (tmp_path / "data/results/folder/residual_inject.npz").read_bytes() == before


def test_inject_params_are_checked(tmp_path, monkeypatch):
    from residual_audio.stages.train import run as train_stage

    monkeypatch.chdir(tmp_path)
    for key, value, message in [("residual.granularity", "block", "residual.granularity"), ("train.device", "tpu", "train.device"),
                                ("inject_layers", [4], "inject_layers"), ("inject_layers", [], "inject_layers"),
                                ("inject_layers", [1, 1], "inject_layers")]:
        params = _params()
        if "." in key:
            section, leaf = key.split(".")
            params[section][leaf] = value
        else:
            params[key] = value
        with pytest.raises(ParamError, match=message.replace(".", r"\.")):
            checked(train_stage, params, "folder")
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_results(model, hooked, data):
    import copy

    on_gpu = HookedHTSAT(copy.deepcopy(model).to("cuda"))
    split = Split("fold0", np.arange(0, 5), np.arange(5, 6), np.arange(6, 8))
    cfg = TrainConfig(max_epochs=3, lr=0.05, batch_size=3)
    runs = []
    for h, device in ((hooked, "cpu"), (on_gpu, "cuda")):
        cache = entry_inputs(h, data["mel"].numpy(), 2, 4, device)
        assert cache.device.type == "cpu"
        runs.append(run_inject_residual(cache, data["label"], split, data["text"], data["bases"], h, [2, 3], cfg))
    cpu, gpu = runs
    np.testing.assert_allclose(gpu.logits, cpu.logits, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(gpu.extra["lam"], cpu.extra["lam"], atol=1e-3)
    assert not np.allclose(cpu.extra["lam"], 1)


def test_learning_rate_range_test_leaves_the_model_as_it_was(hooked, data):
    from residual_audio.methods.training import lr_range_test

    inner = InjectResiDual(hooked, FrozenHead(data["text"]), data["bases"], [3])
    wrapped = FromCache(inner, entry_inputs(hooked, data["mel"].numpy(), 3, 4, "cpu"))
    args = (wrapped, (torch.arange(N),), torch.from_numpy(data["label"]), TrainConfig(batch_size=4))
    lr = lr_range_test(*args, steps=12)
    # a tenth of one of the 12 rates tried (1e-4 … 1, geometric), and the same again: the test is seeded
    assert np.isclose(np.geomspace(1e-4, 1.0, 12) / 10, lr, rtol=1e-12).sum() == 1
    assert lr_range_test(*args, steps=12) == lr
    assert torch.equal(inner.lam.detach(), torch.ones_like(inner.lam))
