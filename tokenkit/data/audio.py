"""Audio readers. Every item is a float tensor ``(1, T)`` in [-1, 1], mono, at 16 kHz.

Training takes fixed-length random crops (``segment_seconds``); evaluation takes whole clips and
batches them with :func:`pad_collate`, which pads to the longest clip and returns the mask of
valid samples. Files are read with soundfile (wav/ogg/flac) and resampled with
``scipy.signal.resample_poly``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._common import DatasetError, check_split, hash_split, limit, require_dir

SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = (".wav", ".ogg", ".flac")
CROPS = ("random", "center", "none")


def resample(x: np.ndarray, orig_rate: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of a 1-D signal from ``orig_rate`` to ``rate`` Hz."""
    if orig_rate == rate:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(orig_rate), int(rate))
    return resample_poly(x, rate // g, orig_rate // g).astype(np.float32)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A sound file as float32 mono ``(T,)`` at ``sample_rate``, clipped to [-1, 1]."""
    try:
        import soundfile
    except ImportError as exc:
        raise DatasetError("reading audio needs soundfile: pip install 'tokenkit[audio]'") from exc
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return np.clip(resample(mono, rate, sample_rate), -1.0, 1.0).astype(np.float32)


def pad_collate(batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Clips ``(1, T_i)`` -> ``(x (B, 1, T_max), mask (B, T_max) bool)``; padding is zeros, mask False."""
    if not batch:
        raise DatasetError("pad_collate got an empty batch")
    for t in batch:
        if t.dim() != 2 or t.shape[0] != 1:
            raise DatasetError(f"pad_collate expects clips of shape (1, T), got {tuple(t.shape)}")
    longest = max(t.shape[1] for t in batch)
    x = batch[0].new_zeros(len(batch), 1, longest)
    mask = torch.zeros(len(batch), longest, dtype=torch.bool)
    for i, t in enumerate(batch):
        x[i, :, : t.shape[1]] = t
        mask[i, : t.shape[1]] = True
    return x, mask


class AudioClips(Dataset, ABC):
    """Base of the audio readers: subclasses give ``_num_clips`` and ``_load(i) -> float32 (T,)``.

    crop: ``"random"`` (training: a random ``segment_seconds`` window, zero-padded when the clip is
    shorter), ``"center"`` (the middle window), ``"none"`` (whole clips; batch with pad_collate).
    """

    def __init__(
        self, split: str, segment_seconds: float | None = 1.0, crop: str | None = None, cache: bool = False
    ) -> None:
        check_split(split)
        crop = crop or ("random" if split == "train" else "none")
        if crop not in CROPS:
            raise DatasetError(f"crop must be one of {CROPS}, got {crop!r}")
        if crop != "none" and (segment_seconds is None or segment_seconds <= 0):
            raise DatasetError(f"crop={crop!r} needs segment_seconds > 0, got {segment_seconds}")
        self.split, self.crop, self.cache = split, crop, cache
        self.sample_rate = SAMPLE_RATE
        self.segment = round(segment_seconds * SAMPLE_RATE) if segment_seconds else None
        self._cached: dict[int, np.ndarray] = {}

    @abstractmethod
    def _num_clips(self) -> int:
        """How many clips the dataset holds."""

    @abstractmethod
    def _load(self, i: int) -> np.ndarray:
        """Clip ``i`` as float32 mono ``(T,)`` at 16 kHz."""

    def clip(self, i: int) -> np.ndarray:
        """The whole clip ``i`` as float32 ``(T,)`` (cached in memory when ``cache=True``)."""
        if i in self._cached:
            return self._cached[i]
        x = self._load(i)
        if self.cache:
            self._cached[i] = x
        return x

    def __len__(self) -> int:
        return self._num_clips()

    def __getitem__(self, i: int) -> Tensor:
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} out of range for {len(self)} clips")
        x = torch.from_numpy(np.ascontiguousarray(self.clip(i)))
        if self.crop != "none":
            x = self._window(x)
        return x[None].clone()

    def _window(self, x: Tensor) -> Tensor:
        n = self.segment
        if x.numel() <= n:
            return torch.nn.functional.pad(x, (0, n - x.numel()))
        if self.crop == "random":
            start = int(torch.randint(0, x.numel() - n + 1, ()).item())
        else:
            start = (x.numel() - n) // 2
        return x[start : start + n]


class AudioFiles(AudioClips):
    """A fixed list of sound files."""

    def __init__(self, files: Sequence[Path], split: str, **options) -> None:
        super().__init__(split, **options)
        self.files = list(files)

    def _num_clips(self) -> int:
        return len(self.files)

    def _load(self, i: int) -> np.ndarray:
        return load_audio(self.files[i])


def list_audio(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def _split_files(
    files: list[Path], root: Path, split: str, val_fraction: float, test_fraction: float, num_items
) -> list[Path]:
    names = [p.relative_to(root).as_posix() for p in files]
    chosen = [files[i] for i in hash_split(names, split, val_fraction, test_fraction)]
    return [chosen[i] for i in limit(list(range(len(chosen))), num_items)]


class AudioFolder(AudioFiles):
    """Every wav/ogg/flac under ``root``; ``root/<split>`` when it exists, else split by name hash."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        num_items: int | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        **options,
    ) -> None:
        check_split(split)
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"audio folder {root} does not exist; pass root=<a folder of wav/ogg/flac>")
        if split != "all" and (root / split).is_dir():
            files = list_audio(root / split)[:num_items] if num_items else list_audio(root / split)
        else:
            files = _split_files(list_audio(root), root, split, val_fraction, test_fraction, num_items)
        if not files:
            exts = ", ".join(AUDIO_EXTENSIONS)
            raise DatasetError(f"no audio files for split {split!r} under {root} ({exts})")
        super().__init__(files, split, **options)


