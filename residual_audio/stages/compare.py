"""The `compare` stage: the method x dataset table from every dataset's results -> metrics/comparison.md, plots/comparison.csv."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..core.io import write_text
from ..data.paths import METRICS_DIR, PLOTS_DIR
from ..evaluation.results import ALIGNMENT_PLOTS, PAIRED_REFERENCES, _csv, comparison_markdown, method_order


def _interval(paired: dict, ref: str) -> dict:
    """diff, ci_low, ci_high of the paired bootstrap against `ref` (None when there is none)."""
    b = (paired.get(f"vs_{ref}") or {}).get("bootstrap") or {}
    lo, hi = b.get("ci95", [None, None])
    return {"diff": b.get("diff"), "ci_low": lo, "ci_high": hi}


def run(params: dict, metrics_dir: Path = METRICS_DIR) -> str:
    """The method × dataset table, a pure function of every listed dataset's plots/alignment/<dataset>/methods/*.json."""
    from ..core.params import dataset_names

    rows = []
    for ds in dataset_names(params):
        directory = ALIGNMENT_PLOTS / ds / "methods"
        files = sorted(directory.glob("*.json")) if directory.is_dir() else []
        if not files:
            raise FileNotFoundError(f"{directory}: no per-method metrics (run the 'evaluate' stage for {ds})")
        for path in files:
            block = json.loads(path.read_text())
            paired = block.get("paired", {})
            rows.append(dict(method=path.stem, dataset=ds, accuracy=block["accuracy"]["mean"], std=block["accuracy"]["std"],
                             top5=block["top5"]["mean"], params=block["params"], weights=block["weights"],
                             tuning=block.get("tuning", "published"),
                             **{f"p_{ref}": (paired.get(f"vs_{ref}") or {}).get("p") for ref in PAIRED_REFERENCES},
                             **{f"{k}_{ref}": v for ref in PAIRED_REFERENCES for k, v in _interval(paired, ref).items()}))
    table = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(method_order(table.method.unique()))}
    table = table.sort_values(["dataset", "method"], key=lambda c: c.map(order) if c.name == "method" else c,
                              kind="stable").reset_index(drop=True)
    _csv(PLOTS_DIR / "comparison.csv", table)
    text = comparison_markdown(table)
    write_text(metrics_dir / "comparison.md", text)
    print(text, end="")
    return str(metrics_dir / "comparison.md")


