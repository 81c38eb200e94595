"""Fetching from local directories, local archives, file:// URLs and a local HTTP server; never the network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import yaml
from test_datasets import fake_esc50, fake_tinysol

from residual_audio.core.io import RUNS_DIR, transaction
from residual_audio.core.params import ParamError
from residual_audio.data.datasets import DatasetError, list_clips
from residual_audio.data.fetch import DownloadError, fetch_dataset, fetch_model
from residual_audio.stages import download as download_stage
from residual_audio.stages import model as model_stage
from conftest import checked

REPO = Path(__file__).resolve().parents[1]


def run(params: dict, name: str, workdir=".") -> dict:
    """Dataset `name` and the model files, as the `download` and `model` stages fetch them, in one
    transaction (a failing model fetch leaves the dataset unwritten too)."""
    workdir = Path(workdir)
    with transaction("download", workdir / RUNS_DIR):
        return {"data": download_stage.run(params, name, workdir), "model": model_stage.run(params, workdir)}



def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Relative path -> (size, mtime_ns, sha256) of every file: to show a source was not modified."""
    return {
        p.relative_to(directory).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns, sha256(p))
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


def make_archive(tree: Path, archive: Path) -> Path:
    """Pack the contents of `tree` into `archive` (format from its name)."""
    name = archive.name
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w") as z:
            for p in sorted(tree.rglob("*")):
                z.write(p, p.relative_to(tree).as_posix())
    else:
        mode = "w:gz" if name.endswith((".tar.gz", ".tgz")) else "w"
        with tarfile.open(archive, mode) as t:
            for p in sorted(tree.iterdir()):
                t.add(p, p.name)
    return archive


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture
def esc_tree(tmp_path) -> Path:
    tree = tmp_path / "src"
    fake_esc50(tree)
    return tree


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields (base URL, folder, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(root)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root, server.requests
    finally:
        server.shutdown()
        server.server_close()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- datasets


def test_local_directory_is_hard_linked_and_left_untouched(esc_tree, tmp_path):
    before = listing(esc_tree)
    out = tmp_path / "raw" / "esc50"
    manifest = fetch_dataset(str(esc_tree), out, check_dataset="esc50")
    assert listing(esc_tree) == before
    copied = out / "ESC-50-master" / "meta" / "esc50.csv"
    original = esc_tree / "ESC-50-master" / "meta" / "esc50.csv"
    assert os.path.samestat(copied.stat(), original.stat())
    assert {k: v[2] for k, v in listing(out).items() if k != "manifest.json"} == {k: v[2] for k, v in before.items()}
    assert manifest["clips"] == 12 and manifest["classes"] == 3
    assert json.loads((out / "manifest.json").read_text())["requests"][0]["source"] == str(esc_tree)
    assert leftovers(out.parent) == []


def test_read_only_source_gives_a_removable_output(esc_tree, tmp_path):
    for folder, _, _ in os.walk(esc_tree):
        os.chmod(folder, 0o555)
    try:
        out = tmp_path / "raw"
        fetch_dataset(str(esc_tree), out)
        assert all(os.stat(f).st_mode & 0o200 for f, _, _ in os.walk(out))
    finally:
        for folder, _, _ in os.walk(esc_tree):
            os.chmod(folder, 0o755)


def test_rerun_is_a_no_op_and_a_changed_source_is_fetched_again(esc_tree, tmp_path):
    out = tmp_path / "raw"
    fetch_dataset(str(esc_tree), out)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    inode = (out / "ESC-50-master").stat().st_ino
    fetch_dataset(str(esc_tree), out)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    assert (out / "ESC-50-master").stat().st_ino == inode
    (esc_tree / "extra.txt").write_text("new file in the source")
    fetch_dataset(str(esc_tree), out)
    assert (out / "extra.txt").read_text() == "new file in the source"
    # a file removed from the output is noticed too
    (out / "extra.txt").unlink()
    fetch_dataset(str(esc_tree), out)
    assert (out / "extra.txt").is_file()


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tgz"])
def test_local_archives_are_unpacked_with_checksum(esc_tree, tmp_path, suffix):
    archive = make_archive(esc_tree, tmp_path / f"ESC-50{suffix}")
    out = tmp_path / "raw" / "esc50"
    manifest = fetch_dataset(str(archive), out, sha256=sha256(archive), check_dataset="esc50")
    assert manifest["fetched"][0]["sha256"] == sha256(archive)
    assert manifest["fetched"][0]["entries"] == ["ESC-50-master"]
    expected = {k: v[2] for k, v in listing(esc_tree).items()}
    assert {k: v[2] for k, v in listing(out).items() if k != "manifest.json"} == expected
    assert archive.is_file()  # the source archive stays
    assert leftovers(out) == [] and leftovers(out.parent) == []


def test_checksum_mismatch_leaves_nothing_behind(esc_tree, tmp_path):
    archive = make_archive(esc_tree, tmp_path / "ESC-50.zip")
    out = tmp_path / "raw" / "esc50"
    with pytest.raises(DownloadError, match="ESC-50.zip.*sha256 mismatch|sha256 mismatch.*ESC-50.zip"):
        fetch_dataset(str(archive), out, sha256="0" * 64)
    assert not out.exists() and leftovers(out.parent) == []


def test_checksum_mismatch_keeps_an_earlier_output(esc_tree, tmp_path):
    archive = make_archive(esc_tree, tmp_path / "ESC-50.zip")
    out = tmp_path / "raw"
    fetch_dataset(str(esc_tree), out)
    before = listing(out)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch_dataset(str(archive), out, sha256="f" * 64)
    assert listing(out) == before and leftovers(tmp_path) == []


def test_file_url_archive(esc_tree, tmp_path):
    archive = make_archive(esc_tree, tmp_path / "master.zip")
    out = tmp_path / "raw"
    fetch_dataset(archive.as_uri(), out, sha256=sha256(archive), check_dataset="esc50")
    assert len(list_clips("esc50", out)[0]) == 12


def test_http_archive_plus_metadata_file(tmp_path, http_dir):
    """TinySOL's official source: an audio archive and a separate metadata CSV."""
    base, www, requests = http_dir
    tree = tmp_path / "tinysol"
    rows = fake_tinysol(tree)
    with tarfile.open(www / "TinySOL.tar.gz", "w:gz") as t:
        t.add(tree / "TinySOL", "TinySOL")
    shutil.copy(tree / "TinySOL_metadata.csv", www / "TinySOL_metadata.csv")
    sources = [base + "TinySOL.tar.gz", base + "TinySOL_metadata.csv"]
    out = tmp_path / "raw" / "tinysol"
    manifest = fetch_dataset(sources, out, sha256=[sha256(www / "TinySOL.tar.gz"), None], check_dataset="tinysol")
    assert manifest["clips"] == len(rows) and manifest["classes"] == 3
    assert [f["kind"] for f in manifest["fetched"]] == ["archive", "file"]
    assert len(requests) == 2
    fetch_dataset(sources, out, sha256=[sha256(www / "TinySOL.tar.gz"), None])
    assert len(requests) == 2  # finished downloads are not repeated


def test_unreachable_url_names_it(tmp_path):
    url = f"http://127.0.0.1:{unused_port()}/ESC-50-master.zip"
    out = tmp_path / "raw"
    with pytest.raises(DownloadError, match=f"{url}: download failed"):
        fetch_dataset(url, out)
    missing = (tmp_path / "absent.zip").as_uri()
    with pytest.raises(DownloadError, match=f"{missing}: download failed"):
        fetch_dataset(missing, out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_http_error_names_url(tmp_path, http_dir):
    base, _, _ = http_dir
    with pytest.raises(DownloadError, match="missing.zip: download failed \\(HTTP 404"):
        fetch_dataset(base + "missing.zip", tmp_path / "raw")


def test_missing_local_source_is_named(tmp_path):
    with pytest.raises(DownloadError, match="data.esc50.source: .*nowhere"):
        fetch_dataset(str(tmp_path / "nowhere"), tmp_path / "raw", key="data.esc50.source")


def test_corrupt_archive_is_named(tmp_path):
    bad = tmp_path / "page.zip"
    bad.write_text("<html>rate limited</html>")
    with pytest.raises(DownloadError, match="page.zip: not a valid zip archive"):
        fetch_dataset(str(bad), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_archive_escaping_the_output_is_refused(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as t:
        data = b"owned"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(DownloadError, match="evil.tar: refused to unpack an unsafe archive member"):
        fetch_dataset(str(evil), tmp_path / "a" / "raw")
    assert not list(tmp_path.rglob("escaped.txt")) and not (tmp_path / "a" / "raw").exists()


def test_fetched_files_must_make_the_dataset(esc_tree, tmp_path):
    out = tmp_path / "raw"
    with pytest.raises(DatasetError, match="TinySOL_metadata.csv"):
        fetch_dataset(str(esc_tree), out, check_dataset="tinysol")
    assert not out.exists()


# --------------------------------------------------------------------------- model files


def fake_tokenizer(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({"<s>": 0, "<pad>": 1, "</s>": 2, "a": 3}))
    (directory / "merges.txt").write_text("#version: 0.2\na b\n")
    return directory


def fake_checkpoint(path: Path, seed: int = 0) -> Path:
    """A small file in the official training-checkpoint layout (module. prefixes, numpy scalars)."""
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(seed)
    state = {"module.audio_projection.0.weight": torch.randn(512, 768, generator=gen),
             "module.audio_branch.bn0.weight": torch.randn(64, generator=gen)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": np.int64(45), "state_dict": state, "best_score": np.float64(0.0)}, path)
    return path


def test_random_weights_with_local_tokenizer(tmp_path):
    tok = fake_tokenizer(tmp_path / "tok")
    out = tmp_path / "models"
    manifest = fetch_model("random", str(tok), out)
    assert manifest["weights"] == "random"
    assert not (out / "checkpoint.pt").exists()
    for name in ("vocab.json", "merges.txt"):
        assert (out / "tokenizer" / name).read_bytes() == (tok / name).read_bytes()
        assert manifest["tokenizer"]["files"][f"tokenizer/{name}"]["sha256"] == sha256(tok / name)
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_local_checkpoint_is_linked_and_checked(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "630k-audioset-best.pt")
    out = tmp_path / "models"
    manifest = fetch_model(str(ckpt), "none", out, checkpoint_sha256=sha256(ckpt))
    assert manifest["weights"] == "pretrained" and manifest["tokenizer"] is None
    assert os.path.samestat((out / "checkpoint.pt").stat(), ckpt.stat())
    assert manifest["checkpoint"]["files"]["checkpoint.pt"]["sha256"] == sha256(ckpt)
    assert not (out / "tokenizer").exists()


def test_checkpoint_checksum_mismatch_leaves_nothing(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not the expected bytes")
    with pytest.raises(DownloadError, match="model.pt.*sha256 mismatch"):
        fetch_model(str(ckpt), None, tmp_path / "models", checkpoint_sha256="1" * 64)
    assert not (tmp_path / "models").exists() and leftovers(tmp_path) == []


def test_model_over_http_is_fetched_once_and_parts_are_reused(tmp_path, http_dir):
    base, www, requests = http_dir
    (www / "lukewys").mkdir()
    fake_checkpoint(www / "lukewys" / "630k-best.pt")
    fake_tokenizer(www / "roberta-base")
    fake_tokenizer(www / "other-tokenizer")
    (www / "other-tokenizer" / "merges.txt").write_text("#version: 0.2\nb c\n")
    out = tmp_path / "models"
    ckpt_url = base + "lukewys/630k-best.pt"
    fetch_model(ckpt_url, base + "roberta-base", out)
    assert sorted(requests) == ["/lukewys/630k-best.pt", "/roberta-base/merges.txt", "/roberta-base/vocab.json"]
    assert sha256(out / "checkpoint.pt") == sha256(www / "lukewys" / "630k-best.pt")
    fetch_model(ckpt_url, base + "roberta-base/", out)  # the same base, spelled with a slash
    fetch_model(ckpt_url, base + "roberta-base", out)
    assert len(requests) == 3
    fetch_model(ckpt_url, base + "other-tokenizer/", out)
    assert requests[-2:] == ["/other-tokenizer/vocab.json", "/other-tokenizer/merges.txt"]
    assert requests.count("/lukewys/630k-best.pt") == 1
    assert (out / "tokenizer" / "merges.txt").read_text().endswith("b c\n")


def test_tokenizer_error_page_is_refused(tmp_path, http_dir):
    base, www, _ = http_dir
    (www / "tok").mkdir()
    (www / "tok" / "vocab.json").write_text("<html>please log in</html>")
    (www / "tok" / "merges.txt").write_text("<html>please log in</html>")
    with pytest.raises(DownloadError, match="vocab.json is not valid JSON"):
        fetch_model("random", base + "tok/", tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_missing_tokenizer_file_is_named(tmp_path):
    tok = fake_tokenizer(tmp_path / "tok")
    (tok / "merges.txt").unlink()
    with pytest.raises(DownloadError, match="merges.txt not found"):
        fetch_model("random", str(tok), tmp_path / "models")


# --------------------------------------------------------------------------- the stage


def stage_params(source, **extra) -> dict:
    params = {
        "datasets": ["esc50"],
        "data": {"esc50": {"source": source, "limit": None}, "folder": {"source": None, "csv": None}},
        "model": {"checkpoint": "random", "variant": "tiny", "tokenizer": None},
    }
    params.update(extra)
    return params


def test_run_fills_raw_and_models(esc_tree, tmp_path):
    work = tmp_path / "work"
    tok = fake_tokenizer(tmp_path / "tok")
    params = stage_params(str(esc_tree))
    params["model"]["tokenizer"] = str(tok)
    result = run(params, "esc50", work)
    assert result["data"]["clips"] == 12
    assert len(list_clips("esc50", work / "data" / "raw" / "esc50")[0]) == 12
    assert (work / "data" / "models" / "tokenizer" / "vocab.json").is_file()
    assert json.loads((work / "data" / "models" / "manifest.json").read_text())["weights"] == "random"


def test_run_resolves_relative_paths_against_the_project(esc_tree, tmp_path):
    work = tmp_path / "work"
    fake_tokenizer(work / "files" / "tok")
    fake_checkpoint(work / "files" / "model.pt")
    shutil.copytree(esc_tree, work / "files" / "esc")
    params = stage_params("files/esc")
    params["model"].update(checkpoint="files/model.pt", tokenizer="files/tok")
    result = run(params, "esc50", work)
    assert result["data"]["clips"] == 12 and result["model"]["weights"] == "pretrained"
    assert (work / "data" / "models" / "checkpoint.pt").read_bytes() == (work / "files" / "model.pt").read_bytes()


def test_official_checkpoint_name_stands_for_its_url(esc_tree, tmp_path, monkeypatch):
    from residual_audio.data import fetch as download

    params = stage_params(str(esc_tree))
    params["model"]["checkpoint"] = "630k-audioset-best.pt"
    seen = []

    def no_network(url, dest, sha256=None, timeout=60):
        seen.append(url)
        raise DownloadError(f"{url}: download failed (no network in tests)")

    monkeypatch.setattr(download, "download_url", no_network)
    with pytest.raises(DownloadError, match="huggingface.co/lukewys/laion_clap/resolve/main/630k-audioset-best.pt"):
        run(params, "esc50", tmp_path)
    assert seen == ["https://huggingface.co/lukewys/laion_clap/resolve/main/630k-audioset-best.pt"]
    assert not (tmp_path / "data" / "models").exists()


def test_interrupted_run_leftovers_are_removed(esc_tree, tmp_path):
    raw = tmp_path / "raw"
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = raw / f".esc50.tmp-{dead.pid}-deadbeef"
    stale.mkdir(parents=True)
    (stale / ".master.zip.part-1234").write_bytes(b"half a download")
    fetch_dataset(str(esc_tree), raw / "esc50")
    assert leftovers(raw) == []


def test_run_unknown_dataset(tmp_path):
    with pytest.raises(ParamError, match="'datasets'.*audioset"):
        checked(run, stage_params("x"), "audioset", tmp_path, dataset="audioset")


def test_run_folder_needs_a_source(tmp_path):
    with pytest.raises(ParamError, match="data.folder.source"):
        run(stage_params("x"), "folder", tmp_path)


def test_run_unknown_dataset_option(esc_tree, tmp_path):
    params = stage_params(str(esc_tree))
    params["data"]["esc50"]["folds"] = [4]
    with pytest.raises(ParamError, match="data.esc50.*folds"):
        run(params, "esc50", tmp_path)
    assert not (tmp_path / "data").exists()


def test_stage_script(esc_tree, tmp_path):
    """`python stages/download.py` reads params.yaml in the working folder; errors exit non-zero with the message."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(stage_params(str(esc_tree))))
    script = str(REPO / "stages" / "download.py")
    done = subprocess.run([sys.executable, script, "esc50"], cwd=work, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (work / "data" / "raw" / "esc50" / "manifest.json").is_file()
    (work / "params.yaml").write_text(yaml.safe_dump(stage_params(str(tmp_path / "absent"))))
    done = subprocess.run([sys.executable, script, "esc50"], cwd=work, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "download@esc50: data.esc50.source:" in done.stderr and "absent" in done.stderr


def test_params_and_dvc_stage_agree():
    """Every param the stage declares exists in params.yaml, and the defaults are the official sources."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    from residual_audio.core.params import get
    from residual_audio.data.fetch import OFFICIAL_SOURCES

    for name in params["datasets"]:
        for key in stages["download"]["do"]["params"]:
            get(params, key.replace("${item}", name))
    for key in stages["model"]["params"]:
        get(params, key)
    assert stages["download"]["do"]["cmd"] == "python stages/download.py ${item}"
    assert stages["model"]["cmd"] == "python stages/model.py"
    assert params["data"]["esc50"]["source"] == OFFICIAL_SOURCES["esc50"][0]
    assert params["data"]["tinysol"]["source"] == OFFICIAL_SOURCES["tinysol"]
    assert params["data"]["vocalsound"]["source"] == OFFICIAL_SOURCES["vocalsound"][0]
    assert params["data"]["folder"]["source"] is None
    assert params["model"]["checkpoint"] == "630k-audioset-best.pt" and params["model"]["tokenizer"] == "auto"


def test_dvc_repro_skips_the_fetch_when_only_limit_changes(esc_tree, tmp_path):
    """Under `dvc repro` the outputs persist, so a rerun caused by another data.* parameter is a no-op."""
    pytest.importorskip("dvc")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    work = tmp_path / "project"
    work.mkdir()
    for name in ("dvc.yaml", "stages", "residual_audio"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["esc50"]["source"] = str(esc_tree)
    params["model"]["checkpoint"] = "random"
    params["model"]["tokenizer"] = str(fake_tokenizer(tmp_path / "tok"))
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    def sh(*args):
        done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    sh("git", "init", "-q")
    sh(sys.executable, "-m", "dvc", "init", "-q")
    sh(sys.executable, "-m", "dvc", "repro", "download")
    manifest = work / "data" / "raw" / "esc50" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    params["data"]["esc50"]["limit"] = 100
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    out = sh(sys.executable, "-m", "dvc", "repro", "download")
    assert "up to date" in out
    assert manifest.stat().st_mtime_ns == stamp
    assert len(list_clips("esc50", work / "data" / "raw" / "esc50")[0]) == 12


def test_offline_failure_names_the_source_and_the_way_out(esc_tree, tmp_path, monkeypatch):
    """No network: the stage says which source failed and how to point it at a local copy or `random`."""
    from residual_audio.data import fetch as download
    from residual_audio.data.fetch import NetworkError

    def offline(url, dest, sha256=None, timeout=60):
        raise NetworkError(f"{url}: download failed (Name or service not known)")

    monkeypatch.setattr(download, "download_url", offline)
    params = stage_params("https://example.invalid/ESC-50.zip")
    with pytest.raises(NetworkError, match=r"data\.esc50\.source: .*Name or service not known.*local copy.*-S data\.esc50\.source="):
        download_stage.run(params, "esc50", tmp_path)
    params["model"]["checkpoint"] = "630k-audioset-best.pt"
    with pytest.raises(NetworkError, match=r"model\.checkpoint: .*model\.checkpoint=random"):
        model_stage.run(params, tmp_path)
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]  # nothing written


def test_a_missing_relative_source_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """Relative sources resolve against the project folder; in the temporary copy where `dvc queue start` runs an
    experiment, paths outside the project (the README's ../shared) do not, and the line says so."""
    from residual_audio.data.fetch import check_local_sources

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DownloadError, match=rf"model.tokenizer: ../shared/x not found \(relative to {tmp_path}\)$"):
        check_local_sources([("model.tokenizer", "../shared/x")])
    queued = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    queued.mkdir(parents=True)
    monkeypatch.chdir(queued)
    with pytest.raises(DownloadError, match=r"data.esc50.source: ../shared/esc50 not found .*`dvc queue`.*give an "
                                            r"absolute path"):
        check_local_sources([("data.esc50.source", "../shared/esc50")])
    with pytest.raises(DownloadError, match=r"^data.esc50.source: /nowhere/esc50 not found$"):
        check_local_sources([("data.esc50.source", "/nowhere/esc50")])
