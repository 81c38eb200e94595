"""One reader per store: every stage reads the heads store through `data.heads.HeadsStore` and the
mel store through `data.mel.open_mel_store`, so each check below holds for every stage at once.

The broken stores are made with zarr directly (a value overwritten in place keeps the chunk
record valid, so only the reader's own checks can catch it)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from residual_audio.data.heads import HeadsStore
from residual_audio.data.stores import StoreError, seal
from residual_audio.data.synthetic import synthetic_world, write_store
from residual_audio.data.units import read_units


@pytest.fixture()
def heads(tmp_path):
    arrays, attrs, _, _ = synthetic_world(n_per_class=4, n_classes=3, n_folds=2, seed=0)
    return write_store(tmp_path / "heads.zarr", arrays, attrs)


def test_every_reader_is_the_one_reader():
    """The three views of the heads store and the mel store's users go through one opener each."""
    import inspect

    from residual_audio.analysis import geometry
    from residual_audio.data import units
    from residual_audio.methods.residual import inject
    from residual_audio.stages import common, extract

    for view in (units.read_units, inject.read_head_outputs, geometry.open_store):
        source = inspect.getsource(view)
        assert "HeadsStore.open(" in source and "zarr.open" not in source, view.__qualname__
    for module in (common, extract):
        assert "open_mel_store" in vars(module) and vars(module)["open_mel_store"].__module__ == "residual_audio.data.mel"


@pytest.mark.parametrize("key", ["direct/units", "embedding", "direct/const"])
def test_nan_in_the_direct_decomposition_is_refused_naming_the_array(heads, key):
    g = zarr.open_group(str(heads), mode="r+")
    values = g[key][:]
    values.flat[3] = np.nan
    g[key][:] = values  # same chunks: the seal still holds
    with pytest.raises(StoreError, match=rf"heads.zarr: array '{key}' holds NaN or inf"):
        read_units(heads, check_sum=False)


def test_a_label_array_of_the_wrong_length_is_one_line(heads):
    g = zarr.open_group(str(heads), mode="r+")
    n = g["label"].shape[0]
    del g["label"]
    g.create_array("label", data=np.zeros(n - 1, dtype=np.int64))
    seal(g)
    with pytest.raises(StoreError, match=rf"one row per clip.*label \({n - 1},\), fold \({n},\)"):
        HeadsStore.open(heads)


def test_labels_outside_the_classes_are_refused(heads):
    g = zarr.open_group(str(heads), mode="r+")
    g.attrs["classes"] = list(g.attrs["classes"])[:1]
    with pytest.raises(StoreError, match="labels outside 0..0"):
        read_units(heads)


def test_mel_and_heads_stores_with_other_classes_are_refused(tmp_path, monkeypatch):
    """A hand-edited `classes` attribute would swap every label's meaning: the reader that pairs the
    two stores (methods that run the encoder, the total-effect ablation) refuses it."""
    from residual_audio.data.mel import MelStoreError
    from residual_audio.methods.residual.inject import read_head_outputs
    from residual_audio.stages import common

    arrays, attrs, _, _ = synthetic_world(n_per_class=2, n_classes=3, n_folds=2, seed=1)
    n = len(arrays["label"])
    arrays["heads/pre"] = np.zeros((n, len(attrs["heads"]), 24), np.float32)
    monkeypatch.chdir(tmp_path)
    write_store(tmp_path / "data/heads/syn.zarr", arrays, attrs)
    mel = zarr.open_group(str(tmp_path / "data/mel/syn.zarr"), mode="w", zarr_format=3)
    mel.create_array("mel", data=np.zeros((n, 1001, 64), np.float32))
    for key in ("label", "fold"):
        mel.create_array(key, data=arrays[key])
    mel.create_array("clip_id", data=arrays["clip_id"])
    mel.attrs.update(classes=list(reversed(attrs["classes"])), mel_sha256="x",
                     audio={"clip_samples": 480000, "hop_size": 480, "mel_bins": 64})
    seal(mel)
    with pytest.raises(MelStoreError, match="attribute 'classes' differs"):
        common._mel_store("syn", read_head_outputs("data/heads/syn.zarr"))
    mel.attrs["classes"] = list(attrs["classes"])
    assert common._mel_store("syn", read_head_outputs("data/heads/syn.zarr")) is not None


# --------------------------------------------------------------------------- results and text files


def _results(tmp_path, logits=None, labels=None):
    """A results file written with numpy directly, in the layout `train` writes."""
    import json

    n, c = 4, 3
    arrays = {"method": np.array("m"), "labels": np.array([0, 1, 2, 0]) if labels is None else labels,
              "classes": np.array(["a", "b", "c"]), "folds": np.array(["fold1"]),
              "logits": np.zeros((n, c), np.float32) if logits is None else logits,
              "fold_of": np.zeros(n, np.int64), "params": np.array([0]), "hyper": np.array("{}"),
              "meta": np.array("{}"), "fold1/history": np.array(json.dumps([]))}
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    return path


def test_results_with_nan_logits_are_refused(tmp_path):
    from residual_audio.evaluation.results import ResultsError, load_results

    assert load_results(_results(tmp_path))["logits"].shape == (4, 3)
    logits = np.zeros((4, 3), np.float32)
    logits[2, 1] = np.nan
    with pytest.raises(ResultsError, match=r"m.npz: array 'logits' holds NaN or inf"):
        load_results(_results(tmp_path, logits=logits))


def test_results_with_labels_of_the_wrong_length_are_refused(tmp_path):
    from residual_audio.evaluation.results import ResultsError, load_results

    with pytest.raises(ResultsError, match="do not agree with 3 clips"):
        load_results(_results(tmp_path, labels=np.array([0, 1, 2])))


@pytest.mark.parametrize("damage", ["truncated", "pickle", "text"])
def test_unreadable_results_and_text_files_are_one_line(tmp_path, damage):
    from residual_audio.evaluation.results import ResultsError, load_results
    from residual_audio.evaluation.zeroshot import TextCacheError, load_text_side

    path = _results(tmp_path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "pickle":
        np.savez(path, logits=np.array([{"a": 1}], dtype=object))
    else:
        path.write_text("not an npz")
    with pytest.raises(ResultsError, match=r"m.npz: not a readable .npz file"):
        load_results(path)
    with pytest.raises(TextCacheError, match=r"m.npz: not a readable .npz file"):
        load_text_side(path)


def test_a_text_side_with_nan_class_vectors_is_refused(tmp_path):
    from residual_audio.evaluation.zeroshot import TextCacheError, load_text_side, save_text_side

    _, _, text, _ = synthetic_world(n_per_class=2, n_classes=3, n_folds=2, seed=0)
    save_text_side(tmp_path / "t.npz", text)
    assert load_text_side(tmp_path / "t.npz", text.classes).classes == text.classes
    with np.load(tmp_path / "t.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["class_embeddings"][1, 0] = np.inf
    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(TextCacheError, match="'class_embeddings' holds NaN or inf"):
        load_text_side(tmp_path / "t.npz")
