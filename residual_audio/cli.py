"""One command line to list, explain and run the pipeline's stages.

`python -m residual_audio` (or `residual-audio`) lists the stages; `residual-audio <stage>
--help` prints what a stage reads, writes and which params it uses, touching nothing;
`residual-audio <stage> [<dataset>]` runs it exactly as `dvc repro` does (DVC calls
`python stages/<stage>.py`, which runs the same function). Per-dataset stages take the dataset
name, one of `datasets` in params.yaml.
"""

from __future__ import annotations

import sys

from .core.pipeline import STAGES, overview
from .core.runner import run_stage


def stage_functions() -> dict:
    """Each stage's function, `run(params[, dataset])` (imported when a stage is run, not for help)."""
    from .stages import (
        ablation,
        compare,
        download,
        evaluate,
        extract,
        fewshot,
        geometry,
        model,
        preprocess,
        text,
        train,
    )

    return {m.__name__.rsplit(".", 1)[1]: m.run for m in (model, download, preprocess, extract, text, train, evaluate,
                                                            compare, fewshot, ablation, geometry)}


TOOLS = {"export": "refit a method on every labelled clip of a dataset into one file (safetensors + JSON)",
         "predict": "label audio files with an exported method, on the model it was made from"}


def _export(argv: list[str]) -> None:
    import argparse

    from .core.runner import execute

    parser = argparse.ArgumentParser(prog="residual-audio export", description=TOOLS["export"] + ".")
    parser.add_argument("dataset", help="one of `datasets`, with its heads store and text side built")
    parser.add_argument("method", help="a registered method that predicts from the stored units")
    parser.add_argument("-o", "--out", help="the file to write (default: exports/<dataset>-<method>.safetensors)")
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    args = parser.parse_args(argv)

    def run(params):
        from .adapted.export import export

        path, _ = export(params, args.dataset, args.method, args.out)
        return path

    execute("export", run, args.params)


def _predict(argv: list[str]) -> None:
    import argparse

    from .core.runner import execute

    parser = argparse.ArgumentParser(prog="residual-audio predict", description=TOOLS["predict"] + ".")
    parser.add_argument("bundle", help="a file `residual-audio export` wrote")
    parser.add_argument("audio", nargs="+", help="audio files")
    parser.add_argument("-o", "--out", help="write a CSV (path, label, score, top, p(<class>)...) instead of printing")
    parser.add_argument("--checkpoint", help="the model (default: model.checkpoint as the model stage placed it)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward (default 8)")
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    args = parser.parse_args(argv)

    def run(params):
        import pandas as pd

        from .adapted.predict import predict, table
        from .core.io import atomic_path
        from .core.params import get
        from .data.paths import MODELS_DIR
        from .models.checkpoints import resolve_checkpoint

        checkpoint = args.checkpoint or resolve_checkpoint(get(params, "model.checkpoint"), MODELS_DIR)
        classes, logits = predict(args.bundle, args.audio, checkpoint, args.batch_size)
        rows = pd.DataFrame(table(args.audio, classes, logits))
        if args.out:
            with atomic_path(args.out) as tmp:
                rows.to_csv(tmp, index=False, float_format="%.6g")
            return args.out
        print(rows[["path", "label", "score", "top"]].to_string(index=False))
        return None

    execute("predict", run, args.params)


def main(argv: list[str] | None = None) -> None:
    """`residual-audio [<stage> [<dataset>]] [--help]`, `residual-audio export|predict ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        print("\nUse the adapted model (not DVC stages; `residual-audio <command> --help`):")
        for name, text in TOOLS.items():
            print(f"  {name:<10}  {text}")
        return
    name, rest = argv[0], argv[1:]
    if name == "export":
        return _export(rest)
    if name == "predict":
        return _predict(rest)
    if name not in STAGES:
        sys.exit(f"residual-audio: unknown stage {name!r}; stages: {', '.join(STAGES)}")
    run_stage(name, stage_functions()[name], rest)


if __name__ == "__main__":
    main()
