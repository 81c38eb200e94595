"""The few-shot protocol (draws, skipped shots) and the fewshot stage end to end on a synthetic store."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from residual_audio.core.params import ParamError
from residual_audio.data.synthetic import synthetic_store
from residual_audio.evaluation.protocol import make_splits
from residual_audio.evaluation.zeroshot import save_text_side, zeroshot_logits
from residual_audio.stages.fewshot import class_permutations, draw, feasible_shots, fewshot_dataset
from conftest import checked


def labels_and_splits(n_per_class=8, n_classes=5, k=2):
    labels = np.repeat(np.arange(n_classes), n_per_class)
    folds = np.tile(np.arange(n_per_class) % 5 + 1, n_classes)
    return labels, make_splits(labels, folds, "stratified", k, 0, 0.0)


@pytest.mark.parametrize("k", [1, 2])
def test_draws_are_k_per_class_from_training_folds_and_disjoint_from_validation(k):
    labels, splits = labels_and_splits()
    for split in splits:
        fit, val = draw(class_permutations(labels, split.train_all, (0, 0, 0)), k, True)
        assert np.array_equal(np.bincount(labels[fit], minlength=5), np.full(5, k))
        assert np.array_equal(np.bincount(labels[val], minlength=5), np.full(5, k))
        assert set(fit) <= set(split.train_all) and set(val) <= set(split.train_all)
        assert not set(fit) & set(val)
        assert not (set(fit) | set(val)) & set(split.test)


def test_draws_are_seeded_and_nested():
    labels, splits = labels_and_splits(n_per_class=16)
    pool = splits[0].train_all
    a = draw(class_permutations(labels, pool, (0, 0, 0)), 2, True)
    b = draw(class_permutations(labels, pool, (0, 0, 0)), 2, True)
    c = draw(class_permutations(labels, pool, (0, 0, 1)), 2, True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    one, _ = draw(class_permutations(labels, pool, (0, 0, 0)), 1, True)
    assert set(one) <= set(a[0])
    fit, val = draw(class_permutations(labels, pool, (0, 0, 0)), 2, False)
    assert np.array_equal(fit, a[0]) and len(val) == 0


def test_impossible_shots_are_skipped_with_one_warning():
    labels, splits = labels_and_splits()  # 4 training clips per class per fold
    with pytest.warns(UserWarning) as record:
        kept = feasible_shots(labels, splits, (1, 2, 4, 8), with_val=True)
    assert kept == [1, 2]
    assert len([w for w in record if "fewshot.shots" in str(w.message)]) == 1
    assert "[4, 8]" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert feasible_shots(labels, splits, (1, 2, 4), with_val=False) == [1, 2, 4]
    with pytest.raises(ParamError, match="fewshot.shots"), pytest.warns(UserWarning):
        feasible_shots(labels, splits, (8,), with_val=False)


# --------------------------------------------------------------------------- the stage


@pytest.fixture
def project(tmp_path, monkeypatch):
    text, _ = synthetic_store(tmp_path / "data/heads/syn.zarr", n_per_class=8, n_classes=5, seed=2)
    save_text_side(tmp_path / "data/text/syn.npz", text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def params(**fewshot):
    return {"seed": 0, "cv": {"scheme": "stratified", "k": 2},
            "fewshot": {"shots": [1, 2, 4], "seeds": 2, "methods": ["tip_adapter", "tip_adapter_f"],
                        "protocol": "oracle", **fewshot},
            "tip_adapter": {"epochs": 3}}


def test_fewshot_stage_end_to_end(project):
    from residual_audio.data.units import read_units
    from residual_audio.evaluation.zeroshot import load_text_side

    store = read_units(project / "data/heads/syn.zarr")
    text = load_text_side(project / "data/text/syn.npz")
    # a full-data results file for one method: its test logits per clip and their folds
    splits = make_splits(store.label, store.fold, "stratified", 2, 0, 0.0)
    fold_of = np.zeros(store.n, np.int64)
    fold_of[splits[1].test] = 1
    logits = zeroshot_logits(store.embedding, text)
    (project / "data/results/syn").mkdir(parents=True)
    np.savez(project / "data/results/syn/tip_adapter.npz", logits=logits, fold_of=fold_of, labels=store.label,
             method=np.array("tip_adapter"), classes=np.array(store.classes), folds=np.array(["fold1", "fold2"]),
             params=np.array([0, 0]), hyper=np.array("{}"), meta=np.array("{}"),
             **{"fold1/history": np.array("[]"), "fold2/history": np.array("[]")})

    with pytest.warns(UserWarning, match=r"fewshot.shots \[4\] skipped") as record:
        metrics = fewshot_dataset(params(), "syn")
    assert len([w for w in record if "fewshot.shots" in str(w.message)]) == 1

    on_disk = json.loads((project / "metrics/syn/fewshot.json").read_text())
    assert on_disk["weights"] == "random"
    acc = on_disk["accuracy"]
    assert set(acc) == {"tip_adapter", "tip_adapter_f"} and set(acc["tip_adapter"]) == {"1", "2"}
    assert set(acc["tip_adapter"]["1"]) == {"mean", "std", "labels_per_class", "unlabelled_audio"}
    # Tip-Adapter chooses α, β on a k-shot validation draw: a k-shot point saw 2k labels per class
    assert [acc["tip_adapter"][k]["labels_per_class"] for k in ("1", "2")] == [2, 4]
    assert acc["tip_adapter"]["1"]["unlabelled_audio"] is False

    # every headline number is the mean and spread of its runs (pandas, from the per-run table)
    runs = pd.read_csv(project / "plots/fewshot/syn/runs.csv")
    assert len(runs) == 2 * 2 * 2 * 2  # methods × folds × seeds × shots
    for (method, shots), group in runs.groupby(["method", "shots"]):
        assert acc[method][str(shots)]["mean"] == pytest.approx(group.accuracy.mean())
        assert acc[method][str(shots)]["std"] == pytest.approx(group.accuracy.std(ddof=1))
    assert set(runs[runs.method == "tip_adapter_f"].params) == {5 * 512, 10 * 512}  # k × classes keys of 512

    curves = pd.read_csv(project / "plots/fewshot/syn/curves.csv", dtype={"point": str})
    ref = curves[curves.method == "zeroshot_reference"]
    direct = [(zeroshot_logits(store.embedding[s.test], text).argmax(1) == store.label[s.test]).mean() for s in splits]
    assert ref.accuracy_mean.item() == pytest.approx(np.mean(direct))
    full = curves[curves.point == "full"]
    assert list(full.method) == ["tip_adapter"]  # tip_adapter_f has no full-data file: skipped with a note
    per_fold = [(logits[fold_of == f].argmax(1) == store.label[fold_of == f]).mean() for f in (0, 1)]
    assert full.accuracy_mean.item() == pytest.approx(np.mean(per_fold))
    assert full.shots.item() == pytest.approx(4.0)  # training clips per class of the full protocol
    notes = json.loads((project / "plots/fewshot/syn/notes.json").read_text())["full_data"]
    assert len(notes) == 1 and "tip_adapter_f" in notes[0]
    assert (project / "plots/fewshot/syn/curves.png").stat().st_size > 10_000

    # seeded: a rerun writes the same numbers
    with pytest.warns(UserWarning):
        again = fewshot_dataset(params(), "syn")
    assert again == metrics


def test_fewshot_stage_bad_params_write_nothing(project):
    with pytest.raises(ParamError, match="fewshot.methods.*'nope'"):
        checked(fewshot_dataset, params(methods=["tip_adapter", "nope"]), "syn")
    with pytest.raises(ParamError, match="fewshot.shots"):
        checked(fewshot_dataset, params(shots=[0, 1]), "syn")
    with pytest.raises(ParamError, match="fewshot.seeds"):
        checked(fewshot_dataset, params(seeds=0), "syn")
    with pytest.raises(ParamError, match="fewshot.inject"):
        checked(fewshot_dataset, params(inject="yes"), "syn")
    with pytest.raises(ParamError, match="fewshot.shots"), pytest.warns(UserWarning):
        fewshot_dataset(params(shots=[8]), "syn")
    assert not (project / "metrics").exists() and not (project / "plots").exists()


@pytest.mark.shared
@pytest.mark.slow
def test_fewshot_stage_with_prompt_learning(project, model, tokenizer, shared_data):
    """Prompt learning gets the model's text encoder and tokenizer from data/models."""
    from residual_audio.evaluation.zeroshot import build_text_side, load_text_side

    text = load_text_side(project / "data/text/syn.npz")
    save_text_side(project / "data/text/syn.npz", build_text_side(model, tokenizer, text.classes, text.templates))
    shutil.copytree(shared_data / "roberta-base", project / "data/models/tokenizer")
    (project / "data/models/manifest.json").write_text(json.dumps({"weights": "random"}))
    p = params(methods=["prompt_learning"], shots=[1], seeds=1)
    p["prompt_learning"] = {"epochs": 1}
    metrics = fewshot_dataset(p, "syn")
    assert set(metrics["accuracy"]["prompt_learning"]) == {"1"}
    runs = pd.read_csv(project / "plots/fewshot/syn/runs.csv")
    assert set(runs.params) == {5 * 768}


