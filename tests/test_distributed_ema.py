"""EMAQuantizer under real torch.distributed: 2 CPU processes (gloo), different data on each rank.

The codebooks (k-means init, EMA updates and dead-code replacement included) must end bit-identical on
both ranks, and differ from a single process trained on rank 0's data alone (so the all-reduce happened).
This file is also the worker script: ``python test_distributed_ema.py RANK WORLD PORT OUT_DIR``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

from tokenkit.quantizers.ema import EMAQuantizer

WORLD = 2
STEPS = 6
BUFFERS = ("embedding", "cluster_size", "embed_sum", "initialized")


def batch(rank: int, step: int) -> torch.Tensor:
    """Rank-specific data: 4 clusters in 4-D, centred differently on each rank, 64 latents per batch."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    centres = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 3.0]]) * (1 + rank)
    which = torch.randint(4, (64,), generator=g)
    return (centres[which] + 0.5 * torch.randn(64, 4, generator=g)).reshape(2, 32, 4)


def train(rank: int) -> tuple[EMAQuantizer, torch.Tensor]:
    """A few training steps; returns the quantizer and the number of codes replaced at each step."""
    torch.manual_seed(0)  # the same initial buffers and the same rank-0 draws in every run
    vq = EMAQuantizer(dim=4, codebook_size=16, decay=0.9, kmeans_iters=5, dead_code_threshold=2.0).train()
    replaced = torch.zeros(STEPS)
    for step in range(STEPS):
        replaced[step] = vq(batch(rank, step)).stats["replaced"]
    return vq, replaced


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method="env://")
    try:
        vq, replaced = train(rank)
        tensors = {name: getattr(vq, name).clone() for name in BUFFERS}
        tensors["replaced"] = replaced
        path = os.path.join(out_dir, f"rank{rank}.safetensors")
        save_file(tensors, path + ".tmp")
        os.replace(path + ".tmp", path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_codebooks_stay_identical_across_ranks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(WORLD), str(port), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, p in enumerate(procs):
        assert p.returncode == 0, f"rank {rank} failed:\n{logs[rank]}"

    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    for name in BUFFERS:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"
    assert bool(rank0["initialized"])
    assert torch.equal(rank0["replaced"], rank1["replaced"])
    assert rank0["replaced"].sum() > 0, "dead-code replacement never triggered; the test lost its point"

    with torch.random.fork_rng():
        alone, _ = train(rank=0)
    assert not torch.allclose(alone.embedding, rank0["embedding"], atol=1e-3)
    # all-reduced counts: 2 ranks x 64 latents per step, every rank sees them all (sum of N_k)
    assert alone.cluster_size.sum().item() < 0.75 * rank0["cluster_size"].sum().item()


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
