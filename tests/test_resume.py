"""A killed `train` or `fewshot` restarts from the last finished unit (method × fold, or method × fold ×
seed × shots): finished units are cached under .residual_audio/partial/ keyed by everything they depend
on, and the end result equals that of a run never stopped."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from residual_audio.core.resume import PARTIAL_DIR
from residual_audio.data.synthetic import synthetic_store
from residual_audio.evaluation.zeroshot import save_text_side
from test_recipes import _params

METHODS = ["zeroshot", "linear_probe", "linear", "spectral_out", "residual_coarse", "residual_fine", "linear_adapter",
           "tip_adapter_f"]


class Killed(BaseException):
    """Stands for SIGINT/SIGKILL arriving in the middle of a fit."""


@pytest.fixture()
def project(tmp_path, monkeypatch):
    text, _ = synthetic_store(tmp_path / "data/heads/synthetic.zarr", n_per_class=6, n_classes=5, n_folds=3, seed=2)
    save_text_side(tmp_path / "data/text/synthetic.npz", text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _counting(monkeypatch, module: str, kill_at: int | None = None) -> list:
    """Wrap `build` in `module` so that every fit is counted (and the `kill_at`-th one is killed)."""
    import importlib

    mod = importlib.import_module(module)
    real, fits = mod.build, []

    def build(name, params):
        est = real(name, params)
        fit = est.fit

        def counted(data):
            fits.append((name, data.split.name))
            if kill_at is not None and len(fits) == kill_at:
                raise Killed()
            return fit(data)

        est.fit = counted
        return est

    monkeypatch.setattr(mod, "build", build)
    return fits


def _npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _same(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), f"{where}: {k}"


def _train(params, out):
    from residual_audio.stages import train

    saved, train.RESULTS_DIR = train.RESULTS_DIR, Path(out)
    try:
        return train.train_dataset(params, "synthetic")
    finally:
        train.RESULTS_DIR = saved


def test_killed_train_resumes_from_the_last_finished_fit(project, monkeypatch):
    params = _params(methods=METHODS)
    total = 3 * len(METHODS)
    _train(params, "whole")
    assert not (PARTIAL_DIR / "train").exists() or not any((PARTIAL_DIR / "train").rglob("*.npz"))

    kill_at = len(METHODS) + 3  # fold 2, the third method
    fits = _counting(monkeypatch, "residual_audio.stages.train", kill_at)
    with pytest.raises(Killed):
        _train(params, "resumed")
    assert not Path("resumed/synthetic").exists()  # nothing written but the finished units
    assert len(list((PARTIAL_DIR / "train" / "synthetic").glob("*.npz"))) == kill_at - 1
    monkeypatch.undo()
    monkeypatch.chdir(project)
    fits = _counting(monkeypatch, "residual_audio.stages.train")
    _train(params, "resumed")
    assert len(fits) == total - (kill_at - 1), fits  # only the unfinished fits ran again
    assert fits[0] == (METHODS[2], "fold2")
    for m in METHODS:
        _same(_npz(Path("whole/synthetic") / f"{m}.npz"), _npz(Path("resumed/synthetic") / f"{m}.npz"), m)
    assert not any((PARTIAL_DIR / "train").rglob("*.npz"))  # the cache of a finished run is removed


def test_a_changed_parameter_is_not_served_from_the_cache(project, monkeypatch):
    params = _params(methods=["zeroshot", "residual_fine"])
    fits = _counting(monkeypatch, "residual_audio.stages.train", kill_at=6)
    with pytest.raises(Killed):
        _train(params, "out")  # five fits finished: three zeroshot, two residual_fine
    changed = copy.deepcopy(params)
    changed["residual"]["recipes"]["fine"]["lr"] = 0.5
    monkeypatch.undo()
    monkeypatch.chdir(project)
    fits = _counting(monkeypatch, "residual_audio.stages.train")
    _train(changed, "out")
    assert sorted(fits) == sorted([("residual_fine", f"fold{i}") for i in (1, 2, 3)])  # zeroshot reused, fine not


def test_killed_fewshot_resumes_from_the_last_finished_run(tmp_path, monkeypatch):
    import warnings

    from residual_audio.stages import fewshot

    text, _ = synthetic_store(tmp_path / "data/heads/syn.zarr", n_per_class=8, n_classes=5, seed=2)
    save_text_side(tmp_path / "data/text/syn.npz", text)
    monkeypatch.chdir(tmp_path)
    params = {"seed": 0, "cv": {"scheme": "stratified", "k": 2},
              "fewshot": {"shots": [1, 2], "seeds": 2, "methods": ["zeroshot", "tip_adapter_f", "residual_fine"]},
              "tip_adapter": {"epochs": 3}, "residual": {"recipes": {"fine": {"max_epochs": 3}}}}
    total = 2 * 2 * 2 * 3  # folds × seeds × shots × methods
    warnings.simplefilter("ignore")
    whole = fewshot.fewshot_dataset(params, "syn", Path("whole/fewshot.json"), Path("whole/plots"))
    fits = _counting(monkeypatch, "residual_audio.stages.fewshot", kill_at=8)
    with pytest.raises(Killed):
        fewshot.fewshot_dataset(params, "syn", Path("resumed/fewshot.json"), Path("resumed/plots"))
    assert not Path("resumed").exists()
    assert len(list((PARTIAL_DIR / "fewshot" / "syn").glob("*.npz"))) == 7
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    fits = _counting(monkeypatch, "residual_audio.stages.fewshot")
    resumed = fewshot.fewshot_dataset(params, "syn", Path("resumed/fewshot.json"), Path("resumed/plots"))
    assert len(fits) == total - 7
    assert resumed == whole
    for name in ("runs.csv", "curves.csv"):
        assert Path("resumed/plots", name).read_text() == Path("whole/plots", name).read_text()
    assert not any((PARTIAL_DIR / "fewshot").rglob("*.npz"))