@pytest.mark.shared
@pytest.mark.slow
def test_train_runs_prompt_learning_with_the_text_encoder_it_needs(project, model, tokenizer, shared_data):
    """`train` meets every listed method's needs the way `fewshot` does: prompt learning gets the
    text encoder and the tokenizer, built before any method runs."""
    from residual_audio.evaluation.results import load_results
    from residual_audio.evaluation.zeroshot import build_text_side, load_text_side
    from residual_audio.stages.train import train_dataset

    text = load_text_side(project / "data/text/syn.npz")
    save_text_side(project / "data/text/syn.npz", build_text_side(model, tokenizer, text.classes, text.templates))
    shutil.copytree(shared_data / "roberta-base", project / "data/models/tokenizer")
    (project / "data/models/manifest.json").write_text(json.dumps({"weights": "random"}))
    p = {"seed": 0, "cv": {"scheme": "stratified", "k": 2}, "methods": ["zeroshot", "prompt_learning"], "live": False,
         "prompt_learning": {"epochs": 1}}
    train_dataset(p, "syn")
    res = load_results(project / "data/results/syn/prompt_learning.npz")
    assert list(res["folds"]) == ["fold0", "fold1"] and list(res["params"]) == [5 * 768, 5 * 768]


class Recorder:
    """Registered for one test: zero-shot logits, and a record of what each fit was given."""

    seen: list = []


