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


def main(argv: list[str] | None = None) -> None:
    """`residual-audio [<stage> [<dataset>]] [--help]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return
    name, rest = argv[0], argv[1:]
    if name not in STAGES:
        sys.exit(f"residual-audio: unknown stage {name!r}; stages: {', '.join(STAGES)}")
    run_stage(name, stage_functions()[name], rest)


if __name__ == "__main__":
    main()
