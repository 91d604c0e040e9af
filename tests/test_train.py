"""The training loop: falling loss for every built-in quantizer, exact resume, checkpoints, recipes."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from tokenkit.quantizers import get as get_quantizer
from tokenkit.registry import RegistryError
from tokenkit.train import load_config, load_model, read_checkpoint, train
from tokenkit.train.cli import main_train
from tokenkit.train.config import ConfigError, RunConfig, TrainSection, apply_overrides
from tokenkit.train.loop import Processes, epoch_batches, fit, item_seeds, lr_at

QUANTIZERS = ["nearest", "ema", "gumbel", "fsq", "matching", "vp", "fsp"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quantizer_config(name: str, modality: str) -> dict:
    if name in ("fsq", "fsp"):
        return {"levels": [5, 5, 5]}
    if name == "vp":
        return {"codebook_size": 32, "latent_dim": 3}
    if name == "matching":  # needs K >= tokens per item (image: 8 x 8, audio: up to 8000 / 20)
        return {"codebook_size": 64 if modality == "image" else 512}
    return {"codebook_size": 32}


def recipe(out_dir: Path, modality: str = "image", quantizer: str = "nearest", **train) -> dict:
    if modality == "image":
        model = {"architecture": "ImageTokenizer", "channels": 3, "base_width": 8, "channel_mults": [1, 2],
                 "latent_dim": 8}
        data = {"name": "synthetic-image", "image_size": 16, "num_items": 32}
    else:
        model = {"architecture": "AudioTokenizer", "base_width": 8, "strides": [4, 5], "dilations": [1],
                 "latent_dim": 8, "stft_sizes": [64, 128, 256]}
        # clips of 0.3-0.5 s: training takes random 0.25 s crops, evaluation whole clips
        data = {"name": "synthetic-audio", "num_items": 16, "segment_seconds": 0.25, "min_seconds": 0.3,
                "max_seconds": 0.5}
    model.update(quantizer=quantizer, quantizer_config=quantizer_config(quantizer, modality))
    t = {"steps": 30, "batch_size": 4, "lr": 3e-3, "eval_every": 0, "eval_batches": 2, "ckpt_every": 0,
         "log_every": 10, "out_dir": str(out_dir), "progress": False, "threads": 1}
    t.update(train)
    return {"model": model, "data": data, "train": t}


def require(name: str) -> None:
    try:
        get_quantizer(name)
    except RegistryError as exc:
        pytest.skip(f"quantizer {name!r} is not importable yet: {exc}")


# -- every quantizer trains ---------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["image", "audio"])
@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_loss_falls(tmp_path, modality, quantizer):
    require(quantizer)
    summary = train(recipe(tmp_path, modality, quantizer))
    losses = summary["loss_history"]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, f"{modality}/{quantizer}: loss did not fall ({first:.4f} -> {last:.4f})"
    ev = summary["eval"]
    assert ev["items"] > 0 and 0 < ev["usage"] <= 1 and ev["perplexity"] >= 1
    assert math.isfinite(ev["recon_loss"])


# -- exact resume -------------------------------------------------------------------------------
def _weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(out_dir / "checkpoint.safetensors").model


@pytest.mark.filterwarnings("ignore:VPQuantizer. no codebook fitted")  # VP's eval fallback mid-run
@pytest.mark.parametrize(
    "modality, quantizer",
    [("image", "nearest"), ("image", "ema"), ("image", "gumbel"), ("image", "vp"), ("image", "fsp"),
     ("audio", "nearest")],
)
def test_resume_is_exact(tmp_path, modality, quantizer):
    """k steps + resume + k steps == 2k steps in one go, bit for bit (buffers, RNG, data order)."""
    require(quantizer)
    k = 5  # 32 images (16 clips) / batch 4 = 8 (4) batches per epoch: runs cross epoch boundaries
    opts = {"eval_every": 3, "log_every": 2}
    whole = train(recipe(tmp_path / "whole", modality, quantizer, steps=2 * k, **opts))
    half = train(recipe(tmp_path / "split", modality, quantizer, steps=k, **opts))
    rest = train(recipe(tmp_path / "split", modality, quantizer, steps=2 * k, **opts), resume=True)
    assert half["step"] == k and rest["start_step"] == k and rest["step"] == 2 * k
    assert half["loss_history"] + rest["loss_history"] == whole["loss_history"]
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    ckpt = read_checkpoint(tmp_path / "split" / "checkpoint.safetensors")
    per_epoch = recipe(tmp_path, modality)["data"]["num_items"] // 4
    assert ckpt.state.step == 2 * k
    assert (ckpt.state.epoch, ckpt.state.batch_in_epoch) == divmod(2 * k, per_epoch)
    # the log of the resumed run continues the first one without duplicated steps
    steps = [r["step"] for r in map(json.loads, (tmp_path / "split" / "log.jsonl").read_text().splitlines())
             if "eval" not in r]
    assert steps == [2, 4, 5, 6, 8, 10]


def test_random_crops_do_not_depend_on_workers(tmp_path):
    """Each item is loaded under its own seed, so DataLoader workers change nothing."""
    runs = [train(recipe(tmp_path / str(w), "audio", steps=6, num_workers=w)) for w in (0, 2)]
    assert runs[0]["loss_history"] == runs[1]["loss_history"]
    a, b = _weights(tmp_path / "0"), _weights(tmp_path / "2")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_resume_without_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(recipe(tmp_path, steps=2), resume=True)


# -- checkpoints and outputs ---------------------------------------------------------------------
def test_checkpoint_holds_everything_and_loads_back(tmp_path):
    model, summary = fit(recipe(tmp_path, steps=4, ckpt_every=2, eval_every=2, log_every=1))
    files = {p.name for p in tmp_path.iterdir()} - {"pictures"}  # pictures: when tokenkit.pictures exists
    assert files == {"checkpoint.safetensors", "log.jsonl", "recipe.json", "tokenizer"}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files
    ckpt = read_checkpoint(summary["checkpoint"])
    assert ckpt.state.step == 4 and len(ckpt.rng) == 1
    assert ckpt.model_config["architecture"] == "ImageTokenizer"
    assert {"torch", "numpy", "python"} <= set(ckpt.rng[0])
    assert any(k.endswith("/exp_avg") for k in ckpt.optim)
    loaded = load_model(summary["checkpoint"])
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded.encode(x), model.eval().encode(x))
    exported = type(model).from_pretrained(summary["tokenizer"])  # the Hub layout, ready to push
    assert torch.equal(exported.encode(x), model.encode(x))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval" not in r] == [1, 2, 3, 4]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4] and evals[-1]["eval"] == summary["eval"]
    assert {"recon_loss", "psnr", "usage", "perplexity"} <= set(summary["eval"])
    try:
        import tokenkit.pictures  # noqa: F401
    except ImportError:
        return
    pictures = [Path(p) for p in summary["eval"]["pictures"]]
    assert [p.name for p in pictures] == ["recon_0000004.png", "usage_0000004.png"]
    assert all(p.stat().st_size > 0 for p in pictures)
    assert json.loads((tmp_path / "recipe.json").read_text())["train"]["steps"] == 4


def test_post_fit_fits_the_vp_codebook_on_training_latents(tmp_path):
    require("vp")
    from tokenkit.quantizers.vp import FITTED_CODEBOOK, NO_CODEBOOK

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no codebook fitted" fallback: the paper's fit ran first
        model, summary = fit(recipe(tmp_path, "image", "vp", steps=3))
    assert summary["eval"]["post_fit"] == ["fit_codebook"]
    assert int(model.quantizer.codebook_state) == FITTED_CODEBOOK
    # the checkpoint keeps the training state (no fit yet), so --resume continues the same run
    saved = read_checkpoint(summary["checkpoint"]).model["quantizer.codebook_state"]
    assert int(saved) == NO_CODEBOOK


# -- data order ----------------------------------------------------------------------------------
def test_data_order_is_seeded_and_ranks_are_disjoint():
    t = TrainSection(batch_size=3, seed=7)
    data = list(range(20))
    one = [epoch_batches(data, 0, t, Processes(r, 2, torch.device("cpu"), False)) for r in range(2)]
    assert one == [epoch_batches(data, 0, t, Processes(r, 2, torch.device("cpu"), False)) for r in range(2)]
    indices = [i for rank in one for batch in rank for i, _ in batch]
    assert len(indices) == len(set(indices)) == 18  # 10 per rank -> 3 full batches of 3 each
    assert epoch_batches(data, 1, t, Processes(0, 2, torch.device("cpu"), False)) != one[0]
    seeds = item_seeds(7, 0, [0, 1, 2])
    assert seeds == item_seeds(7, 0, [0, 1, 2]) and len(set(seeds)) == 3
    assert seeds[1] == item_seeds(7, 0, [5, 1])[1]  # depends on (seed, epoch, index) only
    assert seeds != item_seeds(7, 1, [0, 1, 2]) and all(0 <= s < 2**63 for s in seeds)


def test_learning_rate_schedule():
    t = TrainSection(steps=110, lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, t) == pytest.approx(0.1) and lr_at(9, t) == pytest.approx(1.0)
    assert lr_at(10, t) == pytest.approx(1.0)
    assert lr_at(60, t) == pytest.approx(0.55)
    assert lr_at(110, t) == pytest.approx(0.1)
    assert lr_at(50, TrainSection(lr=0.5)) == 0.5


# -- recipes and the CLI -------------------------------------------------------------------------
TOML = """
[model]
architecture = "ImageTokenizer"
quantizer = "nearest"
channels = 3
base_width = 8
channel_mults = [1, 2]
latent_dim = 8
[model.quantizer_config]
codebook_size = 32

