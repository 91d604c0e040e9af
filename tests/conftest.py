"""Test-session settings shared by every test file."""

import torch

# The suite runs many tiny tensor ops; on 2 cores one intra-op thread is faster for them and makes
# timings of neighbouring processes (the 2-process distributed tests) less noisy.
torch.set_num_threads(1)
