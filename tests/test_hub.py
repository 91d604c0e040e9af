"""The Hub: save/load/push in the Hub layout, tokenkit.load by name, pretrained registry, offline use.

Downloads go through the real ``huggingface_hub`` client against ``olah`` (a Hub-compatible
server) on loopback serving git repositories made here from ``save_pretrained`` output; uploads
go to a recorder speaking the Hub upload API (tests/hub_server.py). The client side runs in
subprocesses because ``HF_ENDPOINT``/``HF_HOME``/``HF_HUB_OFFLINE`` are read when
``huggingface_hub`` is imported.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, load_file, save_file

import tokenkit
from tokenkit import hub
from tokenkit.model_card import read_eval_results, read_metadata
from tokenkit.models import Tokenizer
from tokenkit.models.hub_mixin import (
    ChecksumError,
    CorruptFileError,
    HubUnavailableError,
    MissingFileError,
    MissingPluginError,
    WeightsMismatchError,
    sha256_file,
)
from tokenkit.registry import RegistryError

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import (  # noqa: E402
    OlahServer,
    UploadRecorder,
    free_port,
    git_repo_from_folder,
    populate_cache,
    run_client,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
QUANTIZERS = ["nearest", "ema", "gumbel", "fsq", "matching", "vp", "fsp"]
EVAL = {
    "metrics": {"psnr": 24.5, "ssim": 0.81, "cvu": 0.62, "prdc": {"precision": 0.7, "recall": 0.5}},
    "protocol": {"dataset": "fashion-mnist", "split": "test", "num_items": 1000, "seed": 0},
}


# -- tiny tokenizers ------------------------------------------------------------------------------
def quantizer_config(name: str) -> dict:
    """Small settings for each built-in quantizer (16 tokens per item, so matching needs K >= 16)."""
    cls = tokenkit.quantizers.get(name)
    fields = cls.Config.__dataclass_fields__
    config = {}
    if "codebook_size" in fields:
        config["codebook_size"] = 32
    if "levels" in fields:
        config["levels"] = [4, 4]
    if "queue_size" in fields:
        config["queue_size"] = 256
    if "kmeans_iters" in fields:
        config["kmeans_iters"] = 3
    return config


def tiny(modality: str, quantizer: str = "nearest", seed: int = 0, **overrides) -> Tokenizer:
    from tokenkit.models import AudioTokenizer, ImageTokenizer

    torch.manual_seed(seed)
    qcfg = quantizer_config(quantizer)
    if modality == "image":
        cfg = dict(channels=1, base_width=8, channel_mults=(1, 2), latent_dim=4)
        return ImageTokenizer(quantizer=quantizer, quantizer_config=qcfg, **{**cfg, **overrides})
    cfg = dict(base_width=4, strides=(2, 2), dilations=(1,), latent_dim=4, stft_sizes=(16,))
    return AudioTokenizer(quantizer=quantizer, quantizer_config=qcfg, **{**cfg, **overrides})


def example_input(modality: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (3, 1, 8, 8) if modality == "image" else (3, 1, 64)
    return torch.rand(shape, generator=g) * 2 - 1


def trained_once(tok: Tokenizer, x: torch.Tensor) -> Tokenizer:
    """One training forward (k-means inits, EMA updates, queues), then eval and one encode."""
    torch.manual_seed(0)
    tok.train()
    tok(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vp warns when it fits its codebook from the queue
        tok.eval()
        tok.encode(x)
    return tok


def outputs(tok: Tokenizer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encoder latents, tokens and decoded output, on one thread: float sums are bitwise
    reproducible only with the same reduction order, and the subprocess clients use one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            tokens = tok.encode(x)
            return {"z": tok.encode_latents(x, None).z, "tokens": tokens, "decoded": tok.decode(tokens)}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved_once(tmp_path_factory):
    x = example_input("image")
    tok = trained_once(tiny("image"), x)
    folder = tok.save_pretrained(
        tmp_path_factory.mktemp("saved") / "tok", eval_results=EVAL, datasets=["fashion-mnist"]
    )
    return folder, x, outputs(tok, x)


@pytest.fixture
def saved(saved_once, tmp_path):
    """A tiny trained image tokenizer saved to a folder (a fresh copy per test), and its outputs."""
    folder, x, ref = saved_once
    shutil.copytree(folder, tmp_path / "tok")
    return tmp_path / "tok", x, ref


@pytest.fixture
def count_builds(monkeypatch):
    """How many tokenizers ``from_config_dict`` built (0 = the load failed before building anything)."""
    calls = []
    original = Tokenizer.from_config_dict.__func__

    def counting(cls, d):
        calls.append(d.get("architecture"))
        return original(cls, d)

    monkeypatch.setattr(Tokenizer, "from_config_dict", classmethod(counting))
    return calls


# -- save / load round trips ----------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["image", "audio"])
@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_save_load_round_trip_gives_identical_tokens(tmp_path, modality, quantizer):
    if quantizer not in tokenkit.quantizers.available():
        pytest.skip(f"quantizer {quantizer!r} is not installed")
    x = example_input(modality)
    tok = trained_once(tiny(modality, quantizer), x)
    before = outputs(tok, x)
    folder = tok.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = tokenkit.load(folder)
    assert type(loaded) is type(tok) and not loaded.training
    assert loaded.config == tok.config
    after = outputs(loaded, x)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    state, loaded_state = tok.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)


def test_folder_layout_config_and_weights(saved):
    folder, _, _ = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "ImageTokenizer"
    assert config["quantizer"] == "nearest" and config["quantizer_config"] == {"codebook_size": 32}
    assert config["tokenkit_version"] == tokenkit.__version__
    weights = load_file(folder / "model.safetensors")
    assert weights["quantizer.embedding"].shape == (32, 4)
    assert not list(folder.parent.glob(".tok.*"))  # no temporary folder left behind


def test_saved_weights_are_byte_identical_across_processes_and_world_readable(tmp_path):
    """The pinned sha256 of a shipped tokenizer must not depend on the process that wrote it."""
    import os
    import subprocess

    code = (
        "import sys, torch\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_hub import tiny\n"
        "tiny('image').save_pretrained(sys.argv[1])\n"
    )
    digests = []
    for i in range(2):
        folder = tmp_path / f"run{i}"
        subprocess.run([sys.executable, "-c", code, str(folder), str(Path(__file__).parent)], check=True)
        digests.append(sha256_file(folder / "model.safetensors"))
    assert digests[0] == digests[1]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "run0").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "run0" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_model_card_metadata_and_eval_table(saved):
    folder, _, _ = saved
    card = (folder / "README.md").read_text()
    meta = read_metadata(card)
    assert meta["library_name"] == "tokenkit"
    assert {"tokenkit", "image-tokenizer", "ImageTokenizer", "quantizer:nearest"} <= set(meta["tags"])
    assert meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["fashion-mnist"]
    assert "| psnr | 24.5 |" in card and "| prdc.precision | 0.7 |" in card
    assert "| split | test |" in card and "| num_items | 1000 |" in card
    assert read_eval_results(card) == EVAL


def test_card_without_protocol_says_so(tmp_path):
    folder = tiny("image").save_pretrained(tmp_path / "t", eval_results={"psnr": 20.0})
    card = (folder / "README.md").read_text()
    assert "| psnr | 20 |" in card and "did not record its protocol" in card


def test_save_over_existing_folder_replaces_files(saved, tmp_path):
    folder, x, _ = saved
    other = tiny("image", seed=5)
    other.save_pretrained(folder)
    assert torch.equal(tokenkit.load(folder).encode(x), other.encode(x))
    assert sorted(p.name for p in folder.parent.iterdir()) == ["tok"]


def test_failed_save_leaves_no_folder(tmp_path, monkeypatch):
    from tokenkit.models import hub_mixin

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hub_mixin, "_write_weights", broken)
    with pytest.raises(OSError, match="disk full"):
        tiny("image").save_pretrained(tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


# -- clear errors, nothing loaded -----------------------------------------------------------------
def test_wrong_sha256_fails_before_building(saved, count_builds):
    folder, _, _ = saved
    wrong = "0" * 64
    hub.register_pretrained("tiny-wrong-sha", {"path": str(folder), "sha256": wrong, "modality": "image"})
    try:
        with pytest.raises(ChecksumError, match="pinned for it") as err:
            tokenkit.load("tiny-wrong-sha")
    finally:
        hub.registry.unregister("tiny-wrong-sha")
    assert hub.weights_sha256(folder) in str(err.value) and wrong in str(err.value)
    assert count_builds == []


def test_right_sha256_loads(saved):
    folder, x, ref = saved
    hub.register_pretrained(
        "tiny-right-sha", {"path": str(folder), "sha256": hub.weights_sha256(folder), "modality": "image"}
    )
    try:
        assert torch.equal(tokenkit.load("tiny-right-sha").encode(x), ref["tokens"])
    finally:
        hub.registry.unregister("tiny-right-sha")


def test_truncated_safetensors_is_a_clear_error(saved, count_builds):
    folder, _, _ = saved
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        tokenkit.load(folder)
    assert count_builds == []


def test_unknown_architecture_is_a_clear_error(saved, count_builds):
    folder, _, _ = saved
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architecture": "NoSuchTokenizer"}))
    with pytest.raises(MissingPluginError, match="NoSuchTokenizer") as err:
        tokenkit.load(folder)
    assert "ImageTokenizer" in str(err.value)  # lists what is installed
    assert count_builds == []


def test_unknown_quantizer_names_its_plugin_package(saved, count_builds, monkeypatch):
    from tokenkit.models.hub_mixin import KNOWN_PLUGINS

    assert KNOWN_PLUGINS["quantizer"]["lfq"] == "tokenkit-lfq"
    monkeypatch.setitem(KNOWN_PLUGINS["quantizer"], "rvq-unavailable", "tokenkit-rvq-unavailable")
    folder, _, _ = saved
    config = json.loads((folder / "config.json").read_text())
    for name, hint in [("rvq-unavailable", "pip install tokenkit-rvq-unavailable"), ("zzq", "entry point")]:
        (folder / "config.json").write_text(json.dumps({**config, "quantizer": name}))
        with pytest.raises(MissingPluginError, match=hint) as err:
            tokenkit.load(folder)
        assert "Installed: " in str(err.value) and "nearest" in str(err.value)
    assert count_builds == []


def test_mismatched_weights_list_keys_and_shapes(saved, tmp_path):
    folder, _, _ = saved
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantizer_config": {"codebook_size": 64}}))
    with pytest.raises(WeightsMismatchError, match=r"quantizer.embedding: file \(32, 4\) vs model \(64, 4\)"):
        tokenkit.load(folder)
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    dropped = sorted(weights)[0]
    del weights[dropped]
    save_file({**weights, "extra.weight": torch.zeros(2)}, folder / "model.safetensors")
    with pytest.raises(WeightsMismatchError, match="missing keys") as err:
        tokenkit.load(folder)
    assert dropped in str(err.value) and "unexpected keys [extra.weight]" in str(err.value)


def test_missing_files_and_no_pickle_fallback(saved, tmp_path):
    folder, _, _ = saved
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(MissingFileError, match="never loaded"):
        tokenkit.load(folder)
    with pytest.raises(MissingFileError, match="no tokenizer folder"):
        tokenkit.load(str(tmp_path / "does-not-exist"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="config.json"):
        tokenkit.load(tmp_path / "empty")


def test_loading_as_the_wrong_class_is_refused(saved):
    from tokenkit.models import AudioTokenizer

    folder, _, _ = saved
    with pytest.raises(TypeError, match="describes a ImageTokenizer, not a AudioTokenizer"):
        AudioTokenizer.from_pretrained(folder)


# -- the pretrained registry ----------------------------------------------------------------------
def test_pivq_ffhq_entry_is_pinned_with_a_recipe():
    entry = hub.pretrained_entry("pivq-ffhq")
    assert "pivq-ffhq" in tokenkit.list_pretrained()
    assert entry.repo_id == "tokenkit/pivq-ffhq" and entry.revision and entry.modality == "image"
    assert entry.sha256 is None  # not trained yet: nothing to pin
    assert (REPO_ROOT / entry.recipe).is_file()


def test_pivq_ffhq_recipe_is_a_valid_training_config():
    from tokenkit.data import available_datasets
    from tokenkit.train.config import load_config

    recipe = load_config(REPO_ROOT / hub.pretrained_entry("pivq-ffhq").recipe, ["data.root=/data/ffhq"])
    model = dict(recipe.model)
    assert model.pop("architecture") == "PIVQTokenizer" and recipe.data["root"] == "/data/ffhq"
    config = tokenkit.models.get("PIVQTokenizer").Config.from_dict(model)  # every key is a real field
    quantizer = tokenkit.quantizers.get(config.quantizer)
    quantizer.Config(**config.quantizer_config)
    assert config.num_latents <= config.quantizer_config["codebook_size"]  # M distinct codes per image
    assert recipe.data["name"] in available_datasets()


def test_every_shipped_folder_has_a_pinned_entry():
    folders = (REPO_ROOT / "tokenkit" / "pretrained").iterdir()
    shipped = {p.name for p in folders if (p / "config.json").is_file()}
    entries = {n: hub.pretrained_entry(n) for n in tokenkit.list_pretrained()}
    for name in shipped:
        assert name in entries, (
            f"shipped folder tokenkit/pretrained/{name} has no entry in tokenkit/pretrained/__init__.py; add "
            f"one with its sha256 (tokenkit.hub.weights_sha256(folder))"
        )
        entry = entries[name]
        assert entry.path is not None and entry.sha256 == hub.weights_sha256(entry.path), name
        assert tokenkit.load(name).modality == entry.modality


def test_entries_are_validated():
    with pytest.raises(ValueError, match="pins its revision"):
        hub.PretrainedEntry.from_dict("x", {"repo_id": "a/b", "modality": "image"})
    with pytest.raises(ValueError, match="64 lowercase hex"):
        hub.PretrainedEntry.from_dict("x", {"path": "/p", "sha256": "abc", "modality": "image"})
    with pytest.raises(ValueError, match="modality"):
        hub.PretrainedEntry.from_dict("x", {"path": "/p", "modality": "video"})
    with pytest.raises(ValueError, match="unknown key"):
        hub.PretrainedEntry.from_dict("x", {"path": "/p", "modality": "image", "weights": "w"})


def test_unknown_name_lists_known_names_and_hints_hf_hub():
    with pytest.raises(RegistryError, match="pivq-ffhq"):
        tokenkit.load("no-such-tokenizer")
    with pytest.raises(RegistryError, match="hf-hub:org/repo"):
        tokenkit.load("org/repo")


def test_shipped_tokenizer_loads_without_network(saved, monkeypatch):
    import huggingface_hub

    from tokenkit import pretrained

    folder, x, ref = saved

    def no_network(*args, **kwargs):
        raise AssertionError("a shipped tokenizer must not touch the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    entry = {"path": str(folder), "sha256": hub.weights_sha256(folder), "modality": "image"}
    monkeypatch.setitem(pretrained.PRETRAINED, "tiny-shipped", entry)
    assert "tiny-shipped" in tokenkit.list_pretrained()
    assert torch.equal(tokenkit.load("tiny-shipped").encode(x), ref["tokens"])


def test_plugin_entry_point_adds_a_pretrained_name(saved, tmp_path, monkeypatch):
    """A real entry point in group tokenkit.pretrained (a dist-info on sys.path) with a shipped folder."""
    folder, x, ref = saved
    site = tmp_path / "site"
    package = site / "tiny_plugin"
    (package / "weights").mkdir(parents=True)
    for f in folder.iterdir():
        (package / "weights" / f.name).write_bytes(f.read_bytes())
    sha = hub.weights_sha256(folder)
    (package / "__init__.py").write_text(
        f"ENTRY = {{'path': 'weights', 'sha256': '{sha}', 'modality': 'image'}}\n"
    )
    dist = site / "tiny_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tokenkit.pretrained]\ntiny-plugin-tok = tiny_plugin:ENTRY\n")
    monkeypatch.syspath_prepend(str(site))
    hub.registry.refresh()
    try:
        assert "tiny-plugin-tok" in tokenkit.list_pretrained()
        entry = hub.pretrained_entry("tiny-plugin-tok")
        assert entry.package == "tiny-plugin" and Path(entry.path) == package / "weights"
        assert torch.equal(tokenkit.load("tiny-plugin-tok").encode(x), ref["tokens"])
    finally:
        monkeypatch.undo()
        hub.registry.refresh()
    assert "tiny-plugin-tok" not in tokenkit.list_pretrained()


def test_pivq_ffhq_from_a_hand_populated_cache(tmp_path):
    """Until its weights exist the error names the recipe; once they are in the cache, it loads."""
    cache = tmp_path / "hub-cache"
    with pytest.raises(HubUnavailableError, match="configs/pivq-ffhq.toml") as err:
        tokenkit.load("pivq-ffhq", cache_dir=cache, local_files_only=True)
    assert "local_files_only" in str(err.value) and "tokenkit download" in str(err.value)
    tok, x = tiny_pivq()
    entry = hub.pretrained_entry("pivq-ffhq")
    populate_cache(cache, entry.repo_id, entry.revision, tok.save_pretrained(tmp_path / "pivq"))
    loaded = tokenkit.load("pivq-ffhq", cache_dir=cache, local_files_only=True)
    assert loaded.architecture == tok.architecture
    assert torch.equal(loaded.encode(x), tok.encode(x))


def tiny_pivq() -> tuple[Tokenizer, torch.Tensor]:
    """A tiny PI-VQ tokenizer (the architecture pivq-ffhq uses), or an image tokenizer without it."""
    if "PIVQTokenizer" not in tokenkit.models.available():
        return tiny("image").eval(), example_input("image")
    from tokenkit.models import get

    torch.manual_seed(0)
    tok = get("PIVQTokenizer")(
        image_size=8, channels=1, patch_size=4, width=16, depth=1, heads=2, num_latents=4, latent_dim=4,
        quantizer_config={"codebook_size": 16},
    )
    return tok.eval(), example_input("image")


# -- command line ---------------------------------------------------------------------------------
def test_main_pretrained_lists_names(capsys):
    assert hub.main_pretrained([]) == 0
    out = capsys.readouterr().out
    assert "pivq-ffhq" in out and "tokenkit/pivq-ffhq@v1.0" in out and "configs/pivq-ffhq.toml" in out
    assert hub.main_pretrained(["pivq-ffhq", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["repo_id"] == "tokenkit/pivq-ffhq" and "sha256 not pinned" in rows[0]["status"]
    assert hub.main_pretrained(["nope"]) == 1
    assert "unknown pretrained tokenizer" in capsys.readouterr().err


def test_main_download_from_cache_to_a_folder(tmp_path, capsys):
    tok, x = tiny_pivq()
    entry = hub.pretrained_entry("pivq-ffhq")
    populate_cache(tmp_path / "cache", entry.repo_id, entry.revision, tok.save_pretrained(tmp_path / "p"))
    argv = ["pivq-ffhq", "--cache-dir", str(tmp_path / "cache"), "--local-files-only"]
    assert hub.main_download(argv + ["--local-dir", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    assert torch.equal(tokenkit.load(tmp_path / "out").encode(x), tok.encode(x))
    assert read_metadata((tmp_path / "out" / "README.md").read_text())["library_name"] == "tokenkit"
    assert hub.main_download(["pivq-ffhq", "--cache-dir", str(tmp_path / "empty"), "--local-files-only"]) == 1
    assert "configs/pivq-ffhq.toml" in capsys.readouterr().err


# -- a real Hub-compatible server (olah) ----------------------------------------------------------
@pytest.fixture(scope="session")
def olah(tmp_path_factory):
    pytest.importorskip("olah", reason="the Hub download tests need olah (pip install tokenkit[test])")
    if shutil.which("git") is None:
        pytest.skip("the Hub download tests need git to build the served repository")
    server = OlahServer(tmp_path_factory.mktemp("olah")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def published(olah, tmp_path_factory):
    """org/tiny on the server: tag v1.0 = the seed-0 tokenizer, main = the seed-1 tokenizer."""
    root = tmp_path_factory.mktemp("published")
    x = example_input("image")
    versions = {}
    for label, seed in (("v1", 0), ("v2", 1)):
        tok = trained_once(tiny("image", seed=seed), x)
        folder = tok.save_pretrained(root / label, eval_results=EVAL)
        versions[label] = {"folder": folder, "outputs": outputs(tok, x), "sha256": hub.weights_sha256(folder)}
    repo = olah.repo_path("org/tiny")
    git_repo_from_folder(repo, versions["v1"]["folder"], "v1", tag="v1.0")
    git_repo_from_folder(repo, versions["v2"]["folder"], "v2")
    save_file({"x": x}, root / "x.safetensors")
    return root, versions


def check_outputs(path: Path, key: str, expected: dict[str, torch.Tensor]) -> None:
    got = load_file(path)
    for name, value in expected.items():
        assert torch.equal(got[f"{key}.{name}"], value), f"{key}.{name} differs"


def test_download_from_olah_then_offline_from_cache(olah, published, tmp_path):
    root, versions = published
    hf_home = tmp_path / "hf-home"
    v1_entry = {"repo_id": "org/tiny", "revision": "v1.0", "modality": "image"}
    v1_entry["sha256"] = versions["v1"]["sha256"]
    bad_entry = {**v1_entry, "sha256": "1" * 64}
    loads = [
        {"key": "main", "spec": "hf-hub:org/tiny"},
        {"key": "tag", "spec": "hf-hub:org/tiny@v1.0"},
        {"key": "name", "spec": "tiny-v1"},
        {"key": "badsha", "spec": "tiny-bad"},
    ]
    job = {
        "input": str(root / "x.safetensors"),
        "outputs": str(tmp_path / "online.safetensors"),
        "result": str(tmp_path / "online.json"),
        "register": {"tiny-v1": v1_entry, "tiny-bad": bad_entry},
        "loads": loads + [{"key": "missing", "spec": "hf-hub:org/missing"}],
    }
    online = run_client(job, {"HF_ENDPOINT": olah.endpoint, "HF_HOME": str(hf_home)}, tmp_path)
    assert online["main"]["ok"] and online["tag"]["ok"] and online["name"]["ok"], online
    assert online["badsha"] == {**online["badsha"], "ok": False, "error": "ChecksumError"}
    assert online["missing"]["error"] == "NotOnHubError" and "org/missing" in online["missing"]["message"]
    check_outputs(tmp_path / "online.safetensors", "main", versions["v2"]["outputs"])
    check_outputs(tmp_path / "online.safetensors", "tag", versions["v1"]["outputs"])
    check_outputs(tmp_path / "online.safetensors", "name", versions["v1"]["outputs"])
    assert not torch.equal(versions["v1"]["outputs"]["z"], versions["v2"]["outputs"]["z"])

    # offline, with the endpoint pointing nowhere: only the cache can answer
    dead = f"http://127.0.0.1:{free_port()}"
    job = {
        **job,
        "outputs": str(tmp_path / "offline.safetensors"),
        "result": str(tmp_path / "offline.json"),
        "loads": loads[:3] + [{"key": "uncached", "spec": "hf-hub:org/never-downloaded"}],
    }
    env = {"HF_ENDPOINT": dead, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    offline = run_client(job, env, tmp_path)
    assert offline["main"]["ok"] and offline["tag"]["ok"] and offline["name"]["ok"], offline
    check_outputs(tmp_path / "offline.safetensors", "main", versions["v2"]["outputs"])
    check_outputs(tmp_path / "offline.safetensors", "tag", versions["v1"]["outputs"])
    assert offline["uncached"]["error"] == "HubUnavailableError"
    assert "HF_HUB_OFFLINE" in offline["uncached"]["message"]


def test_unreachable_hub_names_the_recipe_until_the_cache_has_it(tmp_path):
    """With HF_ENDPOINT pointing at a closed port (no offline flag), pivq-ffhq fails clearly with an
    empty cache, and loads from a cache that holds its files."""
    tok, x = tiny_pivq()
    save_file({"x": x}, tmp_path / "x.safetensors")
    entry = hub.pretrained_entry("pivq-ffhq")
    filled = tmp_path / "filled-cache"
    populate_cache(filled, entry.repo_id, entry.revision, tok.save_pretrained(tmp_path / "pivq"))
    job = {
        "input": str(tmp_path / "x.safetensors"),
        "outputs": str(tmp_path / "out.safetensors"),
        "result": str(tmp_path / "result.json"),
        "loads": [
            {"key": "empty", "spec": "pivq-ffhq", "kwargs": {"cache_dir": str(tmp_path / "empty-cache")}},
            {"key": "filled", "spec": "pivq-ffhq", "kwargs": {"cache_dir": str(filled)}},
        ],
        "no_retry_wait": True,
    }
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf-home")}
    result = run_client(job, env, tmp_path)
    assert result["empty"]["error"] == "HubUnavailableError", result
    message = result["empty"]["message"]
    assert "could not be reached" in message and "configs/pivq-ffhq.toml" in message
    assert "tokenkit download" in message and "tokenkit.load('/path/to/folder')" in message
    assert result["filled"]["ok"], result
    check_outputs(tmp_path / "out.safetensors", "filled", outputs(tok, x))


# -- upload (push_to_hub, tokenkit push) against the recorder -------------------------------------
def test_push_to_hub_and_cli_push_send_the_files(saved, tmp_path):
    folder, _, _ = saved
    eval_path = tmp_path / "eval.json"
    eval_path.write_text(json.dumps(EVAL))
    with UploadRecorder() as rec:
        env = {"HF_ENDPOINT": rec.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1",
               "HF_TOKEN": "hf_test_token"}
        job = {
            "result": str(tmp_path / "push.json"),
            "pushes": [{"key": "mixin", "folder": str(folder), "repo_id": "org/pushed",
                        "kwargs": {"eval_results": EVAL, "datasets": ["fashion-mnist"], "license": "mit"}}],
            "cli": [{"key": "cli", "function": "main_push",
                     "argv": [str(folder), "org/cli-pushed", "--eval-results", str(eval_path)]}],
        }
        result = run_client(job, env, tmp_path)
    assert result["cli"] == 0 and result["mixin"].startswith(f"{rec.endpoint}/org/pushed/commit/")
    assert [c["name"] for c in rec.created] == ["pushed", "cli-pushed"]
    assert all(c["organization"] == "org" for c in rec.created)
    api_calls = [r for r in rec.requests if r["method"] == "POST"]
    assert len(api_calls) == 2 * 6  # create, validate-yaml x2, preupload, LFS batch, commit
    assert all(r["headers"].get("authorization") == "Bearer hf_test_token" for r in api_calls)
    for repo_id in ("org/pushed", "org/cli-pushed"):
        files = rec.files[repo_id]
        assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
        assert json.loads(files["config.json"]) == json.loads((folder / "config.json").read_text())
        meta = read_metadata(files["README.md"].decode())
        assert meta["library_name"] == "tokenkit" and "image-tokenizer" in meta["tags"]
        assert "fashion-mnist" in meta["datasets"]
        assert read_eval_results(files["README.md"].decode()) == EVAL
        assert f"hf-hub:{repo_id}" in files["README.md"].decode()
        local = load_file(folder / "model.safetensors")
        pushed = load(files["model.safetensors"])
        assert local.keys() == pushed.keys() and all(torch.equal(local[k], pushed[k]) for k in local)
    assert rec.files["org/cli-pushed"]["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert read_metadata(rec.files["org/pushed"]["README.md"].decode())["license"] == "mit"
    # the weights went through the git-LFS batch API, named by their sha256 in the commit
    lfs_lines = [line["value"] for c in rec.commits for line in c["lines"] if line["key"] == "lfsFile"]
    assert {v["path"] for v in lfs_lines} == {"model.safetensors"}
    assert all(v["oid"] in rec.lfs_objects for v in lfs_lines)
    assert len(rec.validated) == 4 and all(m["library_name"] == "tokenkit" for m in rec.validated)


def test_push_refuses_a_folder_that_does_not_load(saved, capsys, monkeypatch):
    import huggingface_hub

    def no_upload(*args, **kwargs):
        raise AssertionError("a broken folder must never reach the Hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_upload)
    folder, _, _ = saved
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert hub.main_push([str(folder), "org/broken"]) == 1
    assert "truncated" in capsys.readouterr().err
    assert hub.main_push([str(folder / "nope"), "org/broken"]) == 1
    assert "no tokenizer folder" in capsys.readouterr().err