[data]
name = "synthetic-image"
image_size = 16
num_items = 16

[train]
steps = 100
batch_size = 4
betas = [0.8, 0.9]
progress = false
threads = 1
"""


def test_toml_recipe_and_overrides(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(TOML)
    cfg = load_config(path, ["train.steps=3", "model.quantizer_config.codebook_size=16", "data.seed=4",
                             f"train.out_dir={tmp_path / 'out'}", "train.schedule=\"cosine\""])
    assert isinstance(cfg, RunConfig)
    assert cfg.train.steps == 3 and cfg.train.betas == (0.8, 0.9) and cfg.train.schedule == "cosine"
    assert cfg.model["quantizer_config"] == {"codebook_size": 16} and cfg.data["seed"] == 4
    assert cfg.train.out_dir == str(tmp_path / "out")  # not TOML: kept as a string
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_recipe_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"\[train\] has no key\(s\) \['step'\]"):
        RunConfig.from_dict({"model": {"architecture": "ImageTokenizer"}, "data": {"name": "x"},
                             "train": {"step": 3}})
    with pytest.raises(ConfigError, match="needs an \"architecture\""):
        RunConfig.from_dict({"model": {}, "data": {"name": "x"}})
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.steps"])
    with pytest.raises(ConfigError, match="must start with one of"):
        apply_overrides({}, ["steps=3"])
    with pytest.raises(ConfigError, match="train.batch_size must be >= 1"):
        TrainSection(batch_size=0)
    with pytest.raises(ConfigError, match="no training recipe"):
        load_config(tmp_path / "missing.toml")


RECIPES = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_parse_and_build(path):
    from tokenkit.data import available_datasets
    from tokenkit.models import Tokenizer

    cfg = load_config(path)
    assert cfg.data["name"] in available_datasets()
    try:
        model = Tokenizer.from_config_dict(cfg.model)
    except RegistryError as exc:
        pytest.skip(f"{path.name}: architecture or quantizer not importable yet: {exc}")
    assert model.architecture == cfg.model["architecture"]


def test_cli_trains_and_resumes(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text(TOML)
    out = tmp_path / "out"
    assert main_train([str(path), "--set", "train.steps=2", "--set", f"train.out_dir={out}"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["step"] == 2 and "loss_history" not in first
    assert main_train([str(path), "--resume", "--set", "train.steps=3", "--set", f"train.out_dir={out}"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["start_step"], second["step"]) == (2, 3)
    assert main_train([str(path), "--set", "train.nope=1"]) == 2
    assert "has no key" in capsys.readouterr().err
