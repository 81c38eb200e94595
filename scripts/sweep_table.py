"""Accuracy per `inject_layers` configuration and method, from DVC experiments.

After a sweep such as ``dvc exp run --queue -S 'inject_layers=[0],[1],[2],[3],[0,1,2,3]'`` and
``dvc queue start``, this reads ``dvc exp show --json`` (every experiment of the workspace's
commit) and writes ``plots/sweep_inject_layers.csv`` (one row per experiment and
method: inject_layers, top-1 mean and std over folds, trainable parameters) and a bar chart
``plots/sweep_inject_layers.png``.

Run: python scripts/sweep_table.py [--json exp_show.json] [--methods residual_fine residual_identity]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

OUT = Path("plots")  # not plots/alignment/: the compare stage reads that folder


def runs(tree) -> list[dict]:
    """Every run in `dvc exp show --json` output: {name, params, metrics} (tolerant of the nesting)."""
    found = []

    def walk(node, name=None):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and "params" in data and "metrics" in data:
                found.append({"name": node.get("name") or name or data.get("rev") or node.get("rev"),
                              "params": data.get("params") or {}, "metrics": data.get("metrics") or {}})
            for key, value in node.items():
                if key != "data":
                    walk(value, node.get("name", name))
        elif isinstance(node, list):
            for value in node:
                walk(value, name)

    walk(tree)
    return found


def table(tree, methods=None) -> pd.DataFrame:
    rows = []
    for run in runs(tree):
        params = (run["params"].get("params.yaml") or {}).get("data") or {}
        layers = params.get("inject_layers")
        for path, block in run["metrics"].items():
            parts = Path(path).parts  # metrics/<dataset>/accuracy/<method>.json
            if len(parts) != 4 or parts[0] != "metrics" or parts[2] != "accuracy" or not path.endswith(".json"):
                continue
            dataset, method = parts[1], Path(path).stem
            numbers = (block or {}).get("data") or {}
            if "accuracy" not in numbers or (methods and method not in methods):
                continue
            rows.append(dict(experiment=run["name"], dataset=dataset, inject_layers=json.dumps(layers), method=method,
                             accuracy=numbers["accuracy"], std=numbers["std"], params=numbers.get("params"),
                             weights=numbers.get("weights")))
    return pd.DataFrame(rows).drop_duplicates(["experiment", "dataset", "method"])


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wide = frame.pivot_table(index="inject_layers", columns="method", values="accuracy", aggfunc="mean")
    ax = wide.plot.bar(figsize=(8, 4), rot=0)
    weights = ", ".join(sorted(set(frame.weights.dropna())))
    ax.set(xlabel="inject_layers", ylabel="top-1 accuracy (mean over folds)",
           title=f"Accuracy per reweighted-stage configuration ({weights} weights)")
    ax.legend(fontsize=7)
    plt.tight_layout()
    plt.savefig(path, dpi=110)
    plt.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="saved `dvc exp show --json` output (default: run it)")
    parser.add_argument("--methods", nargs="*", help="methods to keep (default: all)")
    args = parser.parse_args()
    text = args.json.read_text() if args.json else subprocess.run(
        ["dvc", "exp", "show", "--json"], check=True, capture_output=True, text=True).stdout
    frame = table(json.loads(text), args.methods)
    if frame.empty:
        sys.exit("sweep_table: no experiment with metrics found")
    OUT.mkdir(parents=True, exist_ok=True)
    frame.to_csv(OUT / "sweep_inject_layers.csv", index=False, float_format="%.6g")
    plot(frame, OUT / "sweep_inject_layers.png")
    print(frame.pivot_table(index="inject_layers", columns="method", values="accuracy").to_string(float_format="%.3f"))


if __name__ == "__main__":
    main()
