"""Where the stages' stores live, relative to the project folder (where `dvc repro` runs them);
defined once, for every stage that reads or writes them."""

from pathlib import Path

MODELS_DIR = Path("data/models")  # model: the checkpoint (file or ClapModel folder), tokenizer files, manifest
RAW_DIR = Path("data/raw")  # download: data/raw/<dataset>/
MEL_DIR = Path("data/mel")  # preprocess: <dataset>.zarr and .csv; read by methods that run the encoder
HEADS_DIR = Path("data/heads")  # extract: <dataset>.zarr
TEXT_DIR = Path("data/text")  # text: <dataset>.npz
RESULTS_DIR = Path("data/results")  # train: <dataset>/<method>.npz
METRICS_DIR = Path("metrics")  # evaluate, fewshot, ablation, geometry, compare: the numbers DVC shows
PLOTS_DIR = Path("plots")  # their tables and figures: alignment/, fewshot/, ablation/, geometry/, comparison.csv
