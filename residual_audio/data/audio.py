"""Deterministic audio front end: decode, mono, resample, int16-quantise, fill/crop to the clip length.

For LAION-CLAP: 48 kHz, int16 round trip, repeat-pad to 10 s (the defaults below); other families
give their own rate, length, fill and quantisation through their front end (`MelFrontEnd`).

Matches what LAION-CLAP's `get_audio_embedding_from_filelist` feeds its model, minus its
two sources of randomness (the `rand_trunc` crop position and the global RNG), and with
an exact-length band-limited resampler: librosa returns 240,001 samples for a 5 s
44.1 kHz clip, which makes LAION's repeat-pad append 5 s of silence instead of a second
repeat. `load_laion_api` loads a file as LAION's API does, for `preprocess.front_end: laion_api`.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SAMPLE_RATE = 48000
CLIP_SAMPLES = 480000  # 10 s
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000
MIN_SECONDS = 0.1  # default of `preprocess.min_seconds`


class AudioError(ValueError):
    """The audio file cannot be used; the message names the file."""


def check_wav_complete(path: Path) -> None:
    """A WAV whose header promises more sample data than the file holds is refused.

    libsndfile silently reads what is there, so a truncated copy would pass as a shorter clip.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not a plain RIFF/WAVE file (RF64, other formats): libsndfile checks those
        size = path.stat().st_size
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk, length = f.read(4), int.from_bytes(f.read(4), "little")
            if chunk == b"data":
                if length not in (0, 0xFFFFFFFF) and offset + 8 + length > size:
                    raise AudioError(f"{path}: truncated WAV: the header promises {length} bytes of samples, "
                                     f"the file holds {size - offset - 8}")
                return
            offset += 8 + length + (length & 1)


def decode(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 mono in [-1, 1] plus its sample rate.

    Multi-channel audio is mixed down by averaging channels. Corrupt, truncated, empty,
    all-silent or non-finite audio raises AudioError naming the file, and so does a
    mix-down whose channels cancel (anti-phase stereo).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    check_wav_complete(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        raise AudioError(f"{path}: cannot decode audio ({exc})") from None
    if data.size == 0:
        raise AudioError(f"{path}: empty audio (no samples)")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioError(f"{path}: unsupported sample rate {sr} Hz (expected {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE})")
    if not np.any(data):
        raise AudioError(f"{path}: audio is entirely silent")
    mono = data.mean(axis=1, dtype=np.float64).astype(np.float32)
    if not np.any(quantize_int16(mono)):
        peak = float(np.abs(data).max())
        raise AudioError(f"{path}: audio is silent once mixed down to mono and quantised to int16 (channel peak "
                         f"{peak:.3g}, mono peak {float(np.abs(mono).max()):.3g}; anti-phase channels cancel)")
    return mono, int(sr)


def check_duration(path, n: int, sr: int, min_seconds: float = MIN_SECONDS) -> None:
    """Refuse a clip shorter than `min_seconds`: it would be repeated many times to fill 10 s."""
    if n / sr < min_seconds:
        raise AudioError(f"{path}: clip lasts {n / sr:.4f} s, shorter than preprocess.min_seconds = {min_seconds}")


def check_audible(path, x: np.ndarray) -> np.ndarray:
    """After resampling (and LAION's int16 quantisation) the clip must still hold a non-zero sample."""
    if not np.any(x):
        raise AudioError(f"{path}: audio is silent after resampling and int16 quantisation")
    return x


def resample(x: np.ndarray, sr: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited polyphase resampling to exactly round(len(x) * target / sr) samples."""
    n_out = int(round(len(x) * target / sr))
    if sr == target:
        return x.astype(np.float32, copy=False)
    ratio = Fraction(target, sr)
    y = resample_poly(x.astype(np.float64), ratio.numerator, ratio.denominator)
    if len(y) >= n_out:
        y = y[:n_out]
    else:
        y = np.pad(y, (0, n_out - len(y)))
    return y.astype(np.float32)


def quantize_int16(x: np.ndarray) -> np.ndarray:
    """LAION's float -> int16 -> float round trip (clip to [-1, 1], scale by 32767, truncate)."""
    q = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    return (q / 32767.0).astype(np.float32)


def crop_offset(n: int, length: int, crop: str | int) -> int:
    """Start of the kept window for a clip longer than `length`: 'start', 'center' or a sample offset."""
    overflow = n - length
    if crop == "start":
        return 0
    if crop == "center":
        return overflow // 2
    if isinstance(crop, (int, np.integer)) and not isinstance(crop, bool):
        return int(min(max(crop, 0), overflow))
    raise ValueError(f"crop must be 'start', 'center' or an integer sample offset, not {crop!r}")


FILLS = ("repeatpad", "repeat")


def fit_length(x: np.ndarray, length: int = CLIP_SAMPLES, crop: str | int = "start", fill: str = "repeatpad") -> np.ndarray:
    """Crop deterministically, or fill a shorter clip: 'repeatpad' (LAION's: whole repeats, then
    zeros) or 'repeat' (msclap's: repeated ceil(length/n) times and cut to length)."""
    n = len(x)
    if n > length:
        start = crop_offset(n, length, crop)
        return x[start : start + length]
    if n < length:
        if fill == "repeat":
            return np.tile(x, -(-length // n))[:length]
        if fill != "repeatpad":
            raise ValueError(f"fill must be one of {FILLS}, not {fill!r}")
        x = np.tile(x, length // n)
        x = np.pad(x, (0, length - len(x)))
    return x


def load_laion_api(path: str | Path) -> np.ndarray:
    """The 48 kHz mono waveform exactly as LAION's `get_audio_embedding_from_filelist` loads it:
    `librosa.load(path, sr=48000)` (librosa's decoding, channel mean and soxr_hq resampler, whose
    length is not always round(n·48000/sr)). Call `decode` first: it validates the file."""
    import librosa

    try:
        x, _ = librosa.load(str(path), sr=SAMPLE_RATE)
    except Exception as exc:  # librosa and its decoders raise many types
        raise AudioError(f"{path}: librosa cannot load the audio ({exc.__class__.__name__}: {exc})") from None
    return np.asarray(x, dtype=np.float32)


def prepare(path: str | Path, crop: str | int = "start", min_seconds: float = MIN_SECONDS) -> tuple[np.ndarray, dict]:
    """The model-ready 10 s, 48 kHz waveform of one file, and facts about the original."""
    x, sr = decode(path)
    check_duration(path, len(x), sr, min_seconds)
    info = {"orig_sr": sr, "duration": len(x) / sr}
    x = check_audible(path, quantize_int16(resample(x, sr)))
    return fit_length(x, CLIP_SAMPLES, crop), info
