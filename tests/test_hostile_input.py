"""Hostile and careless input: every test builds its own bad input and checks the pipeline refuses it
with one line naming the file or key, runs no code from it and leaves earlier outputs as they were.
No network beyond 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from test_datasets import fake_esc50, write_wav
from test_download import run as download

from residual_audio.core import io as rio
from residual_audio.core.params import ParamError, load_params
from residual_audio.core.schema import SCHEMA, validate
from residual_audio.data.audio import AudioError, decode, prepare
from residual_audio.data.datasets import DatasetError, list_clips, read_folder
from residual_audio.data.fetch import DownloadError, fetch_dataset, fetch_model
from residual_audio.models.checkpoints import front_end, load_model
from residual_audio.models.laion import CheckpointError, MelFrontEnd, read_checkpoint

REPO = Path(__file__).resolve().parents[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in Path(directory).iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- 1. checkpoints never run code


class Payload:
    """Unpickling this object writes `marker`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.fixture(scope="module")
def official(official_checkpoint) -> Path:
    """The seeded random model in the official training-checkpoint format (shared, read-only)."""
    return official_checkpoint


def with_payload(model, dest: Path, marker: Path) -> Path:
    """A checkpoint in the official layout (`module.` state dict, AdamW optimizer state, numpy
    scalars) with a payload hidden in its optimizer state. Its state dict holds the audio
    projection only: the payload is met while unpickling, before any weight is looked at, so
    a small file tests the same refusal as a 600 MB one."""
    head = model.audio_projection
    optimizer = torch.optim.AdamW(list(head.parameters())[:2], lr=1e-4).state_dict()
    optimizer["param_groups"][0]["note"] = Payload(marker)
    torch.save({"epoch": np.int64(45), "name": "tiny-random-weights", "best_score": np.float64(0.0),
                "state_dict": {f"module.audio_projection.{k}": v for k, v in head.state_dict().items()},
                "optimizer": optimizer}, dest)
    return dest


