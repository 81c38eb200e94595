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

from ..core import logs
from ..core.io import atomic_path, remove_stale, sha256_file
from ..models import hf, msclap  # a transformers ClapModel (hub repo or local folder); MS-CLAP's official names
from ..models.checkpoints import CheckpointError, default_tokenizer, read_file
from ..models.laion import check_finite_weights
from .datasets import DATASETS, DatasetError, list_clips

# Each dataset's official sources (`data.<name>.source: null`), from its entry in `datasets.DATASETS`.
OFFICIAL_SOURCES: dict[str, list[str] | None] = {name: list(d.sources) or None for name, d in DATASETS.items()}
CHECKPOINT_BASE_URL = "https://huggingface.co/lukewys/laion_clap/resolve/main/"
# Official file names, each standing for its hub URL: LAION-CLAP's, then MS-CLAP 2023's.
OFFICIAL_CHECKPOINTS = {
    **{name: CHECKPOINT_BASE_URL + name for name in (
        "630k-audioset-best.pt",
        "630k-best.pt",
        "music_audioset_epoch_15_esc_90.14.pt",
        "music_speech_audioset_epoch_15_esc_89.98.pt",
        "music_speech_epoch_15_esc_89.25.pt",
    )},
    **msclap.OFFICIAL_CHECKPOINTS,
}
REFUSED_CHECKPOINTS = dict(msclap.REFUSED)  # official names of models the pipeline cannot run, with the reason
# Published sha256 of the official files, checked whenever the name is used (a user's own
# file is checked only against `model.checkpoint_sha256`). Add a file's hash here only as
# published by its authors (e.g. the LFS sha256 on its Hugging Face file page); none is
# recorded yet, so until then official files are checked only against a given sha256.
OFFICIAL_SHA256: dict[str, str] = {}
TOKENIZER_FILES = ("vocab.json", "merges.txt")
MANIFEST = "manifest.json"
HF_PREFIX = "hf:"  # model.checkpoint: hf:<owner>/<name>, a transformers ClapModel on the hub
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
URL_SCHEMES = ("http", "https", "file")
CHUNK = 1 << 20
# Defaults of `download.max_unpacked_mb` / `download.max_members` (archive bomb guards).
MAX_UNPACKED_MB = 65536
MAX_MEMBERS = 1_000_000


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


class NetworkError(DownloadError):
    """A URL could not be reached (no network, unknown host, timeout)."""


