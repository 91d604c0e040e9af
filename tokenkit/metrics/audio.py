"""Speech quality metrics for 16 kHz clips, offline.

- PESQ wideband (ITU-T P.862.2) through the ``pesq`` package, MOS-LQO in about [1.04, 4.64].
- STOI (Taal, Hendriks, Heusdens, Jensen, "An algorithm for intelligibility prediction of
  time-frequency weighted noisy speech", IEEE TASLP 2011) through ``pystoi``, in [0, 1].

Both compare a reference clip with its reconstruction, one clip at a time (1-D float arrays).
"""

from __future__ import annotations

import math

import numpy as np
import torch

SAMPLE_RATE = 16_000


def _clip(x, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    a = a.reshape(-1) if a.ndim > 1 and a.size == max(a.shape) else a
    if a.ndim != 1:
        raise ValueError(f"{name} must be one mono clip (T,) or (1, T), got shape {a.shape}")
    return a


def _pair(ref, deg) -> tuple[np.ndarray, np.ndarray]:
    r, d = _clip(ref, "reference"), _clip(deg, "degraded")
    if r.shape != d.shape:
        raise ValueError(f"reference and degraded clips differ in length: {r.shape[0]} vs {d.shape[0]}")
    return r, d


def pesq_wb(ref, deg, sample_rate: int = SAMPLE_RATE) -> float:
    """Wideband PESQ of ``deg`` against ``ref`` (16 kHz); NaN when PESQ finds no speech in ``ref``."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"PESQ-WB is defined at 16 kHz, got sample_rate={sample_rate}; resample first")
    try:
        from pesq import NoUtterancesError, pesq
    except ImportError as exc:
        raise RuntimeError("PESQ needs the pesq package: pip install 'tokenkit[audio]'") from exc
    r, d = _pair(ref, deg)
    try:
        return float(pesq(sample_rate, r, d, "wb"))
    except NoUtterancesError:
        return math.nan


def stoi(ref, deg, sample_rate: int = SAMPLE_RATE, extended: bool = False) -> float:
    """Short-time objective intelligibility of ``deg`` against ``ref`` (``extended=True``: ESTOI)."""
    try:
        from pystoi import stoi as _stoi
    except ImportError as exc:
        raise RuntimeError("STOI needs the pystoi package: pip install 'tokenkit[audio]'") from exc
    r, d = _pair(ref, deg)
    return float(_stoi(r, d, sample_rate, extended=extended))
