"""Fetching datasets and model files: the only code in the project that touches the network.

Every source is a URL (http, https or file), a local directory or a local file; after
fetching they all take the same path: archives (.zip, .tar, .tar.gz, .tgz, ...) are
unpacked, directories copied (hard links where the file system allows, so a local copy
costs no space; the source is never modified), other files placed as they are. A
download goes to a temporary file that is renamed only once complete (and, where a
sha256 is given, verified), and each output is moved into place only when everything in
it is ready, so a failure never leaves half an output behind.

Each output carries a ``manifest.json`` naming its sources; a rerun whose sources are
unchanged is a no-op, so a 600 MB archive is not fetched again because an unrelated
parameter changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from pathlib import Path

from tqdm import tqdm

from .datasets import DATASETS, DatasetError, check_options, list_clips
from .io import atomic_path, sha256_file
from .params import ParamError, check, get

OFFICIAL_SOURCES: dict[str, list[str] | None] = {
    "esc50": ["https://github.com/karoldvl/ESC-50/archive/master.zip"],
    # The audio archive does not hold the metadata (instrument labels and folds).
    "tinysol": [
        "https://zenodo.org/record/3685367/files/TinySOL.tar.gz",
        "https://zenodo.org/record/3685367/files/TinySOL_metadata.csv",
    ],
    "vocalsound": ["https://www.dropbox.com/s/c5ace70qh1vbyzb/vs_release_16k.zip?dl=1"],
    "folder": None,
}
CHECKPOINT_BASE_URL = "https://huggingface.co/lukewys/laion_clap/resolve/main/"
OFFICIAL_CHECKPOINTS = {
    name: CHECKPOINT_BASE_URL + name
    for name in (
        "630k-audioset-best.pt",
        "630k-best.pt",
        "music_audioset_epoch_15_esc_90.14.pt",
        "music_speech_audioset_epoch_15_esc_89.98.pt",
        "music_speech_epoch_15_esc_89.25.pt",
    )
}
TOKENIZER_BASE_URL = "https://huggingface.co/roberta-base/resolve/main/"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
MANIFEST = "manifest.json"
HF_PREFIX = "hf:"  # model.checkpoint: hf:<owner>/<name>, a transformers ClapModel on the hub
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
URL_SCHEMES = ("http", "https", "file")
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A source could not be fetched, verified or unpacked; the message names the URL or file."""


# --------------------------------------------------------------------------- single files


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(str(source)).scheme.lower() in URL_SCHEMES


def source_name(source: str) -> str:
    """The file name a source stands for: the last URL path component (query dropped)."""
    if is_url(source):
        name = urllib.parse.unquote(Path(urllib.parse.urlsplit(source).path).name)
        return name or "download"
    return Path(source).name


def _tmp_sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


def _verify(path: Path, actual: str, expected: str | None, source: str) -> None:
    if expected is not None and actual.lower() != str(expected).strip().lower():
        raise DownloadError(f"{source}: sha256 mismatch for {path.name}: expected {expected}, got {actual}")


