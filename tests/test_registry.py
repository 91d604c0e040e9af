"""The quantizer registry with real entry points: fake distributions on a temporary sys.path entry.

Each fake distribution is a ``<name>-<version>.dist-info`` folder (METADATA + entry_points.txt) next
to its module, exactly what ``pip install`` leaves in site-packages, so importlib.metadata finds it
the same way it finds a real plugin.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

import tokenkit.quantizers as tq
from tokenkit.registry import PluginLoadError, RegistryError
from tokenkit.testing import check_quantizer_name

GOOD_MODULE = """
from tokenkit.quantizers.nearest import NearestQuantizer


class GoodQuantizer(NearestQuantizer):
    description = "a test plugin"


class NotAQuantizer:
    pass
"""

BROKEN_MODULE = """
raise ImportError("simulated failure inside the plugin")
"""


def make_dist(root: Path, name: str, version: str, entry_points: dict[str, str]) -> None:
    """Write ``<name>-<version>.dist-info`` declaring ``entry_points`` in group tokenkit.quantizers."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[tokenkit.quantizers]\n{lines}")


@pytest.fixture
def plugin_path(tmp_path: Path):
    """A sys.path entry holding fake plugin distributions; removed (and the registry refreshed) after."""
    (tmp_path / "tk_fake_good.py").write_text(textwrap.dedent(GOOD_MODULE))
    (tmp_path / "tk_fake_broken.py").write_text(textwrap.dedent(BROKEN_MODULE))
    make_dist(tmp_path, "tk-fake-good", "1.2.3", {
        "good": "tk_fake_good:GoodQuantizer",
        "not_a_quantizer": "tk_fake_good:NotAQuantizer",
    })
    make_dist(tmp_path, "tk-fake-broken", "0.1", {"broken": "tk_fake_broken:Broken"})
    make_dist(tmp_path, "tk-fake-a", "1.0", {"twin": "tk_fake_good:GoodQuantizer"})
    make_dist(tmp_path, "tk-fake-b", "2.0", {"twin": "tk_fake_good:GoodQuantizer"})
    saved = list(sys.path)
    sys.path.insert(0, str(tmp_path))
    tq.registry.refresh()
    try:
        yield tmp_path
    finally:
        sys.path[:] = saved
        for module in ("tk_fake_good", "tk_fake_broken"):
            sys.modules.pop(module, None)
        tq.registry.refresh()


def test_builtins_are_registered_through_entry_points() -> None:
    assert "nearest" in tq.available()
    entry = tq.registry.entry("nearest")
    assert entry.package == "tokenkit"
    assert entry.value == "tokenkit.quantizers.nearest:NearestQuantizer"
    q = tq.create("nearest", dim=4, codebook_size=16)
    assert (q.codebook_size, q.dim) == (16, 4)


def test_unknown_name_lists_installed_names() -> None:
    with pytest.raises(RegistryError) as info:
        tq.create("no_such_quantizer")
    message = str(info.value)
    assert "unknown quantizer 'no_such_quantizer'" in message
    for name in tq.available():
        assert name in message
    assert "tokenkit.quantizers" in message  # tells a plugin author where to register


def test_bad_option_names_the_valid_ones() -> None:
    with pytest.raises(TypeError) as info:
        tq.create("nearest", dims=8, codebook_size=16)
    message = str(info.value)
    assert "'dims'" in message
    for valid in ("beta", "codebook_size", "dim"):
        assert f"'{valid}'" in message


