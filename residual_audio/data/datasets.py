"""Dataset registry: each entry turns a local root directory into a clip list.

The root is what the download stage leaves in ``data/raw/<dataset>/`` (an unpacked
official archive, a copied directory, or both), so every reader first looks for its
dataset's own landmark file inside the root rather than assuming one fixed depth.
Every reader checks that each listed audio file exists, so a broken copy fails here,
naming the file, instead of halfway through feature extraction.
"""

from __future__ import annotations

import csv
import inspect
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


class DatasetError(ValueError):
    """The dataset root, its metadata or one of its audio files is missing or malformed."""


@dataclass(frozen=True)
class Clip:
    clip_id: str  # unique within the dataset
    path: Path  # absolute path to the audio file
    label: int  # class index into the dataset's class list
    label_name: str
    fold: int  # official fold; 0 where the dataset has none


@dataclass(frozen=True)
class Dataset:
    name: str
    reader: Callable[..., tuple[list[Clip], list[str]]]
    description: str
    sources: tuple = ()  # its official sources, fetched when `data.<name>.source` is null
    task: str = "classification"  # its entry in evaluation.tasks.TASKS: folds, text side and scoring


# --------------------------------------------------------------------------- helpers


def _find(root: Path, relative: str, max_depth: int = 3) -> Path:
    """The directory under `root` (itself or up to `max_depth` levels down) that holds `relative`.

    Official archives unpack into a top folder (``ESC-50-master/``) and users may copy
    either the top folder or its contents; both must work.
    """
    frontier = [root]
    for _ in range(max_depth + 1):
        hits = sorted(d for d in frontier if (d / relative).exists())
        if hits:
            if len(hits) > 1:
                raise DatasetError(f"{root}: several copies of {relative} found ({', '.join(map(str, hits))})")
            return hits[0]
        frontier = sorted(c for d in frontier for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    raise DatasetError(f"{root / relative}: not found (looked in {root} and {max_depth} levels below)")


def _check_root(root: Path) -> Path:
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root directory not found")
    return root


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(columns)})")
            reader.fieldnames = columns
            rows = []
            for row in reader:
                # DictReader files surplus fields under None and fills missing ones with None: both are
                # a row that does not fit the header (an unquoted comma, a lost field), never ignored
                if None in row or any(v is None for v in row.values()):
                    found = len(columns) + len(row.get(None) or []) - sum(v is None for v in row.values())
                    raise DatasetError(f"{path}, line {reader.line_num}: {found} fields where the header has "
                                       f"{len(columns)} (quote a value that holds a comma)")
                rows.append({k: v.strip() for k, v in row.items()})
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({exc})") from None


