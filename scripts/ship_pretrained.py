"""Ship a trained tokenizer as package data: ``tokenkit/pretrained/<name>/`` in the Hub layout.

    python scripts/ship_pretrained.py vq-fashion runs/fashion-mnist-vq \
        --recipe configs/fashion-mnist-vq.toml --eval runs/fashion-mnist-vq/eval-test1000/eval.json \
        --check runs/fashion-mnist-vq/eval-test64/eval.json --notes "Trained with ..."

The folder gets config.json and model.safetensors (``save_pretrained``) and a model card with:
the notes (how it was trained), the evaluation table and protocol of ``--eval`` (embedded as JSON,
``tokenkit.model_card.read_eval_results`` reads it back), and the numbers of ``--check``, a small
evaluation without Inception features (e.g. the first 64 test images) that a fast test reproduces;
its JSON is embedded after the marker ``CHECK_MARKER``. The recipe's ``[model]`` table must equal
the tokenizer's config, so the recipe in the repository is the one that made the weights. Prints
the sha256 to pin in ``tokenkit/pretrained/__init__.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tokenkit.hub import load, weights_sha256
from tokenkit.model_card import render_eval_results, render_model_card
from tokenkit.train.config import load_config

CHECK_MARKER = "<!-- tokenkit-eval-json-check -->"
# train options that change what is shown, never the weights
DISPLAY_ONLY = {"progress", "log_every"}
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "tokenkit" / "pretrained"


def check_recipe(recipe_path: Path, run_dir: Path, config: dict[str, Any]) -> None:
    """The recipe in the repository is the one the run used, and it describes this tokenizer.

    ``run_dir/recipe.json`` (the recipe as run, after ``--set``) must equal the repository's recipe
    up to display options, and every ``[model]`` entry must be in the tokenizer's config.
    """
    repo = load_config(recipe_path).to_dict()
    ran = json.loads((run_dir / "recipe.json").read_text())
    for table in ("model", "data", "train"):
        keys = set(repo[table]) | set(ran.get(table, {}))
        for key in sorted(keys - (DISPLAY_ONLY if table == "train" else set())):
            if repo[table].get(key) != ran.get(table, {}).get(key):
                raise SystemExit(
                    f"{recipe_path} [{table}] {key} = {repo[table].get(key)!r} but the run used "
                    f"{ran.get(table, {}).get(key)!r} ({run_dir / 'recipe.json'}): ship the recipe that ran"
                )
    _check_subset(repo["model"], config, "model")


def _check_subset(recipe: dict[str, Any], config: dict[str, Any], where: str) -> None:
    for key, value in recipe.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _check_subset(value, config[key], f"{where}.{key}")
        elif config.get(key) != value:
            raise SystemExit(f"recipe {where}.{key} = {value!r}, config.json has {config.get(key)!r}")


def check_section(name: str, check: dict[str, Any]) -> str:
    """The card section with the small-slice numbers and their JSON."""
    protocol = check["protocol"]
    table = render_eval_results({"metrics": check["metrics"]}).split("\n\n<details>")[0]
    table = table.split("\n\nThe evaluation JSON")[0]
    if protocol.get("modality") == "audio":
        what = (
            f"{protocol['num_items']} clips of the `{protocol['split']}` split of `{protocol['dataset']}` "
            f"(`{json.dumps(protocol['dataset_config'])}`)."
        )
        kept = "clips"
    else:
        what = (
            f"The first {protocol['num_items']} images of the `{protocol['split']}` split of "
            f"`{protocol['dataset']}`, without Inception features (`--no-features`)."
        )
        kept = "images"
    return "\n".join(
        [
            "## Quick check",
            "",
            f"{what} `tests/test_pretrained_{name.replace('-', '_')}.py` in the tokenkit repository "
            f"reproduces these numbers from the same {kept} (kept in `tests/data/`):",
            "",
            table,
            "",
            "<details><summary>Quick-check JSON</summary>",
            "",
            CHECK_MARKER,
            "```json",
            json.dumps(check, indent=2, sort_keys=True),
            "```",
            "",
            "</details>",
        ]
    )


def build_card(name: str, tokenizer: Any, eval_results: dict, check: dict, notes: str) -> str:
    config = tokenizer.config_dict()
    card = render_model_card(
        config,
        tokenizer.modality,
        num_parameters=sum(p.numel() for p in tokenizer.parameters()),
        eval_results=eval_results,
        description=notes,
    )
    title = f"# {config['architecture']} ({config.get('quantizer', '?')})"
    usage = 'tokenkit.load("/path/to/this/folder")'
    if title not in card or usage not in card:
        raise SystemExit("the rendered card changed its title or usage lines; update ship_pretrained.py")
    card = card.replace(title, f"# {name}", 1).replace(usage, f'tokenkit.load("{name}")', 1)
    return card.rstrip("\n") + "\n\n" + check_section(name, check) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("run_dir", type=Path, help="the training run's out_dir (recipe.json, tokenizer/)")
    parser.add_argument("--recipe", required=True, type=Path)
    parser.add_argument("--eval", required=True, type=Path, help="eval.json of the full evaluation")
    parser.add_argument("--check", required=True, type=Path, help="eval.json of the small quick check")
    parser.add_argument("--notes", required=True, help="Markdown: what it is and how it was trained")
    args = parser.parse_args()

    tokenizer = load(args.run_dir / "tokenizer")
    check_recipe(args.recipe, args.run_dir, tokenizer.config_dict())
    eval_results = json.loads(args.eval.read_text())
    check = json.loads(args.check.read_text())
    for result in (eval_results, check):
        if result["protocol"]["tokenizer"] != tokenizer.config_dict():
            raise SystemExit("an evaluation JSON was measured on another tokenizer config")
    card = build_card(args.name, tokenizer, eval_results, check, args.notes)
    target = tokenizer.save_pretrained(PRETRAINED_DIR / args.name, model_card=card)
    print(f"wrote {target}")
    print(f"sha256 {weights_sha256(target)}")


if __name__ == "__main__":
    main()
