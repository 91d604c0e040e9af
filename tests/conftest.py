"""Test-session settings shared by every test file."""

from pathlib import Path

import pytest
import torch

# The suite runs many tiny tensor ops; on 2 cores one intra-op thread is faster for them and makes
# timings of neighbouring processes (the 2-process distributed tests) less noisy.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """The shipped cards' numbers were measured on one thread (the same reduction order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fashion_test64() -> torch.Tensor:
    """The first 64 Fashion-MNIST test images (tests/data), through the library's own reader."""
    from tokenkit.data import build_dataset

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENKIT_FASHION_MNIST", str(Path(__file__).parent / "data" / "fashion-mnist-test64"))
        dataset = build_dataset({"name": "fashion-mnist"}, "test")
    return torch.stack([dataset[i] for i in range(len(dataset))])