def download_url(url: str, dest: Path, sha256: str | None = None, timeout: float = 60) -> str:
    """Stream `url` into `dest` (via a temporary sibling); return the file's sha256."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(dest, "part")
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "residual-audio"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
                total = response.headers.get("Content-Length")
                with tqdm(
                    total=int(total) if total and total.isdigit() else None,
                    unit="B", unit_scale=True, unit_divisor=1024, desc=source_name(url), leave=False,
                ) as bar:
                    while block := response.read(CHUNK):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from None
        except urllib.error.URLError as exc:
            raise DownloadError(f"{url}: download failed ({exc.reason})") from None
        except (OSError, ValueError) as exc:  # timeouts, resets, malformed URLs
            raise DownloadError(f"{url}: download failed ({exc.__class__.__name__}: {exc})") from None
        actual = digest.hexdigest()
        _verify(dest, actual, sha256, url)
        os.replace(tmp, dest)
        return actual
    finally:
        if tmp.exists():
            tmp.unlink()


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link `src` to `dst`, or copy it where links are impossible (other device, no support)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fetch_file(source: str, dest: Path, sha256: str | None = None, key: str = "source") -> str:
    """Put the file `source` (URL or local path) at `dest`, verified; return its sha256."""
    if is_url(source):
        return download_url(source, dest, sha256)
    path = Path(source).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise DownloadError(f"{key}: {path} {what}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(dest, "part")
    try:
        link_or_copy(path, tmp)
        actual = sha256_file(tmp)
        _verify(dest, actual, sha256, str(path))
        os.replace(tmp, dest)
        return actual
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------- archives and directories


def archive_kind(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(ARCHIVE_SUFFIXES):
        return "tar"
    return None


def unpack(archive: Path, dest: Path, label: str) -> list[str]:
    """Unpack `archive` into `dest`; refuse members that would land outside it. Return top-level names."""
    kind = archive_kind(label) or archive_kind(archive.name)
    dest = Path(dest).resolve()
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                members = z.infolist()
                for m in members:
                    target = (dest / m.filename).resolve()
                    if target != dest and dest not in target.parents:
                        raise DownloadError(f"{label}: archive member {m.filename!r} points outside the output")
                for m in tqdm(members, desc=f"unpack {label}", unit="file", leave=False):
                    z.extract(m, dest)
                names = [m.filename for m in members]
        elif kind == "tar":
            with tarfile.open(archive) as t:
                members = t.getmembers()
                for m in tqdm(members, desc=f"unpack {label}", unit="file", leave=False):
                    t.extract(m, dest, filter="data")
                names = [m.name for m in members]
            for folder, _, _ in os.walk(dest):  # keep the output removable whatever modes the archive had
                os.chmod(folder, os.stat(folder).st_mode | 0o700)
        else:
            raise DownloadError(f"{label}: not an archive ({', '.join(ARCHIVE_SUFFIXES)})")
    except tarfile.FilterError as exc:
        raise DownloadError(f"{label}: refused to unpack an unsafe archive member ({exc})") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"{label}: not a valid {kind} archive ({exc})") from None
    return sorted({Path(n).parts[0] for n in names if Path(n).parts})


def copy_tree(src: Path, dest: Path) -> list[str]:
    """Copy the contents of directory `src` into `dest` (hard links where possible).

    Folders are created afresh (not copied with their modes), so the output stays
    removable even when the source is read-only.
    """
    names = sorted(child.name for child in src.iterdir())
    for name in names:
        if (dest / name).exists():
            raise DownloadError(f"{src / name}: {name} is already provided by another source")
    for folder, subfolders, files in os.walk(src, followlinks=True):
        relative = Path(folder).relative_to(src)
        (dest / relative).mkdir(parents=True, exist_ok=True)
        subfolders.sort()
        for name in sorted(files):
            link_or_copy(Path(folder) / name, dest / relative / name)
    return names


def _listing_stamp(directory: Path) -> str:
    """A fingerprint of a local directory (relative paths, sizes, mtimes) to notice a changed source."""
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            st = path.stat()
            h.update(f"{path.relative_to(directory).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def source_stamp(source: str) -> str | None:
    """What identifies a source's content without fetching it: None for URLs (fixed by URL + sha256)."""
    if is_url(source):
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        return "dir:" + _listing_stamp(path)
    if path.is_file():
        st = path.stat()
        return f"file:{st.st_size}:{st.st_mtime_ns}"
    return None


def _files(directory: Path) -> int:
    return sum(1 for p in directory.rglob("*") if p.is_file() and p != directory / MANIFEST)


def place(source: str, dest: Path, sha256: str | None, key: str) -> dict:
    """Fetch one dataset source into directory `dest`: unpack archives, copy directories and files."""
    name = source_name(source)
    local = None if is_url(source) else Path(source).expanduser()
    if local is not None and not local.exists():
        raise DownloadError(f"{key}: {local} not found")
    if local is not None and local.is_dir():
        if sha256 is not None:
            raise DownloadError(f"{key}: a sha256 was given but {local} is a directory (only files can be verified)")
        return {"source": source, "kind": "directory", "entries": copy_tree(local, dest)}
    staged = dest / f".fetch-{uuid.uuid4().hex[:8]}-{name}"
    try:
        digest = fetch_file(source, staged, sha256, key)
        if archive_kind(name):
            entries = unpack(staged, dest, name)
            kind = "archive"
        else:
            target = dest / name
            if target.exists():
                raise DownloadError(f"{source}: {name} is already provided by another source")
            os.replace(staged, target)
            entries, kind = [name], "file"
    finally:
        if staged.exists():
            staged.unlink()
    return {"source": source, "kind": kind, "sha256": digest, "entries": entries}


# --------------------------------------------------------------------------- manifests


