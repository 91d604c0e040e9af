"""A small autoregressive prior over token grids: the "VQ + prior" generation baseline.

A decoder-only causal transformer (GPT-style: pre-norm blocks, learned positions, a start token)
models a flattened token grid in raster order, ``p(t_1..t_L) = prod_i p(t_i | t_<i)``. Trained with
cross-entropy on the tokens of real images, it samples new token grids one position at a time,
which a VQ tokenizer then decodes into images. Kept small and plain on purpose (CPU, one thread).

    prior = TokenPrior(PriorConfig(vocab_size=512, seq_len=49))
    losses = train_prior(prior, tokens, steps=2000)      # tokens: (N, 49) int64
    bits = nll_bits(prior, held_out_tokens)             # bits per token
    new = prior.sample(16, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from tokenkit.train.loop import warmup_cosine_lr


@dataclass
class PriorConfig:
    vocab_size: int  # K, the tokenizer's codebook size
    seq_len: int = 49  # tokens per image (7 x 7, raster order)
    width: int = 128
    depth: int = 3
    heads: int = 4
    mlp_ratio: int = 4


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position i sees positions <= i."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TokenPrior(nn.Module):
    """Causal transformer over ``(B, seq_len)`` token sequences; id ``vocab_size`` is the start token."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        if config.width % config.heads:
            raise ValueError(f"width {config.width} must be a multiple of heads {config.heads}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size + 1, config.width)
        self.position = nn.Parameter(torch.zeros(config.seq_len, config.width))
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.ln = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size)
        nn.init.normal_(self.position, std=0.02)

    @property
    def start(self) -> int:
        return self.config.vocab_size

    def logits(self, inputs: Tensor) -> Tensor:
        """Next-token logits ``(B, T, K)`` for input ids ``(B, T)`` (start token first), T <= seq_len."""
        x = self.embed(inputs) + self.position[: inputs.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))

    def forward(self, tokens: Tensor) -> Tensor:
        """Mean negative log-likelihood (nats per token) of ``tokens`` ``(B, seq_len)``."""
        inputs = torch.cat([torch.full_like(tokens[:, :1], self.start), tokens[:, :-1]], dim=1)
        logits = self.logits(inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """``n`` token sequences ``(n, seq_len)``, one position at a time from ``softmax(logits / T)``."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        was_training = self.training
        self.eval()
        seq = torch.full((n, 1), self.start, dtype=torch.long)
        for _ in range(self.config.seq_len):
            probs = F.softmax(self.logits(seq)[:, -1] / temperature, dim=-1)
            seq = torch.cat([seq, torch.multinomial(probs, 1, generator=generator)], dim=1)
        self.train(was_training)
        return seq[:, 1:]


def train_prior(
    model: TokenPrior,
    tokens: Tensor,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """AdamW on random batches of ``tokens`` ``(N, seq_len)``; the training loss (nats/token) per step."""
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = min(100, max(1, steps // 10))
    losses = []
    model.train()
    bar = tqdm(range(steps), desc="AR prior", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, steps, lr, warmup)
        batch = tokens[torch.randint(len(tokens), (batch_size,), generator=order)]
        loss = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(bits=f"{losses[-1] / math.log(2):.3f}")
    return losses


@torch.no_grad()
def nll_bits(model: TokenPrior, tokens: Tensor, batch_size: int = 500) -> float:
    """Mean negative log-likelihood of ``tokens`` ``(N, seq_len)`` in bits per token (eval mode)."""
    was_training = model.training
    model.eval()
    total = sum(float(model(chunk)) * len(chunk) for chunk in tokens.split(batch_size))
    model.train(was_training)
    return total / len(tokens) / math.log(2)
