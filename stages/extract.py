"""DVC stage `extract`: data/mel/<dataset>.zarr -> data/heads/<dataset>.zarr (see README)."""

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.clap import CheckpointError  # noqa: E402
from residual_audio.extract import MelStoreError, run  # noqa: E402
from residual_audio.params import ParamError, load_params  # noqa: E402


def main() -> None:
    # a terminated run unwinds like an interrupted one, so no partial store is left behind
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        out = run(load_params("params.yaml"))
    except (ParamError, MelStoreError, CheckpointError) as exc:
        sys.exit(f"extract: {exc}")
    print(f"extract: wrote {out}")


if __name__ == "__main__":
    main()
