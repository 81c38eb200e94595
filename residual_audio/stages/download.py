"""The `download` stage: one dataset's sources into data/raw/<dataset>/ (every local source checked before anything is written)."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.params import ParamError, get
from ..data.datasets import DatasetError, check_options
from ..data.fetch import (
    OFFICIAL_SOURCES,
    OFFLINE_HINTS,
    DownloadError,
    NetworkError,
    _against,
    _as_list,
    _none,
    check_local_sources,
    fetch_dataset,
)
from ..data.paths import RAW_DIR


def run(params: dict, name: str, workdir: str | os.PathLike = ".") -> dict:
    """The `download` stage of one dataset: its sources into data/raw/<name>/ (every local source
    checked to exist before anything is written)."""
    workdir = Path(workdir)
    config = get(params, f"data.{name}")
    source = config["source"]
    if _none(source) if not isinstance(source, list) else not source:
        source = OFFICIAL_SOURCES[name]
        if source is None:
            raise ParamError(f"params: 'data.{name}.source' must be set (a URL, a local directory or an archive)")
    options = {k: v for k, v in config.items() if k not in ("source", "sha256", "limit")}
    try:
        check_options(name, options)
    except DatasetError as exc:
        raise ParamError(f"params: 'data.{name}': {exc}") from None
    source = _against(workdir, source)
    check_local_sources([(f"data.{name}.source", s) for s in _as_list(source)])
    max_mb = get(params, "download.max_unpacked_mb")
    max_members = get(params, "download.max_members")
    try:
        return fetch_dataset(
            source, workdir / RAW_DIR / name, config["sha256"],
            key=f"data.{name}.source", check_dataset=name, options=options,
            limits=(int(max_mb * 2**20), int(max_members)),
        )
    except NetworkError as exc:
        raise NetworkError(f"data.{name}.source: {exc}; {OFFLINE_HINTS['data'].format(name=name)}") from None
    except DatasetError as exc:
        raise DownloadError(f"data.{name}.source: the fetched files do not make the {name} dataset: {exc}") from None
