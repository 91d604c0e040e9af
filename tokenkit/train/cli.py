"""``tokenkit train CONFIG.toml [--resume] [--set key=value ...]``."""

from __future__ import annotations

import argparse
import json
import sys

from tokenkit.train.config import ConfigError, load_config


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="tokenkit train", description="Train a tokenizer.")
    parser.add_argument("config", help="training recipe (TOML), e.g. configs/fashion-mnist-fsq.toml")
    parser.add_argument("--resume", action="store_true", help="continue exactly from out_dir's checkpoint")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe entry by dotted path, e.g. --set train.steps=500 (repeatable)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``tokenkit train`` from parsed arguments (``build_parser``'s); prints the summary (rank 0).

    A bad recipe raises :class:`ConfigError` (a ``ValueError``) for the caller to report.
    """
    config = load_config(args.config, args.overrides)
    from tokenkit.train.loop import train

    summary = train(config, resume=args.resume)
    if summary.get("rank", 0) == 0:
        summary = {k: v for k, v in summary.items() if k != "loss_history"}
        print(json.dumps(summary, indent=2))
    return 0


def main_train(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m tokenkit.train.cli CONFIG.toml ...``; 2 on a bad recipe."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"tokenkit train: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main_train())
