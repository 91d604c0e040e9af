"""The ``tokenkit`` command, run for real in subprocesses (console script and ``python -m tokenkit``)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tokenkit
import tokenkit.quantizers as tq
from tokenkit import cli

CONSOLE_SCRIPT = Path(sys.executable).parent / "tokenkit"


def run(*args: str, pythonpath: Path | None = None, module: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "tokenkit", *args] if module else [str(CONSOLE_SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def make_dist(root: Path, name: str, version: str, entry_points: dict[str, str]) -> None:
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[tokenkit.quantizers]\n{lines}")


def rows_of(table: str) -> dict[str, list[str]]:
    """Parse the table: name -> [package, version, description]."""
    lines = table.strip().splitlines()
    assert lines[0].split()[:4] == ["NAME", "PACKAGE", "VERSION", "DESCRIPTION"]
    return {parts[0]: parts[1:] for parts in (line.split(None, 3) for line in lines[1:])}


def test_console_script_is_installed() -> None:
    assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} missing: reinstall tokenkit so pip writes its scripts"


@pytest.mark.parametrize("module", [False, True], ids=["console-script", "python-m"])
def test_version(module: bool) -> None:
    result = run("--version", module=module)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tokenkit {tokenkit.__version__}"


def test_quantizers_lists_every_installed_quantizer() -> None:
    result = run("quantizers")
    assert result.returncode == 0, result.stderr
    rows = rows_of(result.stdout)
    assert sorted(rows) == tq.available()
    package, version, description = rows["nearest"]
    assert (package, version) == ("tokenkit", tokenkit.__version__)
    assert description == tq.get("nearest").description


def test_quantizers_json_matches_describe() -> None:
    result = run("quantizers", "--json", module=True)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == tq.available()
    assert {"name", "package", "version", "description"} == set(rows[0])


def test_broken_and_conflicting_plugins_are_shown_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "tk_cli_broken.py").write_text('raise RuntimeError("plugin exploded\\n  on import")\n')
    (tmp_path / "tk_cli_good.py").write_text(
        "from tokenkit.quantizers.nearest import NearestQuantizer\n\n\n"
        "class Good(NearestQuantizer):\n    description = 'a working plugin'\n"
    )
    make_dist(tmp_path, "tk-cli-broken", "0.3", {"exploding": "tk_cli_broken:Q"})
    make_dist(tmp_path, "tk-cli-good", "4.5.6", {"cligood": "tk_cli_good:Good"})
    make_dist(tmp_path, "tk-cli-a", "1.0", {"clitwin": "tk_cli_good:Good"})
    make_dist(tmp_path, "tk-cli-b", "1.0", {"clitwin": "tk_cli_good:Good"})
    result = run("quantizers", pythonpath=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = rows_of(result.stdout)
    package, version, description = rows["exploding"]
    assert (package, version) == ("tk-cli-broken", "0.3")
    assert description.startswith("FAILED TO IMPORT:")
    assert "RuntimeError: plugin exploded on import" in description  # a multi-line error, on one row
    assert rows["cligood"] == ["tk-cli-good", "4.5.6", "a working plugin"]
    assert rows["clitwin"][0] == "(conflict)"
    assert "tk-cli-a" in rows["clitwin"][-1] and "tk-cli-b" in rows["clitwin"][-1]
    assert rows["nearest"][0] == "tokenkit"  # built-ins still listed


def test_no_command_prints_usage() -> None:
    result = run()
    assert result.returncode == 2
    assert "usage: tokenkit" in result.stderr and "quantizers" in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = run("no-such-command", module=True)
    assert result.returncode == 2
    assert "invalid choice: 'no-such-command'" in result.stderr


def test_subcommands_import_lazily_and_user_errors_exit_1(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "tk_cli_probe.py").write_text(
        "from tokenkit.registry import RegistryError\n\n\n"
        "def run(args):\n"
        "    if args.fail:\n"
        "        raise RegistryError('unknown tokenizer ' + repr(args.name))\n"
        "    print('ran', args.name)\n"
        "    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "_COMMANDS", list(cli._COMMANDS))

    @cli.command("probe", help="a subcommand added the way train/eval/push are")
    def _probe(parser: argparse.ArgumentParser) -> cli.Runner:
        parser.add_argument("name")
        parser.add_argument("--fail", action="store_true")
        return cli.lazy("tk_cli_probe", "run")

    assert "tk_cli_probe" not in sys.modules
    assert cli.main(["quantizers", "--json"]) == 0
    assert "tk_cli_probe" not in sys.modules  # building the parser did not import the subcommand
    capsys.readouterr()
    try:
        assert cli.main(["probe", "x"]) == 3
        assert capsys.readouterr().out == "ran x\n"
        assert cli.main(["probe", "y", "--fail"]) == 1
        assert capsys.readouterr().err == "tokenkit probe: error: unknown tokenizer 'y'\n"
        with pytest.raises(LookupError, match="unknown tokenizer"):
            cli.main(["--traceback", "probe", "y", "--fail"])
    finally:
        sys.modules.pop("tk_cli_probe", None)
    with pytest.raises(ValueError, match="defined twice"):
        cli.command("probe", help="again")(_probe)


@pytest.mark.parametrize("name", ["train", "eval", "pretrained", "download", "push"])
def test_forwarded_subcommands_parse_their_own_arguments(name: str) -> None:
    result = run(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: tokenkit {name}")


def test_forwarded_subcommand_errors_exit_1() -> None:
    listing = run("pretrained")
    assert listing.returncode == 0 and "pivq-ffhq" in listing.stdout
    missing = run("download", "no-such-tokenizer")
    assert missing.returncode == 1
    assert "no-such-tokenizer" in missing.stderr and "pivq-ffhq" in missing.stderr
