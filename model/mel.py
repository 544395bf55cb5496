"""Log-mel features, the NeMo ``AudioToMelSpectrogramPreprocessor`` recipe in eval mode (torch only).

Steps (see the reference README): pre-emphasis 0.97, centred STFT with zero padding and a
symmetric Hann window, power spectrum, slaney mel filterbank, ``log(x + 2**-24)``, per-feature
normalisation over the valid frames (unbiased std + 1e-5), frames past the valid length set to
``pad_value``. Output ``[features, 1 + T // hop]``; the valid length is ``T // hop``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from model.config import PreprocessorConfig

PREEMPHASIS = 0.97
LOG_GUARD = 2.0**-24
STD_GUARD = 1e-5


def _hz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    above = freq >= min_log_hz
    mels = np.where(above, min_log_mel + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep, mels)
    return mels


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    above = mels >= min_log_mel
    return np.where(above, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                          fmax: float | None = None) -> np.ndarray:
    """librosa.filters.mel(htk=False, norm='slaney') computed in float64, returned as float32."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    mel_lo, mel_hi = _hz_to_mel_slaney(np.array([fmin, fmax], dtype=np.float64))
    mel_f = _mel_to_hz_slaney(np.linspace(mel_lo, mel_hi, n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, None]
    return weights.astype(np.float32)


class MelFrontend(nn.Module):
    """Waveform batch [B, T] at ``sample_rate`` -> (features [B, n_mels, 1 + T//hop], valid lengths [B])."""

    def __init__(self, config: PreprocessorConfig) -> None:
        super().__init__()
        self.config = config
        self.n_fft = config.n_fft
        self.hop_length = config.hop_length
        self.win_length = config.win_length
        self.pad_value = config.pad_value
        window = torch.hann_window(self.win_length, periodic=False)
        fb = slaney_mel_filterbank(config.sample_rate, config.n_fft, config.features)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("filterbank", torch.from_numpy(fb), persistent=False)

    def valid_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(num_samples, self.hop_length, rounding_mode="floor").to(torch.long)

    @torch.no_grad()
    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if waveform.dim() != 2:
            raise ValueError(f"waveform must be [batch, samples], got shape {list(waveform.shape)}")
        x = waveform.to(self.filterbank.dtype)
        lengths = lengths.to(device=x.device, dtype=torch.long)
        time_mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        x = torch.cat((x[:, :1], x[:, 1:] - PREEMPHASIS * x[:, :-1]), dim=1)
        x = x.masked_fill(~time_mask, 0.0)
        spec = torch.stft(
            x, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
            window=self.window, center=True, pad_mode="constant", return_complex=True,
        )
        spec = torch.view_as_real(spec)
        magnitude = torch.sqrt(spec.pow(2).sum(-1))
        power = magnitude.pow(2.0)
        mel = torch.matmul(self.filterbank, power)
        mel = torch.log(mel + LOG_GUARD)
        valid = self.valid_frames(lengths)
        frames = mel.shape[-1]
        mask = torch.arange(frames, device=x.device)[None, :] < valid[:, None]
        count = mask.sum(dim=1).to(mel.dtype)[:, None]
        mean = torch.where(mask[:, None, :], mel, 0.0).sum(dim=2) / count
        centred = torch.where(mask[:, None, :], mel - mean[:, :, None], 0.0)
        std = torch.sqrt(centred.pow(2).sum(dim=2) / (count - 1.0))
        std = std.masked_fill(std.isnan(), 0.0) + STD_GUARD
        features = (mel - mean[:, :, None]) / std[:, :, None]
        features = features.masked_fill(~mask[:, None, :], self.pad_value)
        return features, valid
