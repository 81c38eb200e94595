"""DVC's plot definitions render: `dvc plots show --json` on tables with the pipeline's columns
gives one Vega-Lite spec per plot, and each renders to a PNG (vl-convert) without error,
faceted per method or dataset with the weights in every panel title."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tables(root: Path, weights: str = "random") -> None:
    import pandas as pd

    a, g = root / "plots/alignment/esc50", root / "plots/geometry"
    a.mkdir(parents=True)
    g.mkdir(parents=True)
    rows = [dict(method=m, fold=f, epoch=e, train_loss=1 / (e + 1), val_loss=1 / (e + 1), val_acc=0.5 + 0.05 * e,
                 panel=f"{m} ({weights} weights)") for m in ("residual_fine", "linear") for f in ("fold1", "fold2")
            for e in range(4)]
    pd.DataFrame(rows).to_csv(a / "learning.csv", index=False)
    pd.DataFrame([dict(method=m, fold=f, label=f"{m} · {f}", accuracy=0.5, top5=0.9, params=3,
                       panel=f"esc50 ({weights} weights)") for m in ("zeroshot", "linear") for f in ("fold1", "fold2")]
                 ).to_csv(a / "folds.csv", index=False)
    pd.DataFrame([dict(method=m, cls=c, recall=0.5, panel=f"{m} ({weights} weights)") for m in ("zeroshot", "linear")
                  for c in ("dog", "rain")]).to_csv(a / "recall.csv", index=False)
    pd.DataFrame([dict(dataset="esc50", regime=r, stage=s, d_PCA99_mean=10 + s, TwoNN_mean=5 + s,
                       panel=f"esc50 ({weights} weights)") for r in ("pre", "post") for s in range(4)]
                 ).to_csv(g / "layers.csv", index=False)
    pd.DataFrame([dict(dataset="esc50", regime=r, depth=d, linear_nonlinear_ratio=1 + d / 10,
                       panel=f"esc50 ({weights} weights)") for r in ("pre", "post") for d in range(12)]
                 ).to_csv(g / "blocks.csv", index=False)
    pd.DataFrame([dict(dataset="esc50", regime=r, stage=h % 4, block=0, head=h, pca99=h, fisher=h / 10,
                       panel=f"esc50 ({weights} weights)") for r in ("pre", "post") for h in range(8)]
                 ).to_csv(g / "heads.csv", index=False)


def test_every_data_plot_renders(tmp_path):
    vlc = pytest.importorskip("vl_convert")
    pytest.importorskip("dvc")
    shutil.copytree(REPO / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--force"], cwd=tmp_path, check=True)
    shutil.copytree(REPO / ".dvc" / "plots", tmp_path / ".dvc" / "plots", dirs_exist_ok=True)
    _tables(tmp_path)
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    specs = {name: item["content"] for name, items in shown["data"].items() for item in items if item["type"] == "vega"}
    expected = {"geometry_layers_d_pca99", "geometry_layers_twonn", "geometry_blocks_ratio", "geometry_heads_fisher",
                "plots/alignment/esc50/folds.csv", "plots/alignment/esc50/learning.csv", "plots/alignment/esc50/recall.csv"}
    assert expected <= set(specs)
    for name, spec in specs.items():
        text = json.dumps(spec)
        assert "(random weights)" in text, f"{name}: no panel names the weights"
        assert spec.get("facet"), f"{name}: not split into panels"
        png = vlc.vegalite_to_png(text, scale=1)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    learning = specs["plots/alignment/esc50/learning.csv"]
    assert learning["facet"]["field"] == "panel" and learning["spec"]["encoding"]["color"]["field"] == "fold"
    layers = specs["geometry_layers_d_pca99"]
    assert layers["spec"]["encoding"]["x"]["type"] == "ordinal" and layers["spec"]["encoding"]["color"]["field"] == "regime"