@pytest.fixture
def extra_methods():
    from residual_audio.methods import REGISTRY, Estimator, register

    class ZeroShotRecorder(Estimator):
        name = "test_recorder"

        def fit(self, data):
            Recorder.seen.append(data)
            self.n_params_ = 0
            return self

        def logits(self, data, idx):
            return zeroshot_logits(data.store.embedding[idx], data.text)

    class EncoderMethod(ZeroShotRecorder):
        name = "test_encoder_method"
        needs = frozenset({"encoder"})

    Recorder.seen = []
    register(ZeroShotRecorder)
    register(EncoderMethod)
    yield
    del REGISTRY["test_recorder"], REGISTRY["test_encoder_method"]


def test_any_registered_method_runs_and_inject_methods_only_when_asked(project, extra_methods):
    p = params(methods=["test_recorder", "tip_adapter", "test_encoder_method"], shots=[1, 2], seeds=1)
    with pytest.warns(UserWarning, match="test_encoder_method.*fewshot.inject"):
        metrics = fewshot_dataset(p, "syn")
    assert set(metrics["accuracy"]) == {"test_recorder", "tip_adapter"}
    assert len(Recorder.seen) == 2 * 2  # folds × shots
    splits = make_splits(np.repeat(np.arange(5), 8), np.tile(np.arange(8) % 5 + 1, 5), "stratified", 2, 0, 0.0)
    for data in Recorder.seen:
        k = int(data.split.name.split("/")[-1][0])
        fold = next(s for s in splits if s.name == data.split.name.split("/")[0])
        assert len(data.split.val) == 0  # no "validation" in its needs: no validation draw
        assert np.array_equal(np.bincount(data.labels[data.split.train]), np.full(5, k))
        assert np.array_equal(data.unlabelled_clips(), fold.train_all)
        assert np.array_equal(data.split.test, fold.test)
    # its accuracy is the zero-shot level at every shot count
    curves = pd.read_csv(project / "plots/fewshot/syn/curves.csv", dtype={"point": str})
    ref = curves[curves.method == "zeroshot_reference"].accuracy_mean.item()
    assert metrics["accuracy"]["test_recorder"]["1"]["mean"] == pytest.approx(ref)
    # asked for, an encoder method gets the hooked encoder and the mel store, which this project lacks: named
    from residual_audio.data.mel import MelStoreError

    p["fewshot"]["inject"] = True
    with pytest.raises(MelStoreError, match="data/mel/syn.zarr"):
        fewshot_dataset(p, "syn")


