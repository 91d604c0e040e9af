"""The example plugin plugins/tokenkit-lfq, installed for real with pip, is found by every tokenkit tool.

The package is copied to a temporary folder first (so the build leaves nothing in the repository)
and installed with ``--no-deps --no-build-isolation`` (offline: setuptools is in the environment).
``--force-reinstall`` makes the test idempotent and picks up edits to the plugin. The plugin stays
installed afterwards, so later tests (test_conformance) cover ``lfq`` too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tokenkit.quantizers as tq

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "tokenkit-lfq"
PLUGIN_VERSION = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("plugin") / "tokenkit-lfq"
    shutil.copytree(
        PLUGIN, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".*")
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--force-reinstall",
         "-q", str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"pip install of the plugin failed:\n{result.stdout}\n{result.stderr}"
    tq.registry.refresh()  # this process started before the install
    return source


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh process, run from ``cwd`` (outside the source trees)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
        cwd=cwd, env=dict(os.environ),
    )


def test_fresh_process_creates_lfq_and_it_conforms(installed_plugin: Path) -> None:
    result = run_python(
        """
        import tokenkit.quantizers as tq
        from tokenkit.testing import check_quantizer_name

        q = tq.create("lfq", dim=8, codebook_size=32)
        entry = tq.registry.entry("lfq")
        print(type(q).__module__, type(q).__name__, q.codebook_size, q.dim)
        print(entry.package, entry.version, entry.value)
        print("site-packages" in __import__("tokenkit_lfq").__file__)
        check_quantizer_name("lfq", dim=8, codebook_size=32)
        print("conformant")
        """,
        cwd=installed_plugin.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "tokenkit_lfq.lfq LFQuantizer 32 8",
        f"tokenkit-lfq {PLUGIN_VERSION} tokenkit_lfq.lfq:LFQuantizer",
        "True",  # imported from the installed copy, not from the source tree
        "conformant",
    ]


def test_a_tokenizer_uses_the_plugin_by_name(installed_plugin: Path) -> None:
    result = run_python(
        """
        import torch
        from tokenkit.models.image import ImageTokenizer

        torch.manual_seed(0)
        tok = ImageTokenizer(latent_dim=8, quantizer="lfq", quantizer_config={"codebook_size": 256}).eval()
        x = torch.rand(2, 3, 32, 32)
        tokens = tok.encode(x)
        print(type(tok.quantizer).__name__, tokens.dtype, int(tokens.min()) >= 0, int(tokens.max()) < 256)
        print(tuple(tok.decode(tokens).shape) == tuple(x.shape))
        """,
        cwd=installed_plugin.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["LFQuantizer torch.int64 True True", "True"]


def test_cli_lists_the_plugin_with_package_and_version(installed_plugin: Path) -> None:
    script = Path(sys.executable).parent / "tokenkit"
    result = subprocess.run([str(script), "quantizers"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("lfq "))
    name, package, version, description = line.split(None, 3)
    assert (package, version) == ("tokenkit-lfq", PLUGIN_VERSION)
    assert description.startswith("LFQ lookup-free quantization")


def test_refresh_finds_a_plugin_installed_while_running(installed_plugin: Path) -> None:
    assert "lfq" in tq.available()
    q = tq.create("lfq", dim=4, codebook_size=16)
    assert q.encode(q.codebook()[None]).tolist() == [list(range(16))]


def test_reinstall_is_idempotent(installed_plugin: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--force-reinstall",
         "-q", str(installed_plugin)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    tq.registry.refresh()
    assert tq.registry.entry("lfq").version == PLUGIN_VERSION
    assert tq.available().count("lfq") == 1