def test_refresh_sees_new_distributions(tmp_path: Path) -> None:
    saved = list(sys.path)
    sys.path.insert(0, str(tmp_path))
    try:
        tq.registry.refresh()
        assert "good" not in tq.available()
        # a plugin installed into an already scanned folder while the process runs; the folder's
        # mtime is put back, as on a file system with coarse timestamps, so only refresh() can tell
        before = os.stat(tmp_path)
        (tmp_path / "tk_fake_good.py").write_text(textwrap.dedent(GOOD_MODULE))
        make_dist(tmp_path, "tk-fake-good", "1.2.3", {"good": "tk_fake_good:GoodQuantizer"})
        os.utime(tmp_path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert "good" not in tq.available()  # discovery is cached until refresh()
        tq.registry.refresh()
        assert "good" in tq.available()
        assert tq.get("good").description == "a test plugin"
    finally:
        sys.path[:] = saved
        sys.modules.pop("tk_fake_good", None)
        tq.registry.refresh()
    assert "good" not in tq.available()


def test_plugin_is_found_and_conforms(plugin_path: Path) -> None:
    entry = tq.registry.entry("good")
    assert (entry.package, entry.version) == ("tk-fake-good", "1.2.3")
    q = tq.create("good", dim=4, codebook_size=16)
    assert type(q).__name__ == "GoodQuantizer" and q.codebook_size == 16
    check_quantizer_name("good", dim=4, codebook_size=16)


def test_broken_plugin_is_reported_and_the_rest_keep_working(plugin_path: Path) -> None:
    assert "broken" in tq.available()  # listing reads metadata only; nothing is imported yet
    assert "tk_fake_broken" not in sys.modules
    with pytest.raises(PluginLoadError) as info:
        tq.create("broken")
    message = str(info.value)
    assert "'broken'" in message and "tk-fake-broken 0.1" in message
    assert "ImportError: simulated failure inside the plugin" in message
    assert isinstance(info.value.__cause__, ImportError)
    # the failure is remembered and reported again, and the other names still work
    with pytest.raises(PluginLoadError, match="simulated failure"):
        tq.get("broken")
    assert tq.create("nearest", dim=4, codebook_size=8).codebook_size == 8
    assert tq.create("good", dim=4, codebook_size=8).codebook_size == 8
    rows = {row["name"]: row for row in tq.describe()}
    assert rows["broken"]["description"].startswith("FAILED TO IMPORT:")
    assert "simulated failure" in rows["broken"]["description"]
    assert rows["good"]["description"] == "a test plugin"
    assert (rows["good"]["package"], rows["good"]["version"]) == ("tk-fake-good", "1.2.3")


def test_two_distributions_claiming_one_name_is_an_error(plugin_path: Path) -> None:
    assert "twin" in tq.available()
    with pytest.raises(RegistryError) as info:
        tq.create("twin")
    message = str(info.value)
    assert "more than one package" in message
    assert "tk-fake-a" in message and "tk-fake-b" in message
    assert tq.create("good", dim=4, codebook_size=8).dim == 4  # other names are unaffected
    rows = {row["name"]: row for row in tq.describe()}
    assert rows["twin"]["description"].startswith("CONFLICT:")
    assert "tk-fake-a" in rows["twin"]["description"] and "tk-fake-b" in rows["twin"]["description"]


def test_entry_point_to_a_non_quantizer_is_a_type_error(plugin_path: Path) -> None:
    with pytest.raises(TypeError, match="not a subclass of tokenkit.quantizers.Quantizer"):
        tq.get("not_a_quantizer")


def test_runtime_registration() -> None:
    from tokenkit.quantizers.nearest import NearestQuantizer

    class LocalQuantizer(NearestQuantizer):
        pass

    tq.register("local_test_quantizer", LocalQuantizer)
    try:
        assert "local_test_quantizer" in tq.available()
        assert isinstance(tq.create("local_test_quantizer", dim=2, codebook_size=4), LocalQuantizer)
        with pytest.raises(RegistryError, match="already registered"):
            tq.register("local_test_quantizer", LocalQuantizer)
        with pytest.raises(RegistryError, match="already registered by tokenkit"):
            tq.register("nearest", LocalQuantizer)
    finally:
        tq.registry.unregister("local_test_quantizer")
    assert "local_test_quantizer" not in tq.available()