def remove_stale_temporaries(out: Path) -> None:
    """Delete what an interrupted earlier run (killed mid-download) left next to `out`.

    `atomic_path` names its temporaries `.<name>.tmp-*`; only one run of a stage writes
    an output at a time (dvc holds a lock), so any such sibling is garbage.
    """
    for stale in Path(out).parent.glob(f".{Path(out).name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # an unreadable manifest means "fetch again"


def _request(source: str, sha256: str | None) -> dict:
    return {"source": source, "expected_sha256": sha256, "stamp": source_stamp(source)}


# --------------------------------------------------------------------------- datasets


def _as_list(value) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def fetch_dataset(
    sources: str | list[str],
    out: str | os.PathLike,
    sha256: str | list[str | None] | None = None,
    key: str = "source",
    check_dataset: str | None = None,
    options: dict | None = None,
) -> dict:
    """Fetch `sources` (one or several) into directory `out`; return its manifest.

    `sha256` is one checksum per source (a single string when there is one source).
    With `check_dataset`, the result is read as that dataset (with `options`) before it
    is moved into place, so a copy that does not make the dataset leaves nothing behind.
    """
    out = Path(out)
    sources = [str(s) for s in _as_list(sources)]
    if not sources or any(not s or s.lower() in ("none", "null") for s in sources):
        raise DownloadError(f"{key}: no source given")
    sums = _as_list(sha256) if sha256 is not None else [None] * len(sources)
    if len(sums) != len(sources):
        raise DownloadError(f"{key}: {len(sources)} source(s) but {len(sums)} sha256 value(s)")
    requests = [_request(s, h) for s, h in zip(sources, sums)]

    old = read_manifest(out)
    if old is not None and old.get("requests") == requests and old.get("files") == _files(out):
        print(f"{out}: up to date ({', '.join(sources)})")
        return old

    remove_stale_temporaries(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        fetched = [place(s, tmp, h, key) for s, h in zip(sources, sums)]
        manifest = {"requests": requests, "fetched": fetched, "files": _files(tmp)}
        if check_dataset is not None:
            clips, classes = list_clips(check_dataset, tmp, **(options or {}))
            manifest.update(dataset=check_dataset, clips=len(clips), classes=len(classes))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"{out}: {manifest['files']} files from {', '.join(sources)}")
    return manifest


# --------------------------------------------------------------------------- model files


def _none(value) -> bool:
    return value is None or str(value).strip().lower() in ("", "none", "null")


def _reuse(old: dict | None, old_dir: Path, part: str, request: dict, files: list[str], tmp: Path) -> bool:
    """Hard-link `files` of an earlier output into `tmp` when they were fetched from the same request."""
    entry = (old or {}).get(part)
    if not entry or entry.get("request") != request:
        return False
    recorded = entry.get("files", {})
    for name in files:
        path = old_dir / name
        if name not in recorded or not path.is_file() or path.stat().st_size != recorded[name]["size"]:
            return False
    for name in files:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(old_dir / name, tmp / name)
    return True


def _check_vocab(path: Path, source: str) -> None:
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DownloadError(f"{source}: vocab.json is not valid JSON ({exc}); not a tokenizer file") from None
    if not isinstance(vocab, dict) or not vocab:
        raise DownloadError(f"{source}: vocab.json is not a token-to-id mapping")


def fetch_model(
    checkpoint: str,
    tokenizer: str | None,
    out: str | os.PathLike,
    checkpoint_sha256: str | None = None,
) -> dict:
    """Fetch the CLAP checkpoint and the roberta-base tokenizer files into `out`; return the manifest.

    `checkpoint` is 'random' (no file: seeded random weights), a URL or a local file, or a
    transformers ClapModel (`hf:<owner>/<name>` or a local folder with config.json), fetched
    into `checkpoint/` with its own tokenizer files when it has them;
    `tokenizer` is a URL base or local directory holding vocab.json and merges.txt, or
    None/'none'. A part whose request is unchanged is linked from the earlier output
    instead of being fetched again.
    """
    out = Path(out)
    if _none(checkpoint):
        raise DownloadError("model.checkpoint: no checkpoint given (a URL, a local file or 'random')")
    checkpoint = str(checkpoint)
    random = checkpoint.strip().lower() == "random"
    if random and checkpoint_sha256 is not None:
        raise DownloadError("model.checkpoint_sha256: given, but model.checkpoint is 'random'")
    ckpt_request = None if random else _request(checkpoint, checkpoint_sha256)
    if not _none(tokenizer) and is_url(str(tokenizer)):
        tokenizer = str(tokenizer).rstrip("/") + "/"  # 'base' and 'base/' name the same files
    tok_request = None if _none(tokenizer) else _request(str(tokenizer), None)
    tok_files = [f"tokenizer/{f}" for f in TOKENIZER_FILES]

    old = read_manifest(out)
    if (
        old is not None
        and (old.get("checkpoint") or {}).get("request") == ckpt_request
        and (old.get("tokenizer") or {}).get("request") == tok_request
        and old.get("files") == _files(out)
    ):
        print(f"{out}: up to date")
        return old

    remove_stale_temporaries(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        manifest: dict = {"weights": "random" if random else "pretrained", "checkpoint": None, "tokenizer": None}
        if ckpt_request is not None and (str(checkpoint).startswith(HF_PREFIX) or Path(checkpoint).expanduser().is_dir()):
            from . import hf  # a transformers ClapModel: hub repo or local folder

            names = list(((old or {}).get("checkpoint") or {}).get("files", {}))
            if not (names and _reuse(old, out, "checkpoint", ckpt_request, names, tmp)):
                names = [f"{hf.FOLDER}/{n}" for n in hf.fetch(checkpoint, tmp / hf.FOLDER, checkpoint_sha256)]
            manifest["checkpoint"] = {"request": ckpt_request, "files": _describe(tmp, names)}
        elif ckpt_request is not None:
            if not _reuse(old, out, "checkpoint", ckpt_request, ["checkpoint.pt"], tmp):
                fetch_file(checkpoint, tmp / "checkpoint.pt", checkpoint_sha256, "model.checkpoint")
            manifest["checkpoint"] = {"request": ckpt_request, "files": _describe(tmp, ["checkpoint.pt"])}
        else:
            manifest["checkpoint"] = {"request": None, "source": "random", "files": {}}
        if tok_request is not None:
            if not _reuse(old, out, "tokenizer", tok_request, tok_files, tmp):
                _fetch_tokenizer(str(tokenizer), tmp / "tokenizer")
            manifest["tokenizer"] = {"request": tok_request, "files": _describe(tmp, tok_files)}
        manifest["files"] = _files(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"{out}: weights {manifest['weights']}, tokenizer {'none' if tok_request is None else tokenizer}")
    return manifest


def _describe(directory: Path, names: list[str]) -> dict:
    return {name: {"sha256": sha256_file(directory / name), "size": (directory / name).stat().st_size} for name in names}


def _fetch_tokenizer(source: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if is_url(source):
        for name in TOKENIZER_FILES:
            download_url(source.rstrip("/") + "/" + name, dest / name)
    else:
        directory = Path(source).expanduser()
        if not directory.is_dir():
            raise DownloadError(f"model.tokenizer: {directory} is not a directory holding {' and '.join(TOKENIZER_FILES)}")
        for name in TOKENIZER_FILES:
            if not (directory / name).is_file():
                raise DownloadError(f"model.tokenizer: {directory / name} not found")
            fetch_file(str(directory / name), dest / name, key="model.tokenizer")
    _check_vocab(dest / "vocab.json", source)


# --------------------------------------------------------------------------- the stage


def _against(workdir: Path, source):
    """A relative local path in params means relative to the project folder (where dvc runs the stage)."""
    if isinstance(source, list):
        return [_against(workdir, s) for s in source]
    if _none(source) or is_url(str(source)) or str(source).strip().lower() == "random" or str(source).startswith(HF_PREFIX):
        return source
    path = Path(str(source)).expanduser()
    return str(path if path.is_absolute() else workdir / path)


def run(params: dict, workdir: str | os.PathLike = ".") -> dict:
    """The `download` stage: dataset `params['dataset']` into data/raw/<dataset>/, model files into data/models/."""
    workdir = Path(workdir)
    name = get(params, "dataset")
    check(isinstance(name, str) and name in DATASETS, "dataset", f"is {name!r}; known datasets: {', '.join(DATASETS)}")
    config = get(params, f"data.{name}", {}) or {}
    check(isinstance(config, dict), f"data.{name}", "must be a mapping with at least 'source'")
    source = config.get("source")
    if _none(source) if not isinstance(source, list) else not source:
        source = OFFICIAL_SOURCES[name]
        if source is None:
            raise ParamError(f"params: 'data.{name}.source' must be set (a URL, a local directory or an archive)")
    options = {k: v for k, v in config.items() if k not in ("source", "sha256", "limit")}
    try:
        check_options(name, options)
    except DatasetError as exc:
        raise ParamError(f"params: 'data.{name}': {exc}") from None
    try:
        data = fetch_dataset(
            _against(workdir, source), workdir / "data" / "raw" / name, config.get("sha256"),
            key=f"data.{name}.source", check_dataset=name, options=options,
        )
        checkpoint = get(params, "model.checkpoint")
        if checkpoint in OFFICIAL_CHECKPOINTS and not (workdir / checkpoint).exists():
            checkpoint = OFFICIAL_CHECKPOINTS[checkpoint]  # an official file name stands for its URL
        model = fetch_model(
            _against(workdir, checkpoint),
            _against(workdir, get(params, "model.tokenizer", None)),
            workdir / "data" / "models",
            get(params, "model.checkpoint_sha256", None),
        )
    except DatasetError as exc:
        raise DownloadError(f"data.{name}.source: the fetched files do not make the {name} dataset: {exc}") from None
    return {"data": data, "model": model}
