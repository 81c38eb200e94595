"""Dataset readers on small fake trees with the official layouts, and on the real ESC-50 fold 4."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from residual_audio.data.datasets import DATASETS, Clip, DatasetError, list_clips, select


def write_wav(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(seed).uniform(-0.1, 0.1, 800).astype(np.float32), 8000)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


ESC_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
ESC_CLASSES = ["dog", "rooster", "rain"]


def fake_esc50(base: Path, folds=(1, 2), per_class: int = 2) -> list[list]:
    """An ESC-50 tree under `base` (as the archive unpacks: base/ESC-50-master/...)."""
    rows = []
    for fold in folds:
        for target, category in enumerate(ESC_CLASSES):
            for take in "ABCD"[:per_class]:
                name = f"{fold}-{1000 + target}-{take}-{target}.wav"
                write_wav(base / "ESC-50-master" / "audio" / name, seed=len(rows))
                rows.append([name, fold, target, category, False, 1000 + target, take])
    # rows in an order unrelated to the expected output order
    rows = rows[::-1]
    write_csv(base / "ESC-50-master" / "meta" / "esc50.csv", ESC_HEADER, rows)
    return rows


def test_esc50_reads_archive_layout(tmp_path):
    rows = fake_esc50(tmp_path)
    clips, classes = list_clips("esc50", tmp_path)
    assert classes == ESC_CLASSES
    assert len(clips) == len(rows) == 12
    assert [c.clip_id for c in clips] == sorted(Path(r[0]).stem for r in rows)
    by_id = {c.clip_id: c for c in clips}
    for name, fold, target, category, *_ in rows:
        clip = by_id[Path(name).stem]
        assert (clip.label, clip.label_name, clip.fold) == (target, category, fold)
        assert clip.path.is_absolute() and clip.path.is_file() and clip.path.name == name


def test_esc50_root_may_be_the_dataset_folder_itself(tmp_path):
    fake_esc50(tmp_path)
    clips_a, classes_a = list_clips("esc50", tmp_path)
    clips_b, classes_b = list_clips("esc50", tmp_path / "ESC-50-master")
    assert clips_a == clips_b and classes_a == classes_b


def test_esc50_missing_audio_names_the_file(tmp_path):
    rows = fake_esc50(tmp_path)
    victim = tmp_path / "ESC-50-master" / "audio" / rows[3][0]
    victim.unlink()
    with pytest.raises(DatasetError, match=rows[3][0]):
        list_clips("esc50", tmp_path)


def test_esc50_missing_metadata_names_the_file(tmp_path):
    write_wav(tmp_path / "audio" / "1-1-A-0.wav")
    with pytest.raises(DatasetError, match="esc50.csv"):
        list_clips("esc50", tmp_path)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        list_clips("esc50", tmp_path / "nowhere")


def test_esc50_empty_metadata_is_an_error(tmp_path):
    write_csv(tmp_path / "meta" / "esc50.csv", ESC_HEADER, [])
    (tmp_path / "audio").mkdir()
    with pytest.raises(DatasetError, match="no esc50 clips"):
        list_clips("esc50", tmp_path)


@pytest.mark.shared
def test_esc50_real_fold4(shared_data):
    clips, classes = list_clips("esc50", shared_data / "esc50-fold4")
    assert len(clips) == 400 and len(classes) == 50
    assert {c.fold for c in clips} == {4}
    assert Counter(c.label for c in clips) == {k: 8 for k in range(50)}
    assert classes[0] == "dog" and classes[49] == "hand_saw"
    assert all(classes[c.label] == c.label_name for c in clips)
    assert all(c.path.is_file() for c in clips)


# --------------------------------------------------------------------------- TinySOL

TINYSOL_HEADER = [
    "Path", "Fold", "Family", "Instrument (abbr.)", "Instrument (in full)", "Technique (abbr.)",
    "Technique (in full)", "Pitch", "Pitch ID", "Dynamics", "Dynamics ID", "Instance ID",
    "String ID (if applicable)", "Needed digital retuning",
]
TINYSOL_INSTRUMENTS = [
    ("Brass", "BTb", "Bass Tuba", "Bass_Tuba"),
    ("Strings", "Vn", "Violin", "Violin"),
    ("Winds", "Fl", "Flute", "Flute"),
]


def fake_tinysol(base: Path) -> list[list]:
    rows = []
    for family, abbr, full, folder in TINYSOL_INSTRUMENTS:
        for i, (pitch, fold) in enumerate([("C4", 0), ("D4", 3), ("E4", 4)]):
            rel = f"{family}/{folder}/ordinario/{abbr}-ord-{pitch}-mf-N-N.wav"
            write_wav(base / "TinySOL" / rel, seed=len(rows))
            rows.append([rel, fold, family, abbr, full, "ord", "ordinario", pitch, 60 + i, "mf", 2, 0, "", "FALSE"])
    write_csv(base / "TinySOL_metadata.csv", TINYSOL_HEADER, rows)
    return rows


def test_tinysol_labels_and_folds(tmp_path):
    rows = fake_tinysol(tmp_path)
    clips, classes = list_clips("tinysol", tmp_path)
    assert classes == ["Bass Tuba", "Flute", "Violin"]
    assert len(clips) == len(rows) == 9
    for clip in clips:
        row = next(r for r in rows if Path(r[0]).stem == clip.clip_id)
        assert clip.label_name == row[4] and classes[clip.label] == row[4]
        assert clip.fold == row[1] + 1  # official folds 0-4 stored as 1-5
        assert clip.path == (tmp_path / "TinySOL" / row[0]).resolve()


def test_tinysol_missing_audio_names_the_file(tmp_path):
    rows = fake_tinysol(tmp_path)
    (tmp_path / "TinySOL" / rows[4][0]).unlink()
    with pytest.raises(DatasetError, match=Path(rows[4][0]).name):
        list_clips("tinysol", tmp_path)


def test_tinysol_missing_metadata_names_the_file(tmp_path):
    fake_tinysol(tmp_path)
    (tmp_path / "TinySOL_metadata.csv").unlink()
    with pytest.raises(DatasetError, match="TinySOL_metadata.csv"):
        list_clips("tinysol", tmp_path)


# --------------------------------------------------------------------------- VocalSound


def fake_vocalsound(base: Path) -> dict[str, str]:
    files = {
        "f0003_0_cough.wav": "cough",
        "f0003_1_laughter.wav": "laughter",
        "m0012_0_throatclearing.wav": "throat_clearing",
        "m0012_5_sneeze.wav": "sneeze",
        "m0100_2_sniff.wav": "sniff",
        "f0450_3_sigh.wav": "sigh",
        "f0450_4_sigh.wav": "sigh",
    }
    for i, name in enumerate(files):
        write_wav(base / "audio_16k" / name, seed=i)
    return files


def test_vocalsound_labels_from_file_names(tmp_path):
    files = fake_vocalsound(tmp_path / "vs_release_16k")
    clips, classes = list_clips("vocalsound", tmp_path)
    assert classes == ["laughter", "sigh", "cough", "throat_clearing", "sneeze", "sniff"]
    assert sorted(c.clip_id for c in clips) == sorted(Path(n).stem for n in files)
    for clip in clips:
        assert clip.label_name == files[clip.path.name] and classes[clip.label] == clip.label_name
        assert clip.fold == 0


def test_vocalsound_bad_file_name_is_named(tmp_path):
    fake_vocalsound(tmp_path)
    write_wav(tmp_path / "audio_16k" / "f0001_0_hiccup.wav")
    with pytest.raises(DatasetError, match="f0001_0_hiccup.wav"):
        list_clips("vocalsound", tmp_path)


def test_vocalsound_without_audio_folder(tmp_path):
    with pytest.raises(DatasetError, match="audio_16k"):
        list_clips("vocalsound", tmp_path)


# --------------------------------------------------------------------------- folder


def test_folder_class_subfolders(tmp_path):
    for cls, n in [("cat", 2), ("dog", 3), ("bird", 1)]:
        for i in range(n):
            write_wav(tmp_path / "mine" / cls / f"{i:03d}.wav", seed=i)
    (tmp_path / "mine" / "dog" / "notes.txt").write_text("not audio")
    clips, classes = list_clips("folder", tmp_path)  # single top folder is entered
    assert classes == ["bird", "cat", "dog"]
    assert Counter(c.label_name for c in clips) == {"cat": 2, "dog": 3, "bird": 1}
    assert all(classes[c.label] == c.label_name and c.fold == 0 for c in clips)
    # equal file names in different classes stay distinct
    assert {c.clip_id for c in clips} >= {"cat/000", "dog/000", "bird/000"}


def test_folder_csv_with_folds(tmp_path):
    write_wav(tmp_path / "wav" / "a.wav")
    write_wav(tmp_path / "wav" / "b.wav")
    write_wav(tmp_path / "wav" / "c.wav")
    write_csv(tmp_path / "lists" / "clips.csv", ["path", "label", "fold"],
              [["../wav/a.wav", "zebra", 2], ["../wav/b.wav", "ant", 1], ["../wav/c.wav", "zebra", 1]])
    clips, classes = list_clips("folder", tmp_path, csv="lists/clips.csv")
    assert classes == ["ant", "zebra"]
    got = {c.path.name: (c.label, c.label_name, c.fold) for c in clips}
    assert got == {"a.wav": (1, "zebra", 2), "b.wav": (0, "ant", 1), "c.wav": (1, "zebra", 1)}


def test_folder_csv_without_fold_column_gives_fold_0(tmp_path):
    write_wav(tmp_path / "x.wav")
    write_csv(tmp_path / "t.csv", ["path", "label"], [["x.wav", "thing"]])
    clips, _ = list_clips("folder", tmp_path, csv=str(tmp_path / "t.csv"))
    assert clips[0].fold == 0 and clips[0].label_name == "thing"


def test_folder_csv_missing_audio_names_the_file(tmp_path):
    write_csv(tmp_path / "t.csv", ["path", "label"], [["gone.wav", "thing"]])
    with pytest.raises(DatasetError, match="gone.wav"):
        list_clips("folder", tmp_path, csv="t.csv")


def test_folder_csv_missing_is_named(tmp_path):
    with pytest.raises(DatasetError, match="labels.csv"):
        list_clips("folder", tmp_path, csv="labels.csv")


def test_folder_without_clips_is_an_error(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    with pytest.raises(DatasetError, match="no folder clips"):
        list_clips("folder", tmp_path)


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(DatasetError) as err:
        list_clips("audioset", tmp_path)
    for name in DATASETS:
        assert name in str(err.value)


def test_unknown_option_is_named(tmp_path):
    fake_esc50(tmp_path)
    with pytest.raises(DatasetError, match="folds"):
        list_clips("esc50", tmp_path, folds=[1])
    # options set to None count as not given
    assert len(list_clips("esc50", tmp_path, csv=None)[0]) == 12


# --------------------------------------------------------------------------- select


def _clips(per_class: dict[int, int]) -> list[Clip]:
    return [Clip(f"{label}-{i:02d}", Path(f"/x/{label}-{i}.wav"), label, str(label), 0)
            for label, n in per_class.items() for i in range(n)]


def test_select_is_stratified():
    clips = _clips({0: 10, 1: 10, 2: 10, 3: 10})
    chosen = select(clips, 8, seed=0)
    assert Counter(c.label for c in chosen) == {0: 2, 1: 2, 2: 2, 3: 2}
    counts = Counter(c.label for c in select(clips, 6, seed=0))
    assert sum(counts.values()) == 6 and max(counts.values()) - min(counts.values()) == 1
    # a small class runs out and the rest fill up
    uneven = _clips({0: 1, 1: 10})
    assert Counter(c.label for c in select(uneven, 5, seed=3)) == {0: 1, 1: 4}


def test_select_is_seeded_nested_and_keeps_input_order():
    clips = _clips({0: 20, 1: 20, 2: 20})
    a, b = select(clips, 12, seed=1), select(clips, 12, seed=1)
    assert a == b
    assert select(clips, 12, seed=2) != a
    assert set(a) <= set(select(clips, 30, seed=1))
    positions = [clips.index(c) for c in a]
    assert positions == sorted(positions)


def test_select_limits():
    clips = _clips({0: 3, 1: 2})
    assert select(clips, None, seed=0) == clips
    assert select(clips, 50, seed=0) == clips
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DatasetError, match="limit"):
            select(clips, bad, seed=0)
