"""A real 2-process torchrun training run on CPU (gloo): both ranks end with identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import recipe, require  # tests/ is on sys.path (pytest rootdir-relative import)

from tokenkit.train import read_checkpoint

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import save_file
    from tokenkit.train.loop import fit

    torch.set_num_threads(1)
    cfg = json.loads(open(sys.argv[1]).read())
    model, summary = fit(cfg, resume=sys.argv[3] == "resume")
    out = sys.argv[2]
    rank = summary["rank"]
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
              f"{out}/rank{rank}.safetensors")
    with open(f"{out}/summary{rank}.json", "w") as f:
        json.dump(summary, f)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(cfg: dict, work: Path, resume: bool = False) -> tuple[list[dict], list[dict]]:
    """Train ``cfg`` with 2 gloo processes; returns each rank's final state dict and summary."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "cfg.json").write_text(json.dumps(cfg))
    (work / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(work / "worker.py"), str(work / "cfg.json"), str(work),
           "resume" if resume else "fresh"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    states = [load_file(work / f"rank{r}.safetensors") for r in range(2)]
    summaries = [json.loads((work / f"summary{r}.json").read_text()) for r in range(2)]
    return states, summaries


def assert_same(a: dict, b: dict, what: str) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs {what}"


@pytest.mark.parametrize("modality, quantizer", [("image", "ema"), ("audio", "fsp")])
def test_torchrun_two_ranks_end_identical(tmp_path: Path, modality: str, quantizer: str):
    require(quantizer)
    run_dir = tmp_path / "run"
    cfg = recipe(run_dir, modality, quantizer, steps=6, eval_every=3, ckpt_every=3, log_every=2, device="cpu")
    ranks, summaries = torchrun(cfg, tmp_path)
    # parameters and quantizer buffers (EMA codebook and cluster sizes, FSP centroids) alike
    assert_same(ranks[0], ranks[1], "between ranks")
    assert [s["world_size"] for s in summaries] == [2, 2] and summaries[0]["step"] == 6
    assert summaries[0]["eval"]["recon_loss"] == summaries[1]["eval"]["recon_loss"]  # all-reduced
    # each rank trained on its own shard, so the local losses differ
    assert summaries[0]["loss_history"] != summaries[1]["loss_history"]

    ckpt = read_checkpoint(run_dir / "checkpoint.safetensors")  # written by rank 0 only
    assert ckpt.state.step == 6 and len(ckpt.rng) == 2
    assert not torch.equal(ckpt.rng[0]["torch"], ckpt.rng[1]["torch"])
    assert_same(ckpt.model, ranks[0], "between the checkpoint and the ranks")


def test_torchrun_resume_is_exact(tmp_path: Path):
    """Gumbel noise differs per rank: resuming must restore every rank's own random state."""
    require("gumbel")
    opts = {"ckpt_every": 0, "log_every": 1, "device": "cpu"}
    whole, _ = torchrun(recipe(tmp_path / "whole", "image", "gumbel", steps=6, **opts), tmp_path / "a")
    torchrun(recipe(tmp_path / "split", "image", "gumbel", steps=3, **opts), tmp_path / "b")
    rest, summaries = torchrun(recipe(tmp_path / "split", "image", "gumbel", steps=6, **opts), tmp_path / "c",
                               resume=True)
    assert summaries[0]["start_step"] == 3 and summaries[0]["step"] == 6
    assert_same(whole[0], rest[0], "after a 2-process resume")
    assert_same(rest[0], rest[1], "between ranks after resume")
