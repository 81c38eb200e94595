"""The `ablation` stage: mean (and optionally total-effect) ablation of every head of one dataset -> plots/ablation/<dataset>.csv, metrics/<dataset>/ablation.json."""

from __future__ import annotations

from dataclasses import dataclass

from ..analysis.ablation import direct_total_correlation, fisher_correlation, fitting_fisher, mean_ablation, total_ablation
from ..core.io import atomic_path, write_json
from ..core.params import get
from ..data.paths import HEADS_DIR, METRICS_DIR, PLOTS_DIR
from ..data.units import parse_unit
from ..evaluation.protocol import Split
from ..evaluation.tasks import task_of
from ..methods.residual.inject import read_head_outputs
from .common import FoldParams, _encoder, _mel_store, _store, _weights, result_environment


@dataclass(frozen=True)
class AblationParams:
    total: bool
    stages: tuple
    device: str
    batch_size: int

    @classmethod
    def read(cls, params: dict) -> "AblationParams":
        return cls(get(params, "ablation.total"), tuple(sorted(get(params, "ablation.stages"))),
                   get(params, "ablation.device"), get(params, "ablation.batch_size"))


def _undefined(drops, fisher: dict) -> list[str]:
    """Why a number of ablation.json is empty or says little, in words (none when all is defined)."""
    notes = []
    if len(drops) and float(drops.abs().max()) == 0.0:
        notes.append("every head's mean-ablation drop is 0: no single head changes a test prediction, so the "
                     "correlation with the Fisher score is undefined (common with random weights or few clips)")
    if not fisher:
        notes.append("'fisher' is empty: the drops or the Fisher scores (from each fold's training clips) are constant "
                     "over the heads, undefined (a class with one training clip), or fewer than 3 heads were matched, "
                     "so no rank correlation is defined")
    return notes


def run(params: dict, dataset: str) -> None:
    """Mean-ablation drops per head/block → plots/ablation/<dataset>.csv, metrics/<dataset>/ablation.json.

    With `ablation.total: true` the heads of `ablation.stages` are also ablated inside the
    forward pass (total effect, columns total_*), which needs the mel store and the model."""

    p = FoldParams.read(params)
    q = AblationParams.read(params)
    variant = get(params, "model.variant")  # the encoder, with ablation.total
    tables, metrics = {}, {}
    for ds in [dataset]:
        store = _store(ds)
        task = task_of(ds)
        text = task.text_side(ds, store)
        splits = task.splits(store, p, warn=False)  # `train` reports the folds
        table = mean_ablation(store, splits, text)
        fisher = fitting_fisher(HEADS_DIR / f"{ds}.zarr", splits)  # from each fold's training clips only
        weights = _weights(store, text)
        heads, blocks = table[table.kind == "head"], table[table.kind == "block"]
        metrics[ds] = {
            "weights": weights,
            "head_drop": {"max": float(heads["drop"].max()), "mean": float(heads["drop"].mean()),
                          "top": heads.nlargest(5, "drop")["unit"].tolist()},
            "block_drop": {"max": float(blocks["drop"].max()), "top": blocks.nlargest(3, "drop")["unit"].tolist()},
            "fisher": fisher_correlation(table, fisher, ds),
        }
        metrics[ds]["environment"] = result_environment(store)  # direct ablation runs on the CPU
        why = _undefined(heads["drop"], metrics[ds]["fisher"])
        if why:
            metrics[ds]["notes"] = why
        if q.total:
            table, model_weights, device = _total_ablation(ds, variant, q, splits, text, table)
            metrics[ds]["environment"] = result_environment(store, device)
            if model_weights == "random":
                metrics[ds]["weights"] = "random"
            total = table[table.kind == "head"].dropna(subset=["total_drop"])
            metrics[ds]["total"] = {
                "stages": list(q.stages),
                "head_drop": {"max": float(total["total_drop"].max()), "mean": float(total["total_drop"].mean()),
                              "top": total.nlargest(5, "total_drop")["unit"].tolist()},
                "direct_vs_total": direct_total_correlation(table),
                "fisher": fisher_correlation(table, fisher, ds, column="total_drop"),
            }
        tables[ds] = table
    for ds, table in tables.items():
        with atomic_path(PLOTS_DIR / "ablation" / f"{ds}.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
    for ds, block in metrics.items():
        write_json(METRICS_DIR / ds / "ablation.json", block)


def _total_ablation(ds: str, variant: str | None, q: AblationParams, splits: list[Split], text, table):
    """Total-effect columns added to the direct-ablation table (NaN for blocks and heads not ablated)."""
    heads = read_head_outputs(HEADS_DIR / f"{ds}.zarr")
    mel_store = _mel_store(ds, heads)
    hooked, device = _encoder(ds, mel_store, variant, q.device, "ablation.device")
    chosen = [u for u, name in enumerate(heads.head_names) if parse_unit(name)["stage"] in q.stages]
    total = total_ablation(hooked, mel_store["mel"], heads.label, heads.pre, heads.head_names, splits, text,
                           q.batch_size, device, heads=chosen)
    merged = table.merge(total[["stage", "block", "head", "kind", "total_accuracy", "total_drop", "total_drop_std"]],
                         on=["kind", "stage", "block", "head"], how="left")
    return merged, getattr(hooked.model, "weights", ""), str(device)
