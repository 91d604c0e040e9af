"""Dataset readers: values, shapes, determinism, splits, and the errors a user sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tokenkit.data import (
    DatasetError,
    build_dataset,
    dataset_modality,
    hash_split,
    load_fashion_mnist,
    pad_collate,
)
from tokenkit.data.audio import FILLETS_ROOT, LIBRIVOX_ROOT
from tokenkit.data.fashion_mnist import fashion_mnist_root

soundfile = pytest.importorskip("soundfile")

needs_fashion = pytest.mark.skipif(
    not fashion_mnist_root().is_dir(), reason="dataset-fashion-mnist not installed"
)
needs_fillets = pytest.mark.skipif(not FILLETS_ROOT.is_dir(), reason="fillets-ng-data-cs not installed")
needs_librivox = pytest.mark.skipif(not LIBRIVOX_ROOT.is_dir(), reason="pocketsphinx-testdata not installed")


# -- registry ------------------------------------------------------------------------------
def test_unknown_name_and_option_are_clear_errors():
    with pytest.raises(DatasetError, match="available: .*fashion-mnist"):
        build_dataset({"name": "mnist"}, "train")
    with pytest.raises(DatasetError, match="no option.*imagesize.*it takes: .*image_size"):
        build_dataset({"name": "synthetic-image", "imagesize": 8}, "train")
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        build_dataset({"name": "synthetic-image"}, "dev")
    assert dataset_modality("fillets-speech") == "audio" and dataset_modality("image-folder") == "image"


# -- Fashion-MNIST ---------------------------------------------------------------------------
@needs_fashion
def test_fashion_mnist_raw_and_dataset_values():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10  # balanced classes
    ds = build_dataset({"name": "fashion-mnist", "num_items": 5}, "test")
    assert len(ds) == 5
    x = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.from_numpy(images[3]).float() / 127.5 - 1)
    rgb = build_dataset({"name": "fashion-mnist", "num_items": 2, "channels": 3, "image_size": 32}, "test")[1]
    assert rgb.shape == (3, 32, 32) and torch.equal(rgb[0], rgb[2]) and rgb.min() >= -1 and rgb.max() <= 1


def test_fashion_mnist_missing_gives_apt_command(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENKIT_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="sudo apt-get install dataset-fashion-mnist"):
        build_dataset({"name": "fashion-mnist"}, "train")


def test_missing_speech_packages_give_apt_commands(tmp_path):
    with pytest.raises(DatasetError, match="sudo apt-get install fillets-ng-data-cs"):
        build_dataset({"name": "fillets-speech", "root": str(tmp_path / "none")}, "train")
    (tmp_path / "level" / "cs").mkdir(parents=True)
    with pytest.raises(DatasetError, match="sudo apt-get install fillets-ng-data-nl"):
        build_dataset({"name": "fillets-speech", "root": str(tmp_path), "languages": ["nl"]}, "train")
    with pytest.raises(DatasetError, match="sudo apt-get install pocketsphinx-testdata"):
        build_dataset({"name": "librivox-test", "root": str(tmp_path / "none")}, "test")


# -- image folder ----------------------------------------------------------------------------
def test_image_folder_resize_and_center_crop(tmp_path):
    # 64 wide x 32 high, each column's value encodes its index: the 32x32 centre crop starts at 16
    cols = (np.arange(64) * 3).astype(np.uint8)
    Image.fromarray(np.tile(cols, (32, 1))).save(tmp_path / "ramp.png")
    Image.new("RGB", (50, 90), (255, 0, 0)).save(tmp_path / "red.jpg", quality=100)
    ds = build_dataset({"name": "image-folder", "root": str(tmp_path), "image_size": 32}, "all")
    assert [p.name for p in ds.files] == ["ramp.png", "red.jpg"]
    ramp, red = ds[0], ds[1]
    assert ramp.shape == red.shape == (3, 32, 32)
    torch.testing.assert_close(ramp[0, 5], torch.from_numpy(cols[16:48]).float() / 127.5 - 1)
    torch.testing.assert_close(red.mean((1, 2)), torch.tensor([1.0, -1.0, -1.0]), atol=0.02, rtol=0)
    gray_cfg = {"name": "image-folder", "root": str(tmp_path), "image_size": 16, "channels": 1}
    gray = build_dataset(gray_cfg, "all")
    assert gray[1].shape == (1, 16, 16)


def test_image_folder_splits(tmp_path):
    for i in range(40):
        Image.new("L", (8, 8), i).save(tmp_path / f"{i:02d}.png")
    sizes = {}
    for split in ("train", "val", "test"):
        ds = build_dataset({"name": "image-folder", "root": str(tmp_path), "image_size": 8,
                            "val_fraction": 0.2, "test_fraction": 0.2}, split)
        sizes[split] = {p.name for p in ds.files}
    assert sum(map(len, sizes.values())) == 40 and not (sizes["train"] & (sizes["val"] | sizes["test"]))
    (tmp_path / "val").mkdir()
    Image.new("L", (8, 8), 7).save(tmp_path / "val" / "only.png")
    val = build_dataset({"name": "image-folder", "root": str(tmp_path), "image_size": 8}, "val")
    assert [p.name for p in val.files] == ["only.png"]
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset({"name": "image-folder", "root": str(tmp_path / "x")}, "train")


def test_hash_split_is_stable_and_partitions():
    names = [f"clip{i}.ogg" for i in range(500)]
    parts = [hash_split(names, s, 0.1, 0.1) for s in ("train", "val", "test")]
    assert sorted(sum(parts, [])) == list(range(500))
    assert 20 < len(parts[1]) < 80 and 20 < len(parts[2]) < 80
    # a name's split depends on the name only, not on the list around it
    rev = names[::-1]
    assert {rev[i] for i in hash_split(rev, "val", 0.1, 0.1)} == {names[i] for i in parts[1]}
    assert {n for n in names if hash_split([n], "val", 0.1, 0.1)} == {names[i] for i in parts[1]}


# -- synthetic --------------------------------------------------------------------------------
def test_synthetic_images_deterministic_and_structured():
    a = build_dataset({"name": "synthetic-image", "num_items": 8, "image_size": 16, "seed": 3}, "train")
    b = build_dataset({"name": "synthetic-image", "num_items": 8, "image_size": 16, "seed": 3}, "train")
    c = build_dataset({"name": "synthetic-image", "num_items": 8, "image_size": 16, "seed": 3}, "test")
    assert torch.equal(a[5], b[5]) and not torch.equal(a[5], a[4]) and not torch.equal(a[5], c[5])
    batch = torch.stack([a[i] for i in range(8)])
    assert batch.shape == (8, 3, 16, 16) and batch.min() >= -1 and batch.max() <= 1
    assert batch.std((1, 2, 3)).min() > 0.05  # not flat
    # structured: neighbouring pixels are strongly correlated (unlike noise)
    corr = torch.corrcoef(torch.stack([batch[..., :-1].flatten(), batch[..., 1:].flatten()]))[0, 1]
    assert corr > 0.8


def test_synthetic_audio_crops_whole_clips_and_pad_collate():
    train = build_dataset({"name": "synthetic-audio", "num_items": 6, "segment_seconds": 0.25}, "train")
    assert all(train[i].shape == (1, 4000) for i in range(6))
    test = build_dataset({"name": "synthetic-audio", "num_items": 6}, "test")
    clips = [test[i] for i in range(6)]
    lengths = [c.shape[1] for c in clips]
    assert len(set(lengths)) > 1 and all(8000 <= n <= 24000 for n in lengths)
    assert torch.equal(clips[2], test[2])  # deterministic
    assert all(0.29 < c.abs().max() <= 0.9 for c in clips)
    x, mask = pad_collate(clips)
    assert x.shape == (6, 1, max(lengths)) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == lengths
    for i, c in enumerate(clips):
        assert torch.equal(x[i, :, : lengths[i]], c) and not x[i, :, lengths[i]:].any()
    centre = build_dataset({"name": "synthetic-audio", "num_items": 2, "segment_seconds": 0.25,
                            "crop": "center"}, "test")[0]
    n = lengths[0]
    assert torch.equal(centre, clips[0][:, (n - 4000) // 2: (n - 4000) // 2 + 4000])
    with pytest.raises(DatasetError, match="expects clips of shape"):
        pad_collate([torch.zeros(2, 5)])


# -- audio files -----------------------------------------------------------------------------
def test_audio_folder_resamples_to_16k_and_mixes_to_mono(tmp_path):
    sr = 22050
    t = np.arange(sr) / sr
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    soundfile.write(tmp_path / "a.wav", np.stack([tone, tone], 1), sr)  # stereo, 1 s
    soundfile.write(tmp_path / "b.flac", 0.25 * np.ones(sr // 2), sr)
    ds = build_dataset({"name": "audio-folder", "root": str(tmp_path)}, "all")
    assert ds.crop == "none"
    a, b = ds[0], ds[1]
    assert a.shape == (1, 16000) and b.shape == (1, 8000)
    spectrum = np.abs(np.fft.rfft(a[0].numpy()))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 s at 16 kHz: bins are 1 Hz
    assert abs(a.abs().max().item() - 0.5) < 0.01
    torch.testing.assert_close(b[0, 500:-500], torch.full((7000,), 0.25), atol=2e-3, rtol=0)
    crops = build_dataset(
        {"name": "audio-folder", "root": str(tmp_path), "segment_seconds": 0.75, "crop": "random"}, "all"
    )
    assert crops[0].shape == crops[1].shape == (1, 12000)  # b is shorter: zero-padded


@needs_librivox
def test_librivox_test_clips_and_transcripts():
    ds = build_dataset({"name": "librivox-test"}, "test")
    assert len(ds) == 5
    assert ds.transcripts[1] == "he was not an ill disposed young man"
    total = sum(ds[i].shape[1] for i in range(5)) / 16000
    assert 24 < total < 26
    with pytest.raises(DatasetError, match="held-out test set .* no 'train' split"):
        build_dataset({"name": "librivox-test"}, "train")


@needs_fillets
def test_fillets_speech_split_disjoint():
    train = build_dataset({"name": "fillets-speech", "segment_seconds": 0.5}, "train")
    val = build_dataset({"name": "fillets-speech"}, "val")
    assert "cs" in train.languages
    assert not set(train.files) & set(val.files) and len(val) > 0.02 * len(train)
    assert train[0].shape == (1, 8000)
    clip = val[0]
    assert clip.shape[0] == 1 and clip.shape[1] > 8000 and 0.05 < clip.abs().max() <= 1
