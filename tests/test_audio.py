"""Audio front end: exact lengths, band-limited resampling, LAION-compatible padding, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from residual_audio.data import audio


def tone(sr: int, seconds: float, freq: float = 1000.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 32000, 44100, 48000, 96000])
def test_resample_gives_exact_length_and_keeps_the_tone(sr):
    x = tone(sr, 5.0, freq=1000.0)
    y = audio.resample(x, sr)
    assert len(y) == round(len(x) * 48000 / sr) == 240000
    spectrum = np.abs(np.fft.rfft(y[4800:-4800] * np.hanning(len(y) - 9600)))
    freqs = np.fft.rfftfreq(len(y) - 9600, 1 / 48000)
    assert abs(freqs[spectrum.argmax()] - 1000.0) < 2.0


def test_resample_is_band_limited():
    """A 20 kHz tone at 44.1 kHz goes to 48 kHz without aliasing; downsampling removes it."""
    x = tone(44100, 1.0, freq=20000.0)
    y = audio.resample(x, 44100)
    spectrum = np.abs(np.fft.rfft(y))
    freqs = np.fft.rfftfreq(len(y), 1 / 48000)
    assert abs(freqs[spectrum.argmax()] - 20000) < 5
    down = audio.resample(y, 48000, target=16000)
    assert np.abs(down[1000:-1000]).max() < 0.01  # above Nyquist of 16 kHz: filtered out


def test_repeat_pad_matches_laion():
    """LAION's repeatpad: int(max_len / n) whole repeats, then zeros."""
    x = np.arange(1, 240001, dtype=np.float32)
    y = audio.fit_length(x, 480000)
    assert np.array_equal(y, np.concatenate([x, x]))
    x = np.arange(1, 150001, dtype=np.float32)
    y = audio.fit_length(x, 480000)
    assert np.array_equal(y[:450000], np.tile(x, 3)) and not y[450000:].any()


def test_crop_is_deterministic():
    x = np.arange(600000, dtype=np.float32)
    assert audio.fit_length(x, 480000, "start")[0] == 0
    assert audio.fit_length(x, 480000, "center")[0] == 60000
    assert audio.fit_length(x, 480000, 1000)[0] == 1000
    assert audio.fit_length(x, 480000, 10**9)[0] == 120000
    with pytest.raises(ValueError, match="crop"):
        audio.fit_length(x, 480000, "random")


def test_quantize_is_laion_int16_round_trip():
    x = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 1.5], dtype=np.float32)
    q = audio.quantize_int16(x)
    expected = (np.clip(x, -1, 1) * 32767.0).astype(np.int16) / 32767.0
    assert np.array_equal(q, expected.astype(np.float32))


def test_prepare_stereo_44k_to_mono_48k(tmp_path):
    path = tmp_path / "stereo.wav"
    x = tone(44100, 5.0, channels=2)
    x[:, 1] *= 0.5
    sf.write(path, x, 44100, subtype="PCM_16")
    y, info = audio.prepare(path)
    assert y.shape == (480000,) and y.dtype == np.float32
    assert info == {"orig_sr": 44100, "duration": 5.0}
    # two whole repeats of the 5 s clip, no silence appended
    assert np.array_equal(y[:240000], y[240000:])
    assert np.abs(y[-4800:]).max() > 0.1


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"RIFF\x00\x00garbage"), "cannot decode"),
    (lambda p: sf.write(p, np.zeros((0,), np.float32), 16000), "empty audio"),
    (lambda p: sf.write(p, np.zeros(16000, np.float32), 16000), "entirely silent"),
    (lambda p: sf.write(p, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT"), "NaN"),
    (lambda p: sf.write(p, tone(2000, 1.0, 100.0), 2000), "unsupported sample rate"),
])
def test_bad_audio_names_the_file(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(audio.AudioError, match=f"bad.wav: .*{message}"):
        audio.prepare(path)


def test_missing_file(tmp_path):
    with pytest.raises(audio.AudioError, match="missing.wav: audio file not found"):
        audio.decode(tmp_path / "missing.wav")


@pytest.mark.shared
def test_real_esc50_clip_prepares_like_laion_modulo_resampler(shared_data):
    """The real clips are 5 s at 44.1 kHz: resampled to exactly 240,000 samples and repeated twice."""
    path = next((shared_data / "esc50-fold4" / "audio").glob("*.wav"))
    y, info = audio.prepare(path)
    assert info["orig_sr"] == 44100 and info["duration"] == 5.0
    assert np.array_equal(y[:240000], y[240000:])