def test_each_method_says_how_many_labels_a_k_shot_point_saw():
    """Under `oracle`: k labels per class for methods that select nothing on validation (zero-shot, CoOp), 2k for
    those that choose on a k-shot validation draw. Under `within` (the default) k for all. residual_fine_unlabelled
    also reads the training folds' audio."""
    from residual_audio.stages.fewshot import labels_seen

    p = {"seed": 0, "fewshot": {"protocol": "oracle"}}
    assert labels_seen("zeroshot", p) == {"per_shot": 1, "unlabelled_audio": False}
    assert labels_seen("prompt_learning", p) == {"per_shot": 1, "unlabelled_audio": False}
    assert labels_seen("residual_fine", p) == {"per_shot": 2, "unlabelled_audio": False}
    assert labels_seen("residual_fine_unlabelled", p) == {"per_shot": 2, "unlabelled_audio": True}
    default = {"seed": 0}
    assert labels_seen("residual_fine", default) == {"per_shot": 1, "unlabelled_audio": False}
    assert labels_seen("residual_fine_unlabelled", default) == {"per_shot": 1, "unlabelled_audio": True}


def test_within_protocol_counts_k_labels_per_class_for_every_method(project, monkeypatch):
    """The default protocol: a k-shot run sees k labelled clips per class in all. A method that selects on
    validation splits them (cv.val_fraction of k, at least one; none at k = 1); the others fit on all k."""
    from residual_audio.stages import fewshot as fs

    seen = []
    real = fs.build

    def spy(name, p):
        est = real(name, p)
        fit = est.fit

        def recorded(data):
            seen.append((name, data.split.name, data.split.train.copy(), data.split.val.copy()))
            return fit(data)

        est.fit = recorded
        return est

    monkeypatch.setattr(fs, "build", spy)
    p = params(protocol="within", methods=["zeroshot", "tip_adapter", "linear_probe"], shots=[1, 2, 4])
    p["cv"]["val_fraction"] = 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 4 shots fit the training folds once no 2k draw is needed
        metrics = fewshot_dataset(p, "syn")
    assert metrics["protocol"] == "within"
    for method in ("zeroshot", "tip_adapter", "linear_probe"):
        assert [metrics["accuracy"][method][k]["labels_per_class"] for k in ("1", "2", "4")] == [1, 2, 4]
    from residual_audio.data.units import read_units

    labels = read_units(project / "data/heads/syn.zarr").label
    by_draw = {}
    for name, split, fit, val in seen:
        k = int(split.rsplit("/", 1)[1].removesuffix("shot"))
        assert not set(fit) & set(val)
        per_class = np.bincount(labels[np.concatenate([fit, val])], minlength=5)
        assert (per_class == k).all(), (name, split, per_class)  # k labels per class, fit and validation together
        expected_val = 0 if name == "zeroshot" or k == 1 else max(1, round(0.25 * k))
        assert (np.bincount(labels[val], minlength=5) == expected_val).all(), (name, split)
        by_draw.setdefault(split, set()).add(tuple(sorted(np.concatenate([fit, val]))))
    assert all(len(v) == 1 for v in by_draw.values())  # every method of a draw saw the same k clips per class