def _int(value: str, path: Path, line: int, column: str) -> int:
    """A whole number >= 0 ('3' or '3.0'); a fraction or a negative number is an error, never rounded."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (number.is_integer() and number >= 0):
        raise DatasetError(f"{path}, line {line}: column '{column}' must be a whole number >= 0, not {value!r}")
    return int(number)


def _audio(path: Path, source: Path) -> Path:
    if not path.is_file():
        raise DatasetError(f"{path}: audio file not found (listed in {source})")
    return path


def _finish(name: str, root: Path, clips: list[Clip], classes: list[str]) -> tuple[list[Clip], list[str]]:
    if not clips:
        raise DatasetError(f"{root}: no {name} clips found")
    seen: dict[str, Path] = {}
    for clip in clips:
        if clip.clip_id in seen:
            raise DatasetError(f"{root}: clip id '{clip.clip_id}' occurs twice ({seen[clip.clip_id]}, {clip.path})")
        seen[clip.clip_id] = clip.path
    return sorted(clips, key=lambda c: c.clip_id), classes


# --------------------------------------------------------------------------- ESC-50


def read_esc50(root: Path) -> tuple[list[Clip], list[str]]:
    """ESC-50: ``audio/<filename>`` + ``meta/esc50.csv``; label = target, folds 1-5 as in the csv.

    The class list always has all classes seen in the csv, ordered by target, so a copy
    holding only some folds (e.g. fold 4 alone) keeps the official class indices.
    """
    root = _check_root(root)
    base = _find(root, "meta/esc50.csv")
    meta = base / "meta" / "esc50.csv"
    rows = _read_csv(meta, ("filename", "fold", "target", "category"))
    names: dict[int, str] = {}
    clips = []
    for line, row in enumerate(rows, start=2):
        target = _int(row["target"], meta, line, "target")
        category = row["category"]
        if names.setdefault(target, category) != category:
            raise DatasetError(f"{meta}, line {line}: target {target} is both '{names[target]}' and '{category}'")
        path = _audio(base / "audio" / row["filename"], meta)
        clips.append(Clip(Path(row["filename"]).stem, path, target, category, _int(row["fold"], meta, line, "fold")))
    if names and sorted(names) != list(range(len(names))):
        raise DatasetError(f"{meta}: targets are not 0..{len(names) - 1} (found {sorted(names)})")
    return _finish("esc50", root, clips, [names[t] for t in sorted(names)])


# --------------------------------------------------------------------------- TinySOL

TINYSOL_METADATA = "TinySOL_metadata.csv"


def read_tinysol(root: Path) -> tuple[list[Clip], list[str]]:
    """TinySOL: ``TinySOL_metadata.csv`` (Path, Fold, Instrument ...) + audio under ``TinySOL/``.

    Labels are the 14 instruments (full English names, sorted). The official folds are
    numbered 0-4 in the csv; they are stored as 1-5 so that 0 keeps meaning "no fold".
    """
    root = _check_root(root)
    meta = _find(root, TINYSOL_METADATA) / TINYSOL_METADATA
    rows = _read_csv(meta, ("Path", "Fold", "Instrument (in full)"))
    audio_dirs = [meta.parent / "TinySOL", meta.parent / "audio" / "TinySOL"]
    audio_dir = next((d for d in audio_dirs if d.is_dir()), None)
    if audio_dir is None:
        audio_dir = _find(root, "TinySOL") / "TinySOL"
    classes = sorted({row["Instrument (in full)"] for row in rows})
    index = {name: i for i, name in enumerate(classes)}
    clips = []
    for line, row in enumerate(rows, start=2):
        relative = Path(row["Path"])
        if relative.parts and relative.parts[0] == "TinySOL":
            relative = Path(*relative.parts[1:])
        path = _audio(audio_dir / relative, meta)
        name = row["Instrument (in full)"]
        clips.append(Clip(relative.stem, path, index[name], name, _int(row["Fold"], meta, line, "Fold") + 1))
    return _finish("tinysol", root, clips, classes)


# --------------------------------------------------------------------------- VocalSound

# Official class order (class_labels_indices_vs.csv); file-name token -> label name.
VOCALSOUND_CLASSES = {
    "laughter": "laughter",
    "sigh": "sigh",
    "cough": "cough",
    "throatclearing": "throat_clearing",
    "sneeze": "sneeze",
    "sniff": "sniff",
}


def read_vocalsound(root: Path) -> tuple[list[Clip], list[str]]:
    """VocalSound: ``audio_16k/<speaker>_<idx>_<class>.wav``; label from the file name, fold 0.

    The 44.1 kHz release (``audio_44k/``) is read the same way when the 16 kHz one is absent.
    """
    root = _check_root(root)
    try:
        audio_dir = _find(root, "audio_16k") / "audio_16k"
    except DatasetError:
        try:
            audio_dir = _find(root, "audio_44k") / "audio_44k"
        except DatasetError:
            raise DatasetError(f"{root}: no audio_16k/ (or audio_44k/) folder of the VocalSound release found") from None
    tokens = list(VOCALSOUND_CLASSES)
    classes = list(VOCALSOUND_CLASSES.values())
    clips = []
    for path in sorted(p for p in audio_dir.glob("*.wav") if p.is_file()):
        parts = path.stem.rsplit("_", 2)
        if len(parts) != 3 or parts[2] not in VOCALSOUND_CLASSES:
            raise DatasetError(f"{path}: file name is not <speaker>_<index>_<class>.wav with class in {', '.join(tokens)}")
        label = tokens.index(parts[2])
        clips.append(Clip(path.stem, path, label, classes[label], 0))
    return _finish("vocalsound", root, clips, classes)


# --------------------------------------------------------------------------- generic folder


def _is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for d in folders:
        _no_link(d)
    return folders


def _no_link(path: Path) -> Path:
    """Links are refused: they can loop, list a clip twice under two classes or leave the root."""
    if path.is_symlink():
        raise DatasetError(f"{path}: symbolic link inside the dataset folder; links are not followed")
    return path


def read_folder(root: Path, csv: str | os.PathLike | None = None) -> tuple[list[Clip], list[str]]:
    """Your own data: ``<root>/<class>/*.wav`` (classes = sorted folder names), or a CSV.

    The CSV (option ``csv``, relative to the root unless absolute) has columns
    ``path,label[,fold]``; paths are relative to the CSV's folder; classes are the sorted
    label names. Clip ids are the audio paths relative to their base, without suffix,
    so equal file names in different classes stay distinct. A root holding a single
    folder that itself holds the class folders (an unpacked archive) is entered.
    """
    root = _check_root(root)
    if csv is not None:
        table = Path(csv).expanduser()
        table = table if table.is_absolute() else root / table
        if not table.is_file():
            raise DatasetError(f"{table}: clip table (CSV) not found")
        rows = _read_csv(table, ("path", "label"))
        classes = sorted({row["label"] for row in rows})
        index = {name: i for i, name in enumerate(classes)}
        clips = []
        for line, row in enumerate(rows, start=2):
            if not row["path"] or not row["label"]:
                raise DatasetError(f"{table}, line {line}: empty path or label")
            relative = Path(row["path"])
            path = (table.parent / relative).resolve()
            if not path.is_relative_to(root):
                raise DatasetError(f"{table}, line {line}: {row['path']} lies outside the dataset folder {root}; "
                                   "every clip must be inside it (so that it is copied and fingerprinted)")
            path = _audio(path, table)
            fold = _int(row["fold"], table, line, "fold") if row.get("fold") not in (None, "") else 0
            clip_id = relative.with_suffix("").as_posix()
            clips.append(Clip(clip_id, path, index[row["label"]], row["label"], fold))
        return _finish("folder", table, clips, classes)

    base = root
    while True:
        folders = _class_folders(base)
        if len(folders) == 1 and not any(_is_audio(p) for p in folders[0].iterdir()):
            base = folders[0]
            continue
        break
    classes = [d.name for d in folders]
    found = [sorted(_no_link(p) for p in folder.rglob("*") if _is_audio(p)) for folder in folders]
    empty = [folder for folder, paths in zip(folders, found) if not paths]
    if empty and any(found):  # with no audio at all, _finish says so
        # a class no clip can be scored against would still count in every accuracy and table
        raise DatasetError(f"{empty[0]}: class folder without audio files; add its clips or remove the folder")
    clips = [Clip(path.relative_to(base).with_suffix("").as_posix(), path, label, folder.name, 0)
             for label, (folder, paths) in enumerate(zip(folders, found)) for path in paths]
    return _finish("folder", root, clips, classes)


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Dataset] = {
    "esc50": Dataset("esc50", read_esc50, "ESC-50: 2000 environmental sounds, 50 classes, 5 folds",
                     ("https://github.com/karoldvl/ESC-50/archive/master.zip",)),
    "tinysol": Dataset("tinysol", read_tinysol, "TinySOL: 2913 single notes, 14 instruments, 5 folds",
                       ("https://zenodo.org/record/3685367/files/TinySOL.tar.gz",  # the audio; its labels and
                        "https://zenodo.org/record/3685367/files/TinySOL_metadata.csv")),  # folds are here
    "vocalsound": Dataset("vocalsound", read_vocalsound, "VocalSound: 21024 vocal sounds, 6 classes, no folds",
                          ("https://www.dropbox.com/s/c5ace70qh1vbyzb/vs_release_16k.zip?dl=1",)),
    "folder": Dataset("folder", read_folder, "your own <class>/*.wav folders or a path,label[,fold] CSV"),
}


def dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}'; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def check_options(name: str, options: dict) -> dict:
    """The options (None values dropped) that dataset `name` accepts; raise naming any it does not."""
    reader = dataset(name).reader
    options = {k: v for k, v in options.items() if v is not None}
    accepted = set(inspect.signature(reader).parameters) - {"root"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DatasetError(
            f"dataset '{name}' has no option(s) {', '.join(unknown)}"
            + (f"; its options: {', '.join(sorted(accepted))}" if accepted else "; it takes no options")
        )
    return options


def list_clips(name: str, root: str | os.PathLike, **options) -> tuple[list[Clip], list[str]]:
    """All clips of dataset `name` under `root`, sorted by clip id, and its class names by index.

    Options set to None count as not given (params files spell "not set" as null).
    """
    options = check_options(name, options)
    return dataset(name).reader(Path(root), **options)


def select(clips: list[Clip], limit: int | None, seed: int) -> list[Clip]:
    """The first `limit` clips of a stratified, seeded order, for quick runs on a subset.

    Clips are shuffled within each class and classes are visited round-robin in a seeded
    order, so any limit keeps the classes as balanced as possible and a smaller limit
    gives a subset of a larger one (same seed). The chosen clips keep their input order.
    """
    if limit is None:
        return list(clips)
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise DatasetError(f"limit must be a positive integer or None, got {limit!r}")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_class[clip.label].append(i)
    labels = sorted(by_class)
    queues = [[by_class[labels[j]][k] for k in rng.permutation(len(by_class[labels[j]]))] for j in rng.permutation(len(labels))]
    order = []
    for rank in range(max((len(q) for q in queues), default=0)):
        order.extend(q[rank] for q in queues if rank < len(q))
    chosen = sorted(order[:limit])
    return [clips[i] for i in chosen]