FILLETS_ROOT = Path("/usr/share/games/fillets-ng/sound")


class FilletsSpeech(AudioFiles):
    """Recorded voice-acted dialogue of the game Fish Fillets NG (Debian ``fillets-ng-data-<lang>``).

    Czech (``cs``: 1,882 clips, 106 min) and, when installed, Dutch (``nl``: 1,616 clips, 96 min);
    files live in ``<root>/<level>/<lang>/*.ogg``. ``languages=None`` takes ``cs`` plus any other
    installed language; name a language explicitly to require it. Split by a hash of the file path.
    """

    def __init__(
        self,
        split: str = "train",
        languages: Sequence[str] | None = None,
        root: str | Path = FILLETS_ROOT,
        num_items: int | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.0,
        **options,
    ) -> None:
        check_split(split)
        root = require_dir(root, "fillets-ng-data-cs", "Fish Fillets NG speech")
        langs = list(languages) if languages else ["cs", "nl"]
        files = []
        for lang in langs:
            found = sorted(root.glob(f"*/{lang}/*.ogg"))
            if not found and (languages or lang == "cs"):
                raise DatasetError(
                    f"no {lang!r} speech under {root}: it comes from the Debian package "
                    f"fillets-ng-data-{lang}; install it with: sudo apt-get install fillets-ng-data-{lang}"
                )
            files += found
        self.languages = sorted({p.parent.name for p in files})
        files = _split_files(files, root, split, val_fraction, test_fraction, num_items)
        if not files:
            raise DatasetError(
                f"no fillets speech for split {split!r} (val_fraction={val_fraction}, "
                f"test_fraction={test_fraction}); raise that fraction to get a {split} set"
            )
        super().__init__(files, split, **options)


LIBRIVOX_ROOT = Path("/usr/share/pocketsphinx/test/data/librivox")


class LibriVoxTest(AudioFiles):
    """Five transcribed LibriVox clips (24.7 s, 16 kHz) from Debian ``pocketsphinx-testdata``.

    A held-out English test set: splits ``test``, ``val`` and ``all`` all give the same clips and
    ``train`` is refused. ``transcripts[i]`` is the text of clip ``i``.
    """

    def __init__(self, split: str = "test", root: str | Path = LIBRIVOX_ROOT, num_items: int | None = None,
                 **options) -> None:
        if split == "train":
            raise DatasetError(
                "librivox-test is a held-out test set (5 clips) and has no 'train' split; train on "
                "fillets-speech or an audio-folder and evaluate here with split 'test'"
            )
        check_split(split, ("test", "val", "all"))
        root = require_dir(root, "pocketsphinx-testdata", "LibriVox test clips")
        files = sorted(root.glob("*.wav"))
        if not files:
            raise DatasetError(
                f"no wav files in {root}; reinstall: sudo apt-get install --reinstall pocketsphinx-testdata"
            )
        files = files[:num_items] if num_items else files
        texts = _read_transcripts(root / "transcription")
        self.transcripts = [texts.get(p.stem, "") for p in files]
        options.setdefault("crop", "none")
        super().__init__(files, split, **options)


def _read_transcripts(path: Path) -> dict[str, str]:
    """Sphinx transcription lines ``<s> words </s> (utterance-id)`` -> {id: words}."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line.endswith(")") or "(" not in line:
            continue
        text, _, uid = line[:-1].rpartition("(")
        words = [w for w in text.split() if w not in ("<s>", "</s>")]
        out[uid.strip()] = " ".join(words)
    return out
