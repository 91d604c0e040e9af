"""Model cards: the README.md that travels with every tokenizer on the Hugging Face Hub.

A card is YAML metadata (the Hub reads ``library_name``, ``tags``, ``license``, ``datasets``)
followed by Markdown: what the tokenizer is, how to load it, and, when an evaluation JSON is
given (what ``tokenkit eval`` writes), its numbers as a table together with the protocol they
were measured under. The evaluation JSON itself is embedded verbatim, so
:func:`read_eval_results` gets back exactly what was rendered.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import yaml

LIBRARY_NAME = "tokenkit"
DEFAULT_LICENSE = "apache-2.0"
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)
_EVAL_BLOCK = re.compile(r"<!-- tokenkit-eval-json -->\n```json\n(.*?)\n```", re.DOTALL)


def card_metadata(
    config: dict[str, Any],
    modality: str,
    *,
    license: str | None = DEFAULT_LICENSE,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    eval_results: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The YAML metadata block of a tokenizer's card."""
    quantizer = config.get("quantizer")
    base_tags = [LIBRARY_NAME, "tokenizer", "vector-quantization"]
    if modality:
        base_tags.append(f"{modality}-tokenizer")
    if config.get("architecture"):
        base_tags.append(str(config["architecture"]))
    if quantizer:
        base_tags.append(f"quantizer:{quantizer}")
    all_tags = list(dict.fromkeys(base_tags + list(tags or [])))
    all_datasets = list(datasets or [])
    eval_dataset = _protocol(eval_results).get("dataset") if eval_results else None
    if isinstance(eval_dataset, str) and eval_dataset not in all_datasets:
        all_datasets.append(eval_dataset)
    meta: dict[str, Any] = {"library_name": LIBRARY_NAME, "tags": all_tags}
    if license:
        meta["license"] = license
    if all_datasets:
        meta["datasets"] = all_datasets
    return meta


def render_model_card(
    config: dict[str, Any],
    modality: str,
    *,
    repo_id: str | None = None,
    num_parameters: int | None = None,
    license: str | None = DEFAULT_LICENSE,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    eval_results: dict[str, Any] | None = None,
    description: str | None = None,
) -> str:
    """README.md text for a tokenizer with this ``config.json`` content."""
    if eval_results is not None and not isinstance(eval_results, dict):
        raise TypeError(
            f"eval_results must be the dict that `tokenkit eval` writes to eval.json, got "
            f"{type(eval_results).__name__}"
        )
    meta = card_metadata(
        config, modality, license=license, datasets=datasets, tags=tags, eval_results=eval_results
    )
    architecture = config.get("architecture", "tokenizer")
    title = repo_id.split("/")[-1] if repo_id else f"{architecture} ({config.get('quantizer', '?')})"
    source = f"hf-hub:{repo_id}" if repo_id else "/path/to/this/folder"
    parts = [
        "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip() + "\n---",
        f"# {title}",
        description
        or (
            f"A discrete {modality or ''} tokenizer made with tokenkit: `{architecture}` with the "
            f"`{config.get('quantizer', '?')}` quantizer. It turns its input into integer tokens "
            f"(`encode`) and back (`decode`)."
        ).replace("  ", " "),
        "## Use\n\n"
        "```python\n"
        "import tokenkit\n\n"
        f'tok = tokenkit.load("{source}")\n'
        "tokens = tok.encode(x)      # LongTensor\n"
        "x_hat = tok.decode(tokens)\n"
        "```",
        "## Configuration\n\n" + _config_table(config, num_parameters),
        "## Evaluation\n\n" + render_eval_results(eval_results),
    ]
    return "\n\n".join(parts) + "\n"


def render_eval_results(eval_results: dict[str, Any] | None) -> str:
    """The metrics as a Markdown table, then the protocol they were measured under."""
    if not eval_results:
        return "No evaluation results were recorded with this tokenizer."
    metrics = _metrics(eval_results)
    lines = ["| Metric | Value |", "|---|---|"]
    lines += [f"| {name} | {_format(value)} |" for name, value in metrics.items()]
    protocol = _protocol(eval_results)
    if protocol:
        lines += ["", "Protocol:", "", "| Setting | Value |", "|---|---|"]
        lines += [f"| {name} | {_format(value)} |" for name, value in _flatten(protocol).items()]
    else:
        lines += ["", "The evaluation JSON did not record its protocol."]
    raw = json.dumps(eval_results, indent=2, sort_keys=True, allow_nan=True)
    lines += [
        "",
        "<details><summary>Evaluation JSON</summary>",
        "",
        "<!-- tokenkit-eval-json -->",
        "```json",
        raw,
        "```",
        "",
        "</details>",
    ]
    return "\n".join(lines)


def read_metadata(card_text: str) -> dict[str, Any]:
    """The YAML metadata of a model card (empty dict when it has none)."""
    match = _FRONT_MATTER.match(card_text.replace("\r\n", "\n"))
    if not match:
        return {}
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else {}


def read_eval_results(card_text: str) -> dict[str, Any] | None:
    """The evaluation JSON embedded by :func:`render_model_card`, or ``None``."""
    match = _EVAL_BLOCK.search(card_text.replace("\r\n", "\n"))
    return json.loads(match.group(1)) if match else None


# -- helpers -----------------------------------------------------------------------------------
def _protocol(eval_results: dict[str, Any]) -> dict[str, Any]:
    protocol = eval_results.get("protocol")
    if isinstance(protocol, str):
        return {"description": protocol}
    return protocol if isinstance(protocol, dict) else {}


def _metrics(eval_results: dict[str, Any]) -> dict[str, Any]:
    """``eval_results["metrics"]`` when present, else every top-level entry but the protocol."""
    metrics = eval_results.get("metrics")
    if not isinstance(metrics, dict):
        metrics = {k: v for k, v in eval_results.items() if k != "protocol"}
    return _flatten(metrics)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _config_table(config: dict[str, Any], num_parameters: int | None) -> str:
    rows = dict(_flatten({k: v for k, v in config.items() if k != "quantizer_config"}))
    rows.update(_flatten(config.get("quantizer_config") or {}, prefix="quantizer_config."))
    if num_parameters is not None:
        rows["parameters"] = f"{num_parameters:,}"
    lines = ["| Field | Value |", "|---|---|"]
    lines += [f"| {name} | {_format(value)} |" for name, value in rows.items()]
    return "\n".join(lines)