def test_official_format_loads_with_numpy_scalars_allowed(official, model):
    state = read_checkpoint(official)
    loaded = load_model(official)
    assert loaded.weights == "pretrained"
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert set(state) == set(model.state_dict())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_local_payload_is_refused_naming_file_and_type(tmp_path, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"module.audio_projection.0.weight": torch.zeros(2, 2)}, "x": Payload(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    for load in (read_checkpoint, load_model, front_end):
        with pytest.raises(CheckpointError) as err:
            load(path)
        assert str(path) in str(err.value) and "'exec'" in str(err.value)
        assert "\n" not in str(err.value)
    assert not marker.exists()


def test_payload_hidden_in_a_valid_checkpoint_is_refused(model, tmp_path):
    marker = tmp_path / "marker"
    path = with_payload(model, tmp_path / "630k-audioset-best.pt", marker)
    with pytest.raises(CheckpointError, match=r"630k-audioset-best.pt: refused to load: the file needs 'exec'"):
        load_model(path)
    with pytest.raises(CheckpointError, match="refused"):
        fetch_model(str(path), None, tmp_path / "models")
    assert not (tmp_path / "models").exists() and not marker.exists()


@pytest.fixture
def http_dir(tmp_path):
    """A threaded HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root
    finally:
        server.shutdown()
        server.server_close()


def test_payload_over_http_is_refused_before_anything_is_written(model, tmp_path, http_dir):
    base, www = http_dir
    marker = tmp_path / "marker"
    with_payload(model, www / "630k-best.pt", marker)
    work = tmp_path / "work"
    src = tmp_path / "esc"
    fake_esc50(src)
    params = {"datasets": ["esc50"], "data": {"esc50": {"source": str(src)}},
              "model": {"checkpoint": base + "630k-best.pt", "tokenizer": None}}
    with pytest.raises(CheckpointError, match=rf"^{base}630k-best.pt: refused to load: the file needs 'exec'"):
        download(params, "esc50", work)
    assert not marker.exists()
    assert not (work / "data" / "raw" / "esc50").exists() and not (work / "data" / "models").exists()


def test_checkpoint_sha256_is_recorded_and_published_hashes_are_checked(official, tmp_path, http_dir, monkeypatch):
    from residual_audio.data import fetch as dl

    manifest = fetch_model(str(official), None, tmp_path / "models")
    assert manifest["checkpoint_sha256"] == sha256(official)
    base, www = http_dir
    os.link(official, www / "630k-best.pt")  # the same bytes, no second 600 MB on disk
    src = tmp_path / "esc"
    fake_esc50(src)
    monkeypatch.setitem(dl.OFFICIAL_CHECKPOINTS, "630k-best.pt", base + "630k-best.pt")
    monkeypatch.setitem(dl.OFFICIAL_SHA256, "630k-best.pt", "0" * 64)
    params = {"datasets": ["esc50"], "data": {"esc50": {"source": str(src)}},
              "model": {"checkpoint": "630k-best.pt", "tokenizer": None}}
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(params, "esc50", tmp_path / "work")
    params["model"]["checkpoint_sha256"] = "1" * 64
    with pytest.raises(ParamError, match="published with sha256 0000"):
        download(params, "esc50", tmp_path / "work")
    monkeypatch.setitem(dl.OFFICIAL_SHA256, "630k-best.pt", sha256(official))
    params["model"]["checkpoint_sha256"] = None
    result = download(params, "esc50", tmp_path / "work")
    assert result["model"]["checkpoint_sha256"] == sha256(official)


# --------------------------------------------------------------------------- 2. source trees


def folder_source(root: Path, classes=("cls0", "cls1"), per_class: int = 2) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_wav(root / name / f"{name}-{i}.wav", seed=10 * c + i)
    return root


def test_symlink_loop_in_a_folder_source_is_refused(tmp_path):
    src = folder_source(tmp_path / "src")
    (src / "cls0" / "loop").symlink_to("..")
    with pytest.raises(DownloadError, match=r"cls0/loop: symbolic link"):
        fetch_dataset(str(src), tmp_path / "raw" / "folder", check_dataset="folder")
    assert not (tmp_path / "raw" / "folder").exists()


def test_links_out_of_the_source_are_refused(tmp_path):
    outside = write_wav(tmp_path / "elsewhere" / "secret.wav")
    src = folder_source(tmp_path / "src")
    (src / "cls1" / "stolen.wav").symlink_to(outside)
    with pytest.raises(DownloadError, match="stolen.wav: symbolic link"):
        fetch_dataset(str(src), tmp_path / "raw" / "folder", check_dataset="folder")
    with pytest.raises(DatasetError, match="stolen.wav: symbolic link"):
        read_folder(src)


def test_a_folder_named_like_audio_is_not_a_clip(tmp_path):
    root = tmp_path / "vs" / "audio_16k"
    write_wav(root / "s1_1_cough.wav")
    (root / "s1_2_sneeze.wav").mkdir()
    write_wav(root / "s1_2_sneeze.wav" / "inside.wav")
    clips, _ = list_clips("vocalsound", tmp_path / "vs")
    assert [c.clip_id for c in clips] == ["s1_1_cough"]
    folder = folder_source(tmp_path / "f")
    (folder / "cls0" / "dir.wav").mkdir()
    clips, _ = read_folder(folder)
    assert all(c.path.is_file() for c in clips) and len(clips) == 4


def test_csv_paths_outside_the_dataset_are_refused_naming_the_row(tmp_path):
    outside = write_wav(tmp_path / "elsewhere" / "x.wav")
    root = tmp_path / "data"
    write_wav(root / "a.wav")
    for bad in (str(outside), "../elsewhere/x.wav"):
        (root / "clips.csv").write_text(f"path,label\na.wav,dog\n{bad},cat\n")
        with pytest.raises(DatasetError, match=r"clips.csv, line 3: .*outside the dataset folder"):
            read_folder(root, csv="clips.csv")


def zip_with(path: Path, members: list[tuple[str, bytes, int | None]]) -> Path:
    """A zip whose members carry the given unix modes (None: a plain file)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            z.writestr(info, data)
    return path


def test_zip_symlink_member_is_refused(tmp_path):
    archive = zip_with(tmp_path / "a.zip", [("cls0/a.wav", b"RIFF", None), ("cls0/b.wav", b"/etc/passwd", 0o120777)])
    with pytest.raises(DownloadError, match=r"'cls0/b.wav' is a link"):
        fetch_dataset(str(archive), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_tar_link_member_is_refused(tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as t:
        data = b"x" * 10
        info = tarfile.TarInfo("cls0/a.wav")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("cls0/b.wav")
        link.type, link.linkname = tarfile.SYMTYPE, "a.wav"
        t.addfile(link)
    with pytest.raises(DownloadError, match=r"'cls0/b.wav' is a link"):
        fetch_dataset(str(archive), tmp_path / "raw")


def test_duplicate_archive_members_are_refused(tmp_path):
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = zip_with(tmp_path / "a.zip", [("cls0/a.wav", b"one", None), ("cls0/./a.wav", b"two", None),
                                                 ("cls0/a.wav", b"three", None)])
    with pytest.raises(DownloadError, match=r"occurs twice"):
        fetch_dataset(str(archive), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


# --------------------------------------------------------------------------- 3. archive limits


def esc_params(source, **download_limits) -> dict:
    return {"datasets": ["esc50"], "data": {"esc50": {"source": str(source)}}, "download": download_limits,
            "model": {"checkpoint": "random", "tokenizer": None}}


def test_zip_bomb_is_refused_by_the_size_limit(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ESC-50-master/audio/zeros.wav", b"\0" * (4 << 20))
    assert archive.stat().st_size < 64 << 10  # a small file that unpacks to 4 MiB
    with pytest.raises(DownloadError, match=r"bomb.zip: archive unpacks to 4.0 MiB, over the limit download.max_unpacked_mb = 1"):
        download(esc_params(archive, max_unpacked_mb=1), "esc50", tmp_path / "work")
    assert not (tmp_path / "work" / "data" / "raw" / "esc50").exists() and hidden(tmp_path / "work" / "data" / "raw") == []


def test_many_member_tar_is_refused_by_the_count_limit(tmp_path):
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as t:
        for i in range(50):
            info = tarfile.TarInfo(f"x/{i}.txt")
            t.addfile(info, io.BytesIO(b""))
    with pytest.raises(DownloadError, match=r"over the limit download.max_members = 20"):
        download(esc_params(archive, max_members=20), "esc50", tmp_path / "work")
    assert not (tmp_path / "work" / "data" / "raw" / "esc50").exists()


def test_archive_within_limits_is_unpacked(tmp_path):
    tree = tmp_path / "tree"
    fake_esc50(tree)
    archive = tmp_path / "esc.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(tree.rglob("*")):
            z.write(p, p.relative_to(tree).as_posix())
    result = download(esc_params(archive, max_members=100, max_unpacked_mb=1), "esc50", tmp_path / "work")
    assert result["data"]["clips"] == 12


# --------------------------------------------------------------------------- 4. params


def repo_params() -> dict:
    return load_params(REPO / "params.yaml")


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["train"].update(max_epoch=3), "unknown parameter 'train.max_epoch'; did you mean 'train.max_epochs'?"),
    (lambda p: p["residual"]["recipes"]["fine"].update(varience=0.9),
     "unknown parameter 'residual.recipes.fine.varience'; did you mean 'residual.recipes.fine.variance'?"),
    (lambda p: p.update(resdual={"mode": "direct"}), "unknown parameter 'resdual'; did you mean 'residual'?"),
    (lambda p: p["data"]["esc50"].update(limt=3), "did you mean 'data.esc50.limit'?"),
    (lambda p: p["train"].update(patience=True), "'train.patience' must be an integer >= 1, not the boolean true"),
    (lambda p: p["residual"]["recipes"]["fine"].update(lr=True), "'residual.recipes.fine.lr' must be"),
    (lambda p: p["cv"].update(k=False), "'cv.k' must be an integer >= 2, not the boolean false"),
    (lambda p: p["extract"].update(regimes=[]), "'extract.regimes' is []"),
    (lambda p: p["residual"].update(granularity="stag"), "did you mean 'stage'?"),
    (lambda p: p.update(datasets=["esc50", "esc50"]), "'datasets' lists an entry twice"),
    # a misspelt recipe or dataset name is an unknown key, not a new recipe or dataset
    (lambda p: p["residual"]["recipes"].update(fien={"lr": 0.1}),
     "unknown parameter 'residual.recipes.fien'; did you mean 'residual.recipes.fine'?"),
    (lambda p: p["data"].update(esc5O={"limit": 3}), "unknown parameter 'data.esc5O'; did you mean 'data.esc50'?"),
])
def test_typos_and_wrong_types_are_refused(edit, message):
    params = repo_params()
    edit(params)
    with pytest.raises(ParamError) as err:
        validate(params)
    assert message in str(err.value)


def test_every_key_of_params_yaml_is_in_the_schema():
    params = repo_params()
    validate(params)
    validate({**params, "datasets": ["esc50", "tinysol"]})

    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    patterns = list(SCHEMA)
    for key in leaves(params):
        assert any(len(p.split(".")) == len(key.split(".")) and all(
            a == b or (a.startswith("{") and b in a[1:-1].split("|")) for a, b in zip(p.split("."), key.split(".")))
                   for p in patterns), key


def test_regimes_empty_is_refused_by_the_schema():
    from residual_audio.core.schema import validate

    with pytest.raises(ParamError, match="extract.regimes.*non-empty"):
        validate({"extract": {"regimes": []}})


def stage_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_every_stage_script_checks_the_whole_params_file(tmp_path):
    scripts = sorted((REPO / "stages").glob("*.py"))
    assert scripts and all("main(" in s.read_text() and "residual_audio.core.runner import main" in s.read_text() for s in scripts)
    params = repo_params()
    params["train"]["max_epoch"] = 3  # a key no stage but train reads
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run([sys.executable, str(REPO / "stages" / "download.py"), "esc50"], cwd=tmp_path, capture_output=True,
                         text=True, env=stage_env(), timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "download@esc50: params.yaml: unknown parameter 'train.max_epoch'; did you mean 'train.max_epochs'?"]
    assert not (tmp_path / "data").exists()


def test_malformed_params_file_gives_one_line_with_the_line_number(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 0\ntrain:\n  lr: [0.1, 0.2\n  patience: 3\n")
    out = subprocess.run([sys.executable, str(REPO / "stages" / "download.py"), "esc50"], cwd=tmp_path, capture_output=True,
                         text=True, env=stage_env(), timeout=300)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1
    assert lines[0].startswith("download@esc50: params.yaml, line 4: not valid YAML")


# --------------------------------------------------------------------------- 5. audio


def test_truncated_wav_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 8000).astype(np.float32), 8000, subtype="PCM_16")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    assert len(sf.read(path)[0]) > 0  # libsndfile alone reads the half file without complaint
    with pytest.raises(AudioError, match=rf"{path}: truncated WAV"):
        decode(path)


def test_anti_phase_stereo_and_sub_lsb_audio_fail_like_silence(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 48000).astype(np.float32)
    anti = tmp_path / "anti.wav"
    sf.write(anti, np.stack([x, -x], 1), 48000, subtype="FLOAT")
    nearly = tmp_path / "nearly.wav"  # not exactly anti-phase: what remains is below one int16 step
    sf.write(nearly, np.stack([x, -x * (1 - 1e-6)], 1), 48000, subtype="FLOAT")
    faint = tmp_path / "faint.wav"
    sf.write(faint, x * 1e-5, 48000, subtype="FLOAT")
    for path in (anti, nearly, faint):
        with pytest.raises(AudioError, match=rf"{path}: audio is silent"):
            prepare(path)
    assert np.abs(sf.read(anti)[0]).max() > 0.4  # each channel on its own is loud


def test_too_short_clip_is_refused_not_tiled(tmp_path):
    path = tmp_path / "blip.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 480).astype(np.float32), 48000)  # 10 ms
    with pytest.raises(AudioError, match=rf"{path}: clip lasts 0.0100 s, shorter than preprocess.min_seconds = 0.1"):
        prepare(path)
    wave, info = prepare(path, min_seconds=0.005)
    assert info["duration"] == pytest.approx(0.01) and np.count_nonzero(wave) > 0


def test_audio_errors_name_the_users_original_file(tmp_path):
    from residual_audio.stages.preprocess import run as preprocess

    src = folder_source(tmp_path / "my recordings")
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 4800).astype(np.float32)
    sf.write(src / "cls1" / "bad.wav", np.stack([x, -x], 1), 48000)
    work = tmp_path / "work"
    params = {"datasets": ["folder"], "data": {"folder": {"source": str(src)}}, "model": {"checkpoint": "random", "tokenizer": None}}
    download(params, "folder", work)
    with pytest.raises(AudioError) as err:
        preprocess(params, "folder", work)
    message = str(err.value)
    assert message.startswith(f"{src / 'cls1' / 'bad.wav'}: audio is silent") and "data/raw" not in message
    assert not (work / "data" / "mel").exists() or hidden(work / "data" / "mel") == []


def test_dataset_errors_at_download_name_the_source_not_a_temporary_folder(tmp_path):
    src = tmp_path / "esc"
    fake_esc50(src)
    victim = sorted((src / "ESC-50-master" / "audio").iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetError) as err:
        fetch_dataset(str(src), tmp_path / "raw" / "esc50", check_dataset="esc50")
    assert str(src / "ESC-50-master" / "audio" / victim.name) in str(err.value) and ".tmp-" not in str(err.value)


# --------------------------------------------------------------------------- 6. half-written and stale outputs


TOY_STAGE = textwrap.dedent("""
    import resource, signal, sys, time
    from pathlib import Path
    from residual_audio.data.datasets import DatasetError
    from residual_audio.core.io import atomic_path
    from residual_audio.core.runner import main

    mode = sys.argv[1]

    def run(params):
        with atomic_path("out/store.zarr") as tmp:  # a folder output, as zarr stores are
            tmp.mkdir()
            (tmp / "chunk").write_text("new store")
            if mode == "hang":
                Path("ready").write_text("")
                time.sleep(120)
        with atomic_path("metrics/a.json") as tmp:
            tmp.write_text("new a")
        if mode == "fail":
            raise DatasetError("second output: bad input")
        if mode == "full":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        with atomic_path("metrics/b.bin") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x" * (1 << 17))
        return "out/store.zarr"

    main("toy", run)
""")


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "toy.py").write_text(TOY_STAGE)

    def start(mode: str):
        return subprocess.Popen([sys.executable, "toy.py", mode], cwd=tmp_path, env=stage_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(mode: str):
        proc = start(mode)
        out, errors = proc.communicate(timeout=300)
        return proc.returncode, errors

    return tmp_path, start, finish


def outputs(root: Path) -> dict[str, str]:
    found = {}
    for directory in ("out", "metrics"):
        for p in sorted((root / directory).rglob("*")) if (root / directory).exists() else []:
            if p.is_file():
                found[p.relative_to(root).as_posix()] = p.read_bytes()[:20].decode()
    return found


def test_kill_9_leftovers_are_removed_by_the_next_run_but_a_live_runs_are_kept(toy):
    root, start, finish = toy
    victim = start("hang")
    deadline = time.time() + 120
    while not (root / "ready").exists():
        assert time.time() < deadline and victim.poll() is None, victim.communicate()
        time.sleep(0.1)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    stale = hidden(root / "out")
    assert len(stale) == 1 and stale[0].startswith(f".store.zarr.tmp-{victim.pid}-")
    (root / "ready").unlink()
    live = start("hang")  # another run, alive while the rerun below cleans up
    while not (root / "ready").exists():
        assert time.time() < deadline and live.poll() is None, live.communicate()
        time.sleep(0.1)
    try:
        assert finish("ok")[0] == 0
        left = hidden(root / "out")
        assert len(left) == 1 and left[0].startswith(f".store.zarr.tmp-{live.pid}-"), left  # the live run's only
        assert (root / "out" / "store.zarr" / "chunk").read_text() == "new store"
    finally:
        live.kill()
        live.wait()
    assert finish("ok")[0] == 0
    assert hidden(root / "out") == [] and hidden(root / "metrics") == []
    assert not (root / rio.RUNS_DIR).exists()


def test_leftovers_of_dead_or_pre_pid_runs_go_and_live_ones_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = {f".a.zarr.tmp-{dead.pid}-0123abcd": False, ".a.zarr.tmp-89abcdef": False,
             f".a.zarr.tmp-{os.getppid()}-0123abcd": True, f".b.zarr.tmp-{dead.pid}-0123abcd": True}
    for name in names:
        (tmp_path / name).mkdir()
    with rio.atomic_path(tmp_path / "a.zarr") as tmp:
        tmp.mkdir()
    assert {n: (tmp_path / n).exists() for n in names} == names  # only a.zarr's own, only dead runs'


def test_a_failing_stage_leaves_every_previous_output_as_it_was(toy):
    root, _, finish = toy
    assert finish("ok")[0] == 0
    before = outputs(root)
    (root / "metrics" / "a.json").write_text("old a")
    before = outputs(root)
    code, errors = finish("fail")
    assert code == 1 and errors.strip().splitlines() == ["toy: second output: bad input"]
    assert outputs(root) == before  # a.json was written by the failing run, yet not moved into place
    assert hidden(root / "out") == [] and hidden(root / "metrics") == []


def test_out_of_space_gives_one_line_naming_the_path_and_keeps_old_outputs(toy):
    root, _, finish = toy
    assert finish("ok")[0] == 0
    (root / "metrics" / "a.json").write_text("old a")
    before = outputs(root)
    code, errors = finish("full")  # a file-size limit makes the third write fail like a full disk
    lines = errors.strip().splitlines()
    assert code == 1 and len(lines) == 1, errors
    assert lines[0].startswith("toy: metrics/b.bin: out of disk space")
    assert outputs(root) == before
    assert hidden(root / "out") == [] and hidden(root / "metrics") == []


def test_a_commit_cut_short_is_rolled_forward_at_the_next_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    finals = [tmp_path / "a.json", tmp_path / "store.zarr"]
    finals[0].write_text("old a")
    finals[1].mkdir()
    (finals[1] / "chunk").write_text("old store")
    dead = subprocess.Popen(["true"])
    dead.wait()
    moves = []
    for final in finals:  # the dead run had written its new outputs aside
        tmp = final.with_name(f".{final.name}.tmp-{dead.pid}-0000000{len(moves)}")
        if final.suffix == ".zarr":
            tmp.mkdir()
            (tmp / "chunk").write_text("new store")
        else:
            tmp.write_text("new a")
        moves.append((tmp, final, final.with_name(f".{final.name}.old-{dead.pid}-0000000{len(moves)}")))
    # ... and was killed after moving the first output into place, before the second
    os.replace(finals[0], moves[0][2])
    os.replace(moves[0][0], finals[0])
    runs = tmp_path / rio.RUNS_DIR
    runs.mkdir(parents=True)
    log = [{"tmp": str(t)} for t, _, _ in moves] + [{"commit": [[str(p) for p in m] for m in moves]}]
    (runs / f"toy-{dead.pid}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    rio.remove_stale(finals[1])  # a new run's writer must not take the pending ones for garbage
    with rio.atomic_path(tmp_path / "other.txt") as tmp:
        tmp.write_text("x")
    assert moves[1][0].exists()
    with rio.transaction("toy"):
        pass
    assert finals[0].read_text() == "new a" and (finals[1] / "chunk").read_text() == "new store"
    assert hidden(tmp_path) == []


def test_a_journal_cut_short_rolls_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    final = tmp_path / "a.json"
    final.write_text("old a")
    dead = subprocess.Popen(["true"])
    dead.wait()
    tmp = tmp_path / f".a.json.tmp-{dead.pid}-00000000"
    tmp.write_text("new a")
    runs = tmp_path / rio.RUNS_DIR
    runs.mkdir(parents=True)
    (runs / f"toy-{dead.pid}.jsonl").write_text(json.dumps({"tmp": str(tmp)}) + '\n{"commit": [["' + str(tmp))
    assert rio.recover(runs)
    assert final.read_text() == "old a" and not tmp.exists()


def test_download_checks_every_source_before_writing_any(tmp_path):
    src = tmp_path / "esc"
    fake_esc50(src)
    work = tmp_path / "work"
    params = {"datasets": ["esc50"], "data": {"esc50": {"source": str(src)}},
              "model": {"checkpoint": str(tmp_path / "missing.pt"), "tokenizer": None}}
    with pytest.raises(DownloadError, match="model.checkpoint: .*missing.pt not found"):
        download(params, "esc50", work)
    assert not [p for p in (work / "data").rglob("*") if p.is_file()]  # nothing written
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")  # present, but fails once fetched
    params["model"]["checkpoint"] = str(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'bad.pt'}: not a readable PyTorch checkpoint"):
        download(params, "esc50", work)
    assert not (work / "data" / "raw" / "esc50").exists() and not (work / "data" / "models").exists()


def snapshot(root: Path, folders=("metrics", "plots")) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256(p) for d in folders for p in sorted((root / d).rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_evaluate_out_of_space_keeps_the_previous_outputs(tmp_path):
    from test_alignment_stages import _project

    root = _project(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(root)}
    for stage in ("train", "evaluate"):
        out = subprocess.run([sys.executable, f"stages/{stage}.py", "folder"], cwd=root, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
    before = snapshot(root)
    assert any(k.endswith(".png") for k in before) and "metrics/folder/alignment.json" in before
    (root / "metrics" / "folder" / "alignment.json").write_text("{}\n")  # so that a rewrite would show
    before = snapshot(root)
    limited = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)); sys.argv = ['stages/evaluate.py', 'folder']; "
               "runpy.run_path('stages/evaluate.py', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", limited], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stderr.strip().splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]  # progress
    assert out.returncode == 1 and len(lines) == 1 and "out of disk space" in lines[0], out.stderr[-2000:]
    assert lines[0].startswith("evaluate@folder: plots/alignment/folder/") and ".tmp-" not in lines[0], lines
    assert snapshot(root) == before  # metrics not rewritten, no figure lost
    assert not [p for p in root.rglob(".*.tmp-*")] and not [p for p in root.rglob(".*.old-*")]


