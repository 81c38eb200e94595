"""Geometry stage on small synthetic heads stores whose per-head geometry is known."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import stats
from conftest import checked
from synthetic_heads import write_heads_store

from residual_audio.analysis import figures as geometry_figures
from residual_audio.analysis import geometry, intrinsic
from residual_audio.core.params import ParamError
from residual_audio.stages import geometry as geometry_stage


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    truth_a = write_heads_store(root / "esc50.zarr", dataset="esc50", n_clips=240, duplicate_clips=4, seed=0)
    truth_b = write_heads_store(root / "tinysol.zarr", dataset="tinysol", n_clips=200, seed=1)
    return root, truth_a, truth_b


@pytest.fixture(scope="module")
def run_outputs(stores, tmp_path_factory):
    """One full run over both stores, recording every figure title."""
    root, *_ = stores
    out = tmp_path_factory.mktemp("out")
    titles = {}
    save = geometry_figures._save

    def recording_save(fig, path):
        titles[path.name if path.parent.name == "figures" else f"{path.parent.name}/{path.name}"] = fig._suptitle.get_text()
        save(fig, path)

    geometry_figures._save = recording_save
    try:
        with pytest.warns(intrinsic.DuplicatePointsWarning, match="esc50.zarr"):
            summary = geometry.run([root / "esc50.zarr", root / "tinysol.zarr"], out / "plots", out / "metrics.json")
    finally:
        geometry_figures._save = save
    return out, summary, titles


def test_per_head_dimensions_match_the_construction(stores):
    root, truth, _ = stores
    store = geometry.open_store(root / "esc50.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", intrinsic.DuplicatePointsWarning)
        for regime in ("pre", "post"):
            table = geometry.analyse_regime(store, regime).table
            assert table[["stage", "block", "head"]].to_numpy().tolist() == truth["rows"]
            plain = [tuple(r) not in truth["discriminative"] for r in truth["rows"]]
            expected = np.array([truth["stage_dims"][s] for s, _, _ in truth["rows"]])
            np.testing.assert_array_equal(table["pca99"][plain], expected[plain])
            np.testing.assert_allclose(table["twonn"][plain], expected[plain], rtol=0.3)
            np.testing.assert_allclose(table["mle"][plain], expected[plain], rtol=0.3)
            assert (table["n_duplicates"] == 4).all()


def test_fisher_separates_the_discriminative_head(stores):
    root, truth, _ = stores
    store = geometry.open_store(root / "esc50.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", intrinsic.DuplicatePointsWarning)
        table = geometry.analyse_regime(store, "post").table
    special = [tuple(r) in truth["discriminative"] for r in truth["rows"]]
    assert table["fisher"][special].min() > 5.0
    assert table["fisher"][~np.array(special)].max() < 0.1


def test_fisher_score_and_class_norms_on_a_hand_computed_example():
    # class 0 at x=-2 (points -3, -1), class 1 at x=+2 (points 1, 3): S_B = 4·4 = 16, S_W = 4·1 = 4
    x = np.array([[[-3.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [3.0, 0.0]]])
    labels = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(geometry.fisher_scores(x, labels), [4.0])
    np.testing.assert_allclose(geometry.class_mean_norms(x, labels, 3), [[2.0, 2.0, np.nan]])
    with pytest.raises(ValueError, match="2 classes"):
        geometry.fisher_scores(x, np.zeros(4, int))


def _toy_table(rng) -> pd.DataFrame:
    rows = []
    for stage, n_heads in enumerate((6, 6, 8)):
        for h in range(n_heads):
            rows.append({"dataset": "toy", "regime": "pre", "stage": stage, "block": h // 3, "head": h % 3,
                         "depth": 3 * stage + h // 3, "pca99": 5.0 + 4.0 * stage + rng.normal(0, 0.5),
                         "twonn": rng.normal(3.0, 0.5)})  # fmt: skip
    return pd.DataFrame(rows)


def test_stage_statistics_detect_a_real_trend_and_not_a_null_one():
    table = _toy_table(np.random.default_rng(0))
    out = geometry.stage_statistics(table, metrics=["pca99", "twonn"])
    row = lambda m, t: out[(out.metric == m) & (out.test == t)]  # noqa: E731
    assert row("pca99", "anova")["pvalue"].item() < 1e-10
    assert row("twonn", "anova")["pvalue"].item() > 0.01
    assert row("pca99", "tukey_hsd")["reject"].all()
    assert row("pca99", "spearman_depth")["statistic"].item() > 0.9
    welch = row("pca99", "welch_t_bonferroni").set_index(["group_a", "group_b"])
    a = table.loc[table.stage == 0, "pca99"].to_numpy()
    b = table.loc[table.stage == 2, "pca99"].to_numpy()
    expected = stats.ttest_ind(a, b, equal_var=False)
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    got = welch.loc[("stage0", "stage2")]
    assert got["statistic"] == pytest.approx(expected.statistic)
    assert got["p_adjusted"] == pytest.approx(min(1.0, 3 * expected.pvalue))  # three stage pairs
    assert got["effect"] == pytest.approx((a.mean() - b.mean()) / pooled)
    assert got["effect"] < -5
    # every pairwise effect carries the sign of a − b: Tukey's mean difference too
    tukey = row("pca99", "tukey_hsd").set_index(["group_a", "group_b"]).loc[("stage0", "stage2")]
    assert tukey["effect"] == pytest.approx(a.mean() - b.mean())
    assert np.sign(tukey["effect"]) == np.sign(got["effect"]) == np.sign(got["statistic"])


def test_statistics_report_constant_metrics_as_undefined():
    table = _toy_table(np.random.default_rng(1)).assign(pca99=7.0)
    out = geometry.stage_statistics(table, metrics=["pca99"])
    assert out["pvalue"].isna().all() and set(out["test"]) == {"anova", "welch_t_bonferroni", "spearman_depth"}


def test_layer_and_block_tables_aggregate_over_heads():
    table = _toy_table(np.random.default_rng(2))
    for metric in geometry.METRICS:
        if metric not in table:
            table[metric] = 1.0
    table["linear_nonlinear_ratio"] = table["pca99"] / table["twonn"]
    layers = geometry.layer_table(table)
    stage1 = table[table.stage == 1]
    got = layers[layers.stage == 1].iloc[0]
    assert got["n_heads"] == 6
    assert got["d_PCA99_mean"] == pytest.approx(stage1["pca99"].mean())
    assert got["d_PCA99_std"] == pytest.approx(stage1["pca99"].std(ddof=1))
    blocks = geometry.block_table(table)
    assert len(blocks) == 2 + 2 + 3
    first = blocks[(blocks.stage == 2) & (blocks.block == 2)].iloc[0]
    heads = table[(table.stage == 2) & (table.block == 2)]
    assert first["n_heads"] == 2
    assert first["linear_nonlinear_ratio"] == pytest.approx((heads.pca99 / heads.twonn).mean())


def test_specialization_groups_heads_with_the_same_spectrum():
    table = pd.DataFrame({"stage": [0, 0, 1, 1], "pca99": [2, 2, 6, 6], "spectral_entropy": [0.7, 0.69, 1.8, 1.79]})
    spectra = [np.array([0.5, 0.5, 0, 0, 0, 0]), np.array([0.52, 0.48, 0, 0, 0, 0]),
               np.full(6, 1 / 6), np.array([0.2, 0.16, 0.16, 0.16, 0.16, 0.16])]  # fmt: skip
    sp = geometry.specialization(geometry.RegimeGeometry(table, spectra, np.ones((4, 2)), ["a", "b"]))
    assert sp.similarity[0, 1] > 0.99 and sp.similarity[0, 2] < 0.6
    assert set(sp.order[:2]) in ({0, 1}, {2, 3})  # Ward keeps each pair together
    assert sp.entropy_rho == pytest.approx(stats.spearmanr([0.7, 0.69, 1.8, 1.79], [2, 2, 6, 6]).statistic)


def test_run_writes_every_table_figure_and_metric(run_outputs, stores):
    out, summary, titles = run_outputs
    heads = pd.read_csv(out / "plots" / "heads.csv")
    assert list(heads.columns) == geometry.HEAD_COLUMNS + ["panel"]
    n_heads = len(stores[1]["rows"])
    assert len(heads) == 2 * 2 * n_heads
    assert set(heads.dataset) == {"esc50", "tinysol"} and set(heads.regime) == {"pre", "post"}
    for name in ("blocks.csv", "layers.csv", "stats.csv", "fingerprints.csv", "class_activation.csv",
                 "cross_dataset.csv", "cross_dataset_heads.csv", "similarity_esc50_pre.csv"):  # fmt: skip
        assert (out / "plots" / name).stat().st_size > 0, name
    layers = pd.read_csv(out / "plots" / "layers.csv")
    assert {"d_PCA90_mean", "d_PCA99_std", "TwoNN_mean", "PR_mean", "EffRank_mean", "EVR1_std"} <= set(layers.columns)
    stats_table = pd.read_csv(out / "plots" / "stats.csv")
    assert {"anova", "tukey_hsd", "welch_t_bonferroni", "spearman_depth"} <= set(stats_table.test)

    full = json.loads((out / "plots" / "summary.json").read_text())
    assert full == json.loads(json.dumps(summary))
    assert full["weights"] == "random"
    assert set(full["datasets"]) == {"esc50", "tinysol"}
    assert full["datasets"]["esc50"]["pre"]["stage0"]["pca99"] == pytest.approx(2.0)
    # DVC's metrics file: the headline means only, per dataset, regime and stage, and the weights flag
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weights"] == "random" and set(metrics) == {"weights", "esc50", "tinysol"}
    assert metrics["esc50"]["pre"]["stage0"] == {"pca99": pytest.approx(2.0), "twonn": full["datasets"]["esc50"]["pre"]["stage0"]["twonn"]}
    leaves = [v for ds in ("esc50", "tinysol") for r in metrics[ds].values() for st in r.values() for v in st.values()]
    assert len(leaves) == 2 * 2 * 4 * 2

    pngs = sorted(p.relative_to(out / "plots" / "figures").as_posix() for p in (out / "plots" / "figures").rglob("*.png"))
    assert len(pngs) == 1 + 2 * 11 and "cross_dataset.png" in pngs
    assert sorted(titles) == pngs
    assert all("weights: random" in t for t in titles.values())


def test_a_failing_run_writes_nothing(stores, tmp_path):
    root, *_ = stores
    broken = tmp_path / "broken.zarr"
    write_heads_store(broken, dataset="broken", n_clips=60)
    group = zarr.open_group(str(broken), mode="a")
    group["heads/post/stage2"][0, 0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", intrinsic.DuplicatePointsWarning)
        with pytest.raises(geometry.StoreError, match="heads/post/stage2.*NaN"):
            geometry.run([root / "tinysol.zarr", broken], tmp_path / "plots", tmp_path / "metrics.json")
    assert not (tmp_path / "plots").exists() and not (tmp_path / "metrics.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken.zarr"]


def test_store_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(geometry.StoreError, match="missing.zarr: heads store not found"):
        geometry.open_store(tmp_path / "missing.zarr")
    path = tmp_path / "s.zarr"
    write_heads_store(path, n_clips=40)
    group = zarr.open_group(str(path), mode="a")
    del group["heads/post/stage1"]
    with pytest.raises(geometry.StoreError, match="'heads/post/stage1' is missing"):
        geometry.open_store(path)
    write_heads_store(path, n_clips=40)
    group = zarr.open_group(str(path), mode="a")
    group.attrs["heads"] = group.attrs["heads"][:-1]
    with pytest.raises(geometry.StoreError, match="'heads/pre' has shape"):
        geometry.open_store(path)
    write_heads_store(path, n_clips=40)
    zarr.open_group(str(path), mode="a").attrs["weights"] = "finetuned"
    with pytest.raises(geometry.StoreError, match="'weights'"):
        geometry.open_store(path)


def test_params_are_validated_with_the_key_named(stores):
    root, *_ = stores
    good = {"datasets": ["esc50"], "geometry": {"regimes": ["pre"], "mle_k": 10, "twonn_discard": 0.1}}
    config = geometry_stage.config_from_params(good, root)
    assert config["store_paths"] == [root / "esc50.zarr"] and config["regimes"] == ["pre"]
    both = geometry_stage.config_from_params({**good, "datasets": ["esc50", "tinysol"]}, root)
    assert both["store_paths"] == [root / "esc50.zarr", root / "tinysol.zarr"]
    bad = [
        ({"datasets": ["esc50", "vocalsound"]}, r"'datasets' names 'vocalsound'.*vocalsound\.zarr"),
        ({"datasets": "tinysol"}, r"'datasets'"),
        ({"datasets": ["tinysol", "tinysol"]}, r"'datasets'.*twice"),
        ({"datasets": ["audioset"]}, r"'datasets'.*audioset"),
        ({"geometry": {"regimes": ["middle"]}}, r"geometry\.regimes.*middle"),
        ({"geometry": {"mle_k": 1}}, r"geometry\.mle_k"),
        ({"datasets": ["esc50", "tinysol"], "geometry": {"mle_k": 199}}, r"geometry\.mle_k.*clips"),
        ({"geometry": {"twonn_discard": 0.7}}, r"geometry\.twonn_discard"),
        ({"geometry": {"duplicate_rtol": 0}}, r"geometry\.duplicate_rtol"),
    ]
    for change, message in bad:
        params = {**good, **change}
        params["geometry"] = {**good["geometry"], **change.get("geometry", {})}
        with pytest.raises(ParamError, match=message):
            checked(geometry_stage.config_from_params, params, root)
    with pytest.raises(ParamError, match="unknown parameter 'other'"):
        checked(geometry_stage.config_from_params, {"other": {}}, root)


def test_stage_entry_point_runs_from_params_yaml(stores, tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    root, *_ = stores
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "heads").symlink_to(root)
    (tmp_path / "params.yaml").write_text("datasets: [tinysol]\ngeometry:\n  regimes: [pre]\n  mle_k: 10\n")
    script = Path(__file__).parents[1] / "stages" / "geometry.py"
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "%|" not in done.stderr  # no progress-bar animation in a log
    (tmp_path / "params.yaml").write_text("datasets: [vocalsound]\ngeometry: {}\n")
    failed = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith("geometry: params: 'datasets' names 'vocalsound'")
    heads = pd.read_csv(tmp_path / "plots" / "geometry" / "heads.csv")
    assert set(heads.regime) == {"pre"} and set(heads.dataset) == {"tinysol"}
    summary = json.loads((tmp_path / "plots" / "geometry" / "summary.json").read_text())
    assert summary["params"]["mle_k"] == 10
    headline = json.loads((tmp_path / "metrics" / "geometry.json").read_text())
    assert set(headline) == {"weights", "tinysol"} and set(headline["tinysol"]) == {"pre"}
    assert set(headline["tinysol"]["pre"]["stage0"]) == {"pca99", "twonn"}