OFFLINE_HINTS = {
    "data": "offline? point 'data.{name}.source' at a local copy (a directory or an archive), "
            "e.g. dvc exp run -S data.{name}.source=path/to/copy",
    "checkpoint": "offline? point 'model.checkpoint' at a local file or folder, or use seeded random weights "
                  "for a dry run: dvc exp run -S model.checkpoint=random",
    "tokenizer": "offline? point 'model.tokenizer' at a local folder holding vocab.json and merges.txt",
}


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
                with logs.progress(
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
            raise NetworkError(f"{url}: download failed ({exc.reason})") from None
        except (OSError, ValueError) as exc:  # timeouts, resets, malformed URLs
            raise NetworkError(f"{url}: download failed ({exc.__class__.__name__}: {exc})") from None
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
        raise DownloadError(not_found(key, path, what) if what == "not found" else f"{key}: {path} {what}")
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


def _member_name(name: str) -> str:
    return os.path.normpath(name.replace("\\", "/")).lstrip("/")


def check_members(members: list[tuple[str, int, str]], label: str, max_bytes: int, max_members: int) -> None:
    """Refuse an archive before anything is written: too many members or bytes (a bomb),
    links (they would point elsewhere or turn into text files), or the same path twice."""
    if len(members) > max_members:
        raise DownloadError(f"{label}: archive has {len(members)} members, over the limit "
                            f"download.max_members = {max_members}")
    total = sum(size for _, size, _ in members)
    if total > max_bytes:
        raise DownloadError(f"{label}: archive unpacks to {total / 2**20:.1f} MiB, over the limit "
                            f"download.max_unpacked_mb = {max_bytes / 2**20:g}")
    seen: set[str] = set()
    for name, _, kind in members:
        if kind == "link":
            raise DownloadError(f"{label}: archive member {name!r} is a link; links are refused")
        if kind not in ("file", "dir"):
            raise DownloadError(f"{label}: archive member {name!r} is not a regular file or folder")
        key = _member_name(name)
        if key in seen and kind == "file":
            raise DownloadError(f"{label}: archive member {name!r} occurs twice")
        seen.add(key)


def _zip_kind(m: zipfile.ZipInfo) -> str:
    mode = (m.external_attr >> 16) & 0o170000
    if mode == 0o120000:
        return "link"
    if m.is_dir():
        return "dir"
    return "file" if mode in (0, 0o100000) else "other"


def _tar_kind(m: tarfile.TarInfo) -> str:
    if m.issym() or m.islnk():
        return "link"
    return "dir" if m.isdir() else "file" if m.isfile() else "other"


def unpack(archive: Path, dest: Path, label: str, max_bytes: int = MAX_UNPACKED_MB << 20,
           max_members: int = MAX_MEMBERS) -> list[str]:
    """Unpack `archive` into `dest`; refuse members that would land outside it, links, duplicate
    members, and archives beyond the size or member-count limits. Return top-level names."""
    kind = archive_kind(label) or archive_kind(archive.name)
    dest = Path(dest).resolve()
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                members = z.infolist()
                check_members([(m.filename, m.file_size, _zip_kind(m)) for m in members], label, max_bytes, max_members)
                for m in members:
                    target = (dest / m.filename).resolve()
                    if target != dest and dest not in target.parents:
                        raise DownloadError(f"{label}: archive member {m.filename!r} points outside the output")
                for m in logs.progress(members, desc=f"unpack {label}", unit="files", leave=False):
                    z.extract(m, dest)
                names = [m.filename for m in members]
        elif kind == "tar":
            with tarfile.open(archive) as t:
                members = []
                for m in t:  # streamed, so the count limit also bounds the listing
                    members.append(m)
                    if len(members) > max_members:
                        raise DownloadError(f"{label}: archive has more than {max_members} members, over the limit "
                                            f"download.max_members = {max_members}")
                check_members([(m.name, m.size if m.isfile() else 0, _tar_kind(m)) for m in members], label,
                              max_bytes, max_members)
                for m in logs.progress(members, desc=f"unpack {label}", unit="files", leave=False):
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
    src = Path(src).resolve()  # the source itself may be a link; links inside it are refused
    names = sorted(child.name for child in src.iterdir())
    for name in names:
        if (dest / name).exists():
            raise DownloadError(f"{src / name}: {name} is already provided by another source")
    check_tree(src)
    for folder, subfolders, files in os.walk(src):
        relative = Path(folder).relative_to(src)
        (dest / relative).mkdir(parents=True, exist_ok=True)
        subfolders.sort()
        for name in sorted(files):
            link_or_copy(Path(folder) / name, dest / relative / name)
    return names


def check_tree(src: Path) -> None:
    """Refuse a source folder holding symbolic links: a link can make a loop, copy clips twice
    (and relabel them as another class) or reach outside the source."""
    for folder, subfolders, files in os.walk(src):
        for name in sorted(subfolders + files):
            path = Path(folder) / name
            if path.is_symlink():
                raise DownloadError(f"{path}: symbolic link to {os.readlink(path)} inside the source; links are "
                                    "not followed (copy the files, or point the source at the link's target)")
            if name in files and not path.is_file():
                raise DownloadError(f"{path}: not a regular file")


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


def place(source: str, dest: Path, sha256: str | None, key: str, limits: tuple[int, int] | None = None) -> dict:
    """Fetch one dataset source into directory `dest`: unpack archives, copy directories and files."""
    name = source_name(source)
    local = None if is_url(source) else Path(source).expanduser()
    if local is not None and not local.exists():
        raise DownloadError(not_found(key, local))
    if local is not None and local.is_dir():
        if sha256 is not None:
            raise DownloadError(f"{key}: a sha256 was given but {local} is a directory (only files can be verified)")
        return {"source": source, "kind": "directory", "entries": copy_tree(local, dest)}
    staged = dest / f".fetch-{uuid.uuid4().hex[:8]}-{name}"
    try:
        digest = fetch_file(source, staged, sha256, key)
        if archive_kind(name):
            entries = unpack(staged, dest, name, *(limits or ()))
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
    """Delete what interrupted earlier runs (killed mid-download) left next to `out`, never a live run's."""
    remove_stale(out)


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


def _in_sources(message: str, tmp: Path, fetched: list[dict]) -> str:
    """`message` with paths inside the temporary output replaced by the sources they came from."""
    for base in {str(tmp), str(Path(tmp).resolve())}:
        for entry in fetched:
            for name in entry.get("entries", []):
                where = {"directory": f"{Path(entry['source']) / name}", "archive": f"{entry['source']}:{name}"}
                message = message.replace(f"{base}/{name}", where.get(entry.get("kind"), str(entry["source"])))
        message = message.replace(base, "the fetched sources")
    return message


def original_source(raw: Path, path: str | os.PathLike) -> str:
    """The user's original file for a clip under the download output `raw` (from its manifest),
    so that errors name what the user can fix, not the copy. Falls back to `path`."""
    path = Path(path)
    manifest = read_manifest(raw) or {}
    try:
        relative = path.resolve().relative_to(Path(raw).resolve())
    except ValueError:
        return str(path)
    for entry in manifest.get("fetched", []):
        if not relative.parts or relative.parts[0] not in entry.get("entries", []):
            continue
        source = str(entry.get("source"))
        if entry.get("kind") == "directory":
            return str(Path(source) / relative)
        if entry.get("kind") == "archive":
            return f"{source} (member {relative.as_posix()})"
        return source
    return str(path)


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
    limits: tuple[int, int] | None = None,
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
        fetched = [place(s, tmp, h, key, limits) for s, h in zip(sources, sums)]
        manifest = {"requests": requests, "fetched": fetched, "files": _files(tmp)}
        if check_dataset is not None:
            try:
                clips, classes = list_clips(check_dataset, tmp, **(options or {}))
            except DatasetError as exc:  # name the user's sources, not the temporary folder
                raise DatasetError(_in_sources(str(exc), tmp, fetched)) from None
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
    """Fetch the CLAP checkpoint and its family's tokenizer files into `out`; return the manifest.

    `checkpoint` is 'random' (no file: seeded random weights), a URL or a local file, or a
    transformers ClapModel (`hf:<owner>/<name>` or a local folder with config.json), fetched
    into `checkpoint/` with its own tokenizer files when it has them;
    `tokenizer` is a URL base or local directory holding vocab.json and merges.txt, 'auto' (the
    checkpoint's family's own files on the hub, known once the checkpoint is placed), or
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
    auto = not _none(tokenizer) and str(tokenizer).strip().lower() == "auto"
    if not auto and not _none(tokenizer) and is_url(str(tokenizer)):
        tokenizer = str(tokenizer).rstrip("/") + "/"  # 'base' and 'base/' name the same files

    def tokenizer_request(family: str) -> dict | None:  # 'auto' stands for the family's own files
        return None if _none(tokenizer) else _request(default_tokenizer(family) if auto else str(tokenizer), None)

    tok_files = [f"tokenizer/{f}" for f in TOKENIZER_FILES]

    old = read_manifest(out)
    if (
        old is not None
        and (old.get("checkpoint") or {}).get("request") == ckpt_request
        and (old.get("tokenizer") or {}).get("request") == tokenizer_request(old.get("family", "laion"))
        and old.get("files") == _files(out)
    ):
        print(f"{out}: up to date")
        return old

    remove_stale_temporaries(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        manifest: dict = {"weights": "random" if random else "pretrained", "checkpoint": None, "tokenizer": None,
                          "checkpoint_sha256": "random" if random else None}
        if ckpt_request is not None and (str(checkpoint).startswith(HF_PREFIX) or Path(checkpoint).expanduser().is_dir()):
            names = list(((old or {}).get("checkpoint") or {}).get("files", {}))
            if not (names and _reuse(old, out, "checkpoint", ckpt_request, names, tmp)):
                names = [f"{hf.FOLDER}/{n}" for n in fetch_clapmodel(checkpoint, tmp / hf.FOLDER, checkpoint_sha256)]
            files = _describe(tmp, names)
            manifest["checkpoint"] = {"request": ckpt_request, "files": files}
            manifest["checkpoint_sha256"] = {name: f["sha256"] for name, f in files.items()}
        elif ckpt_request is not None:
            if not _reuse(old, out, "checkpoint", ckpt_request, ["checkpoint.pt"], tmp):
                fetch_file(checkpoint, tmp / "checkpoint.pt", checkpoint_sha256, "model.checkpoint")
            try:  # refuse a file that would run code (or is no checkpoint) before it is placed
                family, state = read_file(tmp / "checkpoint.pt", mmap=True)
                check_finite_weights(state, tmp / "checkpoint.pt")
            except CheckpointError as exc:
                raise CheckpointError(str(exc).replace(str(tmp / "checkpoint.pt"), checkpoint, 1)) from None
            manifest["family"] = family
            files = _describe(tmp, ["checkpoint.pt"])
            manifest["checkpoint"] = {"request": ckpt_request, "files": files}
            manifest["checkpoint_sha256"] = files["checkpoint.pt"]["sha256"]
        else:
            manifest["checkpoint"] = {"request": None, "source": "random", "files": {}}
        manifest.setdefault("family", "laion")  # random weights and ClapModel folders are LAION's family
        tok_request = tokenizer_request(manifest["family"])
        if tok_request is not None:
            tokenizer = tok_request["source"]
            if not _reuse(old, out, "tokenizer", tok_request, tok_files, tmp):
                _fetch_tokenizer(str(tokenizer), tmp / "tokenizer")
            manifest["tokenizer"] = {"request": tok_request, "files": _describe(tmp, tok_files),
                                     **({"auto": True} if auto else {})}
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
            raise DownloadError(not_found("model.tokenizer", directory,
                                          f"is not a directory holding {' and '.join(TOKENIZER_FILES)}"))
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
    if (_none(source) or is_url(str(source)) or str(source).strip().lower() in ("random", "auto")
            or str(source).startswith(HF_PREFIX)):
        return source
    path = Path(str(source)).expanduser()
    return str(path if path.is_absolute() else workdir / path)








# --------------------------------------------------------------------------- transformers ClapModel folders


def _hub_listing(repo: str) -> list[str]:
    import urllib.error
    import urllib.request

    url = f"{hf.hub_url()}/api/models/{repo}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "residual-audio"}), timeout=60) as r:
            info = json.loads(r.read().decode("utf-8"))
        return [s["rfilename"] for s in info.get("siblings", [])]
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DownloadError(f"model.checkpoint: cannot list the files of {hf.HUB_PREFIX}{repo} at {url} ({exc})") from None


def select_clapmodel_files(available: list[str], where: str) -> list[str]:
    """config.json, the preferred weights file and the tokenizer files among `available`."""
    if hf.CONFIG not in available:
        raise DownloadError(f"model.checkpoint: {where} holds no {hf.CONFIG}; not a transformers ClapModel")
    weights = [w for w in hf.WEIGHT_FILES if w in available]
    if not weights:
        raise DownloadError(f"model.checkpoint: {where} holds neither {' nor '.join(hf.WEIGHT_FILES)}")
    return [hf.CONFIG, weights[0]] + [f for f in hf.TOKENIZER_FILES if f in available]


def fetch_clapmodel(source: str, dest: str | os.PathLike, sha256: str | None = None) -> list[str]:
    """Put a transformers ClapModel folder (hub repo or local folder) at `dest`; `sha256` checks the weights file.

    A local folder is loaded in full first (its config's sizes, its weights' names, shapes and
    finiteness), so nothing is copied from a bad one; a hub repo is loaded the same way once it is
    downloaded, before the model stage places it. Either way a fused, foreign or absurd model stops
    the stage with one line naming the user's folder or repo, and nothing is placed.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if str(source).startswith(hf.HUB_PREFIX):
        repo = str(source)[len(hf.HUB_PREFIX):]
        if not hf.REPO_ID.fullmatch(repo):
            raise DownloadError(f"model.checkpoint: {source!r} is not a Hugging Face repo id (hf:<owner>/<name>)")
        names = select_clapmodel_files(_hub_listing(repo), source)
        for name in names:
            download_url(f"{hf.hub_url()}/{repo}/resolve/main/{name}", dest / name,
                         sha256 if name in hf.WEIGHT_FILES else None)
    else:
        folder = Path(source).expanduser()
        names = select_clapmodel_files(sorted(p.name for p in folder.iterdir() if p.is_file()), folder)
        hf.load(folder)  # the user's folder checked in full (config sizes, weights' names, shapes, finite) before any copy
        for name in names:
            fetch_file(str(folder / name), dest / name, sha256 if name in hf.WEIGHT_FILES else None, "model.checkpoint")
    try:
        if str(source).startswith(hf.HUB_PREFIX):
            hf.load(dest)  # the downloaded repo in full (config sizes, weights' names, shapes, finite values)
        else:
            hf.read_config(dest)
    except CheckpointError as exc:  # name what the user gave, not the temporary copy
        raise CheckpointError(str(exc).replace(str(dest), str(source))) from None
    return names


QUEUE_DIR = (".dvc", "tmp", "exps")  # where `dvc queue start` runs a queued experiment: a temporary copy


def not_found(key: str, path, what: str = "not found") -> str:
    """`key: path not found`, and for a relative path where it was looked for; inside a queued DVC
    experiment's temporary copy, that such paths must be absolute."""
    line = f"{key}: {path} {what}"
    if Path(str(path)).expanduser().is_absolute():
        return line
    cwd = Path.cwd()
    parts = cwd.parts
    queued = any(parts[i : i + 3] == QUEUE_DIR for i in range(len(parts) - 2))
    if queued:
        return (line + f" (relative to {cwd}, the temporary copy of the project where `dvc queue` runs the "
                "experiment: paths outside the project do not resolve there; give an absolute path)")
    return line + f" (relative to {cwd})"


def check_local_sources(sources: list[tuple[str, object]]) -> None:
    """Every local source must exist before anything is fetched or written (URLs are checked when fetched)."""
    for key, source in sources:
        if _none(source) or is_url(str(source)) or str(source).strip().lower() in ("random", "auto"):
            continue
        if not Path(str(source)).expanduser().exists():
            raise DownloadError(not_found(key, source))