# --------------------------------------------------------------------------- strict params


def test_a_key_given_twice_is_refused_with_both_line_numbers(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\ntrain:\n  max_epochs: 3\n  patience: 2\n  max_epochs: 30\n")
    with pytest.raises(ParamError) as err:
        load_params(path)
    assert str(err.value) == (f"{path}, lines 3 and 5: key 'max_epochs' is given twice "
                              "(YAML would keep the last silently)")
    path.write_text("seed: 0\ntrain:\n  max_epochs: 3\nseed: 1\n")
    with pytest.raises(ParamError, match="lines 1 and 4: key 'seed'"):
        load_params(path)


def test_the_schemas_dataset_and_recipe_names_are_the_registered_ones():
    from residual_audio.core.schema import DATASET_NAMES, RECIPE_NAMES
    from residual_audio.data.datasets import DATASETS
    from residual_audio.methods.residual.maths import RECIPES

    assert set(DATASET_NAMES) == set(DATASETS) and set(RECIPE_NAMES) == set(RECIPES)


# --------------------------------------------------------------------------- strict sources


def test_a_csv_row_that_does_not_fit_its_header_is_refused_naming_file_and_line(tmp_path):
    src = folder_source(tmp_path / "src")
    table = src / "labels.csv"
    table.write_text("path,label,fold\ncls0/cls0-0.wav,cls0,1\ncls1/cls1-0.wav,dog, barking,2\n")  # written by hand
    with pytest.raises(DatasetError) as err:
        read_folder(src, "labels.csv")
    assert str(err.value) == f"{table}, line 3: 4 fields where the header has 3 (quote a value that holds a comma)"
    table.write_text("path,label,fold\ncls0/cls0-0.wav,cls0\n")
    with pytest.raises(DatasetError, match=r"labels.csv, line 2: 2 fields where the header has 3"):
        read_folder(src, "labels.csv")
    table.write_text('path,label,fold\ncls0/cls0-0.wav,"dog, barking",1\ncls1/cls1-0.wav,cat,2\n')  # quoted: fine
    clips, classes = read_folder(src, "labels.csv")
    assert classes == ["cat", "dog, barking"] and sorted(c.fold for c in clips) == [1, 2]


@pytest.mark.parametrize("fold", ["1.7", "-1", "two"])
def test_a_fold_that_is_not_a_whole_number_is_refused(tmp_path, fold):
    src = folder_source(tmp_path / "src")
    (src / "labels.csv").write_text(f"path,label,fold\ncls0/cls0-0.wav,cls0,{fold}\ncls1/cls1-0.wav,cls1,2\n")
    with pytest.raises(DatasetError, match=rf"labels.csv, line 2: column 'fold' must be a whole number >= 0, not '{fold}'"):
        read_folder(src, "labels.csv")
    (src / "labels.csv").write_text("path,label,fold\ncls0/cls0-0.wav,cls0,0\ncls1/cls1-0.wav,cls1,3.0\n")
    assert sorted(c.fold for c in read_folder(src, "labels.csv")[0]) == [0, 3]  # 0: no fold; 3.0 is 3


def test_a_class_folder_without_clips_is_refused_naming_it(tmp_path):
    src = folder_source(tmp_path / "src")
    (src / "cls2").mkdir()
    (src / "cls2" / "notes.txt").write_text("no audio here\n")
    with pytest.raises(DatasetError) as err:
        read_folder(src)
    assert str(err.value) == f"{src / 'cls2'}: class folder without audio files; add its clips or remove the folder"


# --------------------------------------------------------------------------- stores: complete or refused


def _sealed_store(path: Path) -> Path:
    """A store written with zarr directly (three chunks of 'x'), then sealed as every writer seals."""
    import zarr

    from residual_audio.data.stores import seal

    group = zarr.open_group(str(path), mode="w")
    group.create_array("x", data=np.arange(12, dtype=np.float32).reshape(6, 2) + 1, chunks=(2, 2))
    seal(group)
    return path


def test_a_store_missing_a_chunk_file_is_refused_not_read_as_zeros(tmp_path):
    import zarr

    from residual_audio.data.stores import StoreError, open_store

    path = _sealed_store(tmp_path / "s.zarr")
    assert open_store(path, arrays=("x",))["x"][:].min() == 1
    chunk = path / "x" / "c" / "1" / "0"
    assert chunk.is_file()
    chunk.unlink()  # what a broken copy or a half-pulled cache leaves
    assert (zarr.open_group(str(path), mode="r")["x"][2:4] == 0).all()  # zarr alone reads zeros
    with pytest.raises(StoreError) as err:
        open_store(path, arrays=("x",), hint="run the extract stage")
    assert str(err.value) == (f"{path}: array 'x' holds 2 of the 3 chunks written (a chunk file is missing; zarr would "
                              "read a missing one as zeros); run the extract stage")


def test_a_store_without_a_chunk_record_is_refused_naming_the_stage(tmp_path):
    import zarr

    from residual_audio.data.stores import StoreError, open_store

    zarr.open_group(str(tmp_path / "old.zarr"), mode="w").create_array("x", data=np.ones(4, np.float32))
    with pytest.raises(StoreError, match=r"old.zarr: no chunk record \(written by an older version of the pipeline, "
                                         r"or not by it\); run the preprocess stage"):
        open_store(tmp_path / "old.zarr", hint="run the preprocess stage")


def test_every_reader_of_the_heads_store_refuses_a_missing_chunk(tmp_path):
    from residual_audio.analysis import geometry
    from residual_audio.data.stores import StoreError
    from residual_audio.data.synthetic import synthetic_store
    from residual_audio.data.units import read_units
    from residual_audio.methods.residual.inject import read_head_outputs

    path = tmp_path / "heads.zarr"
    synthetic_store(path, n_per_class=2, n_classes=3)
    next(p for p in sorted((path / "direct" / "units" / "c").rglob("*")) if p.is_file()).unlink()
    with pytest.raises(StoreError, match=r"heads.zarr: array 'direct/units' holds 0 of the 1 chunks written"):
        read_units(path)
    for reader in (read_head_outputs, geometry.open_store):
        with pytest.raises(StoreError, match="'direct/units' holds 0 of the 1 chunks written"):
            reader(path)
