"""The pretrained tokenizers tokenkit knows by short name (``tokenkit.load(name)``).

Each entry maps a name to where its files live and how to check them:

- ``repo_id`` + ``revision``: a Hugging Face Hub repository and the revision pinned for this
  name (a tag or a commit id), downloaded through the Hub cache;
- or ``path``: a folder shipped inside this package (``tokenkit/pretrained/<name>/``, laid out
  like a Hub repository: config.json, model.safetensors, README.md), loaded with no network;
- ``sha256``: of model.safetensors, checked before loading. ``None`` only for weights that were
  not published yet (nothing to pin): then nothing is verified, and ``tokenkit pretrained`` says so;
- ``modality``: "image" or "audio";
- ``recipe``: the training recipe in the tokenkit source repository, so a name whose weights
  cannot be fetched can be trained instead.

Plugins add names through the entry point group ``tokenkit.pretrained`` (each entry point loads
a dict like these, or a ``tokenkit.hub.PretrainedEntry``).
"""

from __future__ import annotations

from typing import Any

PRETRAINED: dict[str, dict[str, Any]] = {
    "pivq-ffhq": {
        "repo_id": "tokenkit/pivq-ffhq",
        # The weights are trained from configs/pivq-ffhq.toml on FFHQ, which no reachable source
        # offers to this project: the repository is published under this tag, and the sha256 is
        # pinned here once the file exists.
        "revision": "v1.0",
        "sha256": None,
        "modality": "image",
        "recipe": "configs/pivq-ffhq.toml",
        "description": "PI-VQ permutation-invariant set tokenizer with matching quantization, FFHQ faces",
    },
    "vq-fashion": {
        # trained and evaluated on CPU: docs/results.md; the model card holds the eval table + protocol
        "path": "vq-fashion",
        "sha256": "aa2d3a1f42edc05976ad9b66826aa93aae15524060ce1226b12162fc56df8466",
        "modality": "image",
        "recipe": "configs/fashion-mnist-vq.toml",
        "description": "ImageTokenizer + EMA VQ (K=512), Fashion-MNIST 28x28 -> 7x7 tokens, 2000 CPU steps",
    },
    "fsp-fashion": {
        # trained and evaluated on CPU: docs/results.md; the model card holds the eval table + protocol
        "path": "fsp-fashion",
        "sha256": "acb1795d4fb93bd00fad45692cbaca6ada16a8a7a8e3dd6ad5f74de2bf88cb9f",
        "modality": "image",
        "recipe": "configs/fashion-mnist-fsp.toml",
        "description": "ImageTokenizer + FSP (8x8x8 = 512 codes), Fashion-MNIST 28x28 -> 7x7 tokens, "
        "2000 CPU steps",
    },
    "pivq-fashion": {
        # trained and evaluated on CPU: docs/results.md; the model card holds the eval table + protocol
        "path": "pivq-fashion",
        "sha256": "d8f62dbd6cc946893a7e9a350eb750c9596e843d3e08063524c06e5a2aae8c09",
        "modality": "image",
        "recipe": "configs/pivq-fashion.toml",
        "description": "PI-VQ set tokenizer, matching quantization (K=512), Fashion-MNIST 28x28 -> 32 codes, "
        "6000 CPU steps",
    },
    "fsp-speech16k": {
        # trained and evaluated on CPU: docs/results.md; small and low quality (PESQ-WB 1.28 on LibriVox)
        "path": "fsp-speech16k",
        "sha256": "fb750b5f07bad0874d07972b50b8af6d86be10fdfd64501b0e7694160f543c4a",
        "modality": "audio",
        "recipe": "configs/speech-fsp.toml",
        "description": "AudioTokenizer + FSP (4096 codes), 16 kHz speech -> 400 tokens/s (4.8 kbit/s), "
        "8000 CPU steps",
    },
}
