"""Pretrained tokenizers by name, the Hugging Face Hub, and offline use.

``tokenkit.load(spec)`` accepts:

- a short name from the pretrained registry (``"pivq-ffhq"``): built-in names
  (:mod:`tokenkit.pretrained`) and plugin names (entry point group ``tokenkit.pretrained``).
  A name points at a Hub repository at a pinned revision, or at a folder shipped inside a
  package, and pins the sha256 of its ``model.safetensors``;
- ``"hf-hub:org/repo"`` or ``"hf-hub:org/repo@revision"``: any tokenkit repository on the Hub;
- a local folder in the Hub layout (config.json, model.safetensors, README.md).

Everything goes through the Hub cache of ``huggingface_hub``: ``HF_HUB_OFFLINE=1`` or
``local_files_only=True`` read the cache without any network access; ``HF_ENDPOINT`` points at a
mirror. When the files can be had neither from the Hub nor from the cache, the error says what to
do: fill the cache, load a local folder, or train the name from its recipe.

Command-line functions (wired into ``tokenkit``): :func:`main_pretrained` (``tokenkit
pretrained``), :func:`main_push` (``tokenkit push DIR REPO_ID``), :func:`main_download`
(``tokenkit download NAME``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenkit.files import set_default_permissions
from tokenkit.models.hub_mixin import (
    CONFIG_NAME,
    MODEL_CARD_NAME,
    WEIGHTS_NAME,
    ChecksumError,
    CorruptFileError,
    HubUnavailableError,
    MissingFileError,
    MissingPluginError,
    NotOnHubError,
    TokenizerLoadError,
    WeightsMismatchError,
    download_files,
    sha256_file,
    upload_folder,
    verify_sha256,
)
from tokenkit.registry import EntryPointRegistry, RegistryError

if TYPE_CHECKING:
    from tokenkit.models.base import Tokenizer

GROUP = "tokenkit.pretrained"
HF_HUB_PREFIX = "hf-hub:"
MODALITIES = ("image", "audio")
registry = EntryPointRegistry(GROUP, kind="pretrained tokenizer")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


# -- registry entries -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainedEntry:
    """Where a pretrained tokenizer's files live and how to check them.

    Exactly one of ``repo_id`` (a Hub repository, fetched at ``revision``) and ``path`` (a folder in
    the Hub layout, e.g. shipped inside a package). ``sha256`` is that of model.safetensors; it is
    ``None`` only for weights not published yet, and then nothing is verified.
    """

    name: str
    modality: str
    repo_id: str | None = None
    revision: str | None = None
    sha256: str | None = None
    path: str | None = None
    recipe: str | None = None
    description: str = ""
    package: str = "tokenkit"

    def __post_init__(self) -> None:
        where = f"pretrained entry {self.name!r} (from {self.package})"
        if (self.repo_id is None) == (self.path is None):
            raise ValueError(
                f"{where} needs exactly one of 'repo_id' (a Hub repository) and 'path' (a folder)"
            )
        if self.modality not in MODALITIES:
            raise ValueError(f"{where}: modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"{where}: sha256 must be 64 lowercase hex digits or None, got {self.sha256!r}")
        if self.repo_id is not None and not self.revision:
            raise ValueError(
                f"{where}: a Hub entry pins its revision (a tag or a commit id), so that a name always "
                f"means the same weights; add 'revision'"
            )

    @classmethod
    def from_dict(
        cls, name: str, d: dict[str, Any], package: str = "tokenkit", base_dir: Path | None = None
    ) -> PretrainedEntry:
        """An entry from registry data; a relative ``path`` is taken relative to ``base_dir``."""
        known = {f.name for f in fields(cls)} - {"name", "package"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"pretrained entry {name!r} (from {package}) has unknown key(s) {unknown}; it takes "
                f"{sorted(known)}"
            )
        data = dict(d)
        if data.get("path") is not None and base_dir is not None:
            data["path"] = str((base_dir / data["path"]).resolve())
        return cls(name=name, package=package, **data)

    @property
    def source(self) -> str:
        """``"shipped"`` (a folder on disk) or ``"hub"``."""
        return "shipped" if self.path is not None else "hub"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _builtin_entries() -> dict[str, PretrainedEntry]:
    from tokenkit.pretrained import PRETRAINED

    return {
        name: PretrainedEntry.from_dict(name, d, package="tokenkit", base_dir=_PRETRAINED_DIR)
        for name, d in PRETRAINED.items()
    }


def _plugin_entry(name: str) -> PretrainedEntry:
    entry = registry.entry(name)
    obj = entry.load()
    if isinstance(obj, PretrainedEntry):
        return obj
    if not isinstance(obj, dict):
        raise TypeError(
            f"the entry point {name!r} in group {GROUP!r} (package {entry.package}) loads a "
            f"{type(obj).__name__}; it must load a dict or a tokenkit.hub.PretrainedEntry"
        )
    module = sys.modules.get(entry.value.split(":")[0])
    base_dir = Path(module.__file__).resolve().parent if getattr(module, "__file__", None) else None
    return PretrainedEntry.from_dict(name, obj, package=entry.package, base_dir=base_dir)


def list_pretrained() -> list[str]:
    """Every pretrained name: built-in and from plugins."""
    return sorted(set(_builtin_entries()) | set(registry.names()))


def pretrained_entry(name: str) -> PretrainedEntry:
    """The registry entry of ``name`` (built-in or plugin)."""
    builtin = _builtin_entries()
    if name in builtin:
        if name in registry:
            raise RegistryError(
                f"pretrained name {name!r} is built into tokenkit and also claimed by the package "
                f"{registry.entry(name).package}; uninstall that plugin or ask it to rename its entry"
            )
        return builtin[name]
    if name in registry:
        return _plugin_entry(name)
    hint = ""
    if "/" in name:
        hint = f" To load a Hub repository, write 'hf-hub:{name}'."
    raise RegistryError(
        f"unknown pretrained tokenizer {name!r} (and no folder of that name exists).{hint} Known names: "
        f"{', '.join(list_pretrained()) or 'none'}; a plugin adds names through the entry point group "
        f"{GROUP!r}."
    )


def register_pretrained(name: str, entry: PretrainedEntry | dict[str, Any]) -> None:
    """Add a name for this process only (a plugin declares an entry point instead)."""
    if isinstance(entry, dict):
        entry = PretrainedEntry.from_dict(name, entry, package="<runtime>")
    if name in _builtin_entries():
        raise RegistryError(f"pretrained name {name!r} is built into tokenkit")
    registry.register(name, entry)


# -- resolving a spec -------------------------------------------------------------------------------
def resolve(spec: str | os.PathLike) -> PretrainedEntry | Path | tuple[str, str | None]:
    """What ``spec`` means: a local folder (``Path``), ``(repo_id, revision)``, or a registry entry."""
    text = str(spec)
    if text.startswith(HF_HUB_PREFIX):
        repo, _, revision = text[len(HF_HUB_PREFIX) :].partition("@")
        if not repo or repo.count("/") > 1:
            raise ValueError(f"{text!r}: write 'hf-hub:org/repo' or 'hf-hub:org/repo@revision'")
        return repo, revision or None
    if Path(text).expanduser().is_dir():
        return Path(text).expanduser()
    if text.startswith((".", "/", "~")):
        raise MissingFileError(
            f"no tokenizer folder at {text}: the path does not exist or is not a directory"
        )
    return pretrained_entry(text)


def download(
    spec: str | os.PathLike,
    *,
    revision: str | None = None,
    local_files_only: bool = False,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_dir: str | os.PathLike | None = None,
) -> Path:
    """Fetch (or find) a tokenizer's files; returns the folder that holds them.

    Files of a pinned name are checked against its sha256. With ``local_dir`` the files are
    copied there (a plain folder that ``tokenkit.load(local_dir)`` reads with no Hub at all).
    """
    config_path, weights_path, _ = _fetch(
        spec, revision, local_files_only, cache_dir, force_download, token, with_card=True
    )
    folder = config_path.parent
    if local_dir is None:
        return folder
    return _copy_folder(folder, Path(local_dir))


def load(
    spec: str | os.PathLike,
    *,
    revision: str | None = None,
    local_files_only: bool = False,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    map_location: str = "cpu",
) -> Tokenizer:
    """A tokenizer by short name, ``hf-hub:org/repo[@revision]`` or local folder, in eval mode."""
    from tokenkit.models.base import Tokenizer
    from tokenkit.models.hub_mixin import load_folder_files

    config_path, weights_path, entry = _fetch(
        spec, revision, local_files_only, cache_dir, force_download, token
    )
    tokenizer = load_folder_files(Tokenizer, config_path, weights_path, map_location)
    if entry is not None and tokenizer.modality != entry.modality:
        raise TokenizerLoadError(
            f"pretrained entry {entry.name!r} (from {entry.package}) says modality {entry.modality!r} but "
            f"its files hold a {tokenizer.modality!r} tokenizer ({tokenizer.architecture}); the registry "
            f"entry is wrong"
        )
    return tokenizer


def _fetch(
    spec: str | os.PathLike,
    revision: str | None,
    local_files_only: bool,
    cache_dir: str | os.PathLike | None,
    force_download: bool,
    token: str | bool | None,
    with_card: bool = False,
) -> tuple[Path, Path, PretrainedEntry | None]:
    """``(config path, weights path, registry entry or None)``; checksums verified."""
    target = resolve(spec)
    if isinstance(target, Path):
        return target / CONFIG_NAME, target / WEIGHTS_NAME, None
    if isinstance(target, tuple):
        repo_id, spec_revision = target
        if revision is not None and spec_revision is not None and revision != spec_revision:
            raise ValueError(
                f"{spec!r} names revision {spec_revision!r} but revision={revision!r} was passed"
            )
        paths = download_files(
            repo_id,
            revision=revision or spec_revision,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            with_card=with_card,
        )
        return paths[CONFIG_NAME], paths[WEIGHTS_NAME], None
    entry = target
    if entry.path is not None:
        folder = Path(entry.path)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    else:
        pinned = revision is None or revision == entry.revision
        if not pinned:
            warnings.warn(
                f"loading {entry.name!r} at revision {revision!r} instead of its pinned {entry.revision!r}: "
                f"its sha256 is not checked",
                stacklevel=3,
            )
        paths = download_files(
            entry.repo_id,
            revision=revision or entry.revision,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            advice=_recipe_advice(entry),
            with_card=with_card,
        )
        config_path, weights_path = paths[CONFIG_NAME], paths[WEIGHTS_NAME]
        if not pinned:
            return config_path, weights_path, entry
    if entry.sha256 is not None:
        verify_sha256(weights_path, entry.sha256)
    return config_path, weights_path, entry


def _recipe_advice(entry: PretrainedEntry) -> str:
    if not entry.recipe:
        return ""
    return (
        f"train {entry.name!r} yourself: its recipe is {entry.recipe} in the tokenkit source repository "
        f"(`tokenkit train {entry.recipe}`), then save the trained tokenizer with save_pretrained and "
        f"load that folder with tokenkit.load('/path/to/folder')."
    )


def _copy_folder(folder: Path, target: Path) -> Path:
    """Copy the Hub-layout files of ``folder`` to ``target`` (a temp folder renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        names = [n for n in (CONFIG_NAME, WEIGHTS_NAME, MODEL_CARD_NAME) if (folder / n).is_file()]
        for name in names:
            shutil.copyfile(folder / name, tmp / name)  # follows the cache's symlinks
        set_default_permissions(tmp)
        if not target.exists():
            os.replace(tmp, target)
        else:
            for name in names:
                os.replace(tmp / name, target / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# -- pushing a folder -------------------------------------------------------------------------------
def push(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    eval_results: dict[str, Any] | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    license: str | None = None,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
) -> str:
    """Check that ``folder`` loads, then upload its files to ``repo_id``; returns the commit URL.

    The weights and config.json go up byte for byte. The model card is the folder's README.md
    unless card options are given (``eval_results``, ``license``, ``datasets``, ``tags``) or it has
    none: then it is rendered afresh for ``repo_id``.
    """
    from tokenkit.model_card import DEFAULT_LICENSE, render_model_card

    folder = Path(folder)
    tokenizer = load(folder)  # strict: a folder that does not load is never pushed
    card_options = eval_results is not None or license or datasets or tags
    rerender = card_options or not (folder / MODEL_CARD_NAME).is_file()
    with tempfile.TemporaryDirectory(prefix="tokenkit-push-") as tmp:
        staged = Path(tmp)
        shutil.copyfile(folder / CONFIG_NAME, staged / CONFIG_NAME)
        shutil.copyfile(folder / WEIGHTS_NAME, staged / WEIGHTS_NAME)
        if rerender:
            config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
            card = render_model_card(
                config,
                tokenizer.modality,
                repo_id=repo_id,
                num_parameters=sum(p.numel() for p in tokenizer.parameters()),
                license=license or DEFAULT_LICENSE,
                datasets=datasets,
                tags=tags,
                eval_results=eval_results,
            )
            (staged / MODEL_CARD_NAME).write_text(card, encoding="utf-8")
        else:
            shutil.copyfile(folder / MODEL_CARD_NAME, staged / MODEL_CARD_NAME)
        return upload_folder(
            staged,
            repo_id,
            commit_message=commit_message or f"Upload {tokenizer.architecture} with tokenkit",
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


# -- command line -----------------------------------------------------------------------------------
def main_pretrained(argv: Sequence[str] | None = None) -> int:
    """``tokenkit pretrained [NAME] [--json]``: the pretrained names, where they come from, their state."""
    parser = argparse.ArgumentParser(prog="tokenkit pretrained", description=main_pretrained.__doc__)
    parser.add_argument("name", nargs="?", help="show one entry in full")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        names = [args.name] if args.name else list_pretrained()
        rows = [{**pretrained_entry(n).to_dict(), "status": _status(pretrained_entry(n))} for n in names]
    except (RegistryError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.name:
        for key, value in rows[0].items():
            print(f"{key:12} {value if value is not None else '-'}")
    else:
        _print_table(rows)
    return 0


def main_push(argv: Sequence[str] | None = None) -> int:
    """``tokenkit push DIR REPO_ID``: check that a tokenizer folder loads, then upload it to the Hub."""
    parser = argparse.ArgumentParser(prog="tokenkit push", description=main_push.__doc__)
    parser.add_argument("folder", help="folder written by save_pretrained (config.json, model.safetensors)")
    parser.add_argument("repo_id", help="Hub repository, e.g. my-org/my-tokenizer (created if missing)")
    parser.add_argument("--eval-results", help="eval.json from `tokenkit eval`, shown in the model card")
    parser.add_argument("--license", help="license id for the model card, e.g. apache-2.0")
    parser.add_argument("--dataset", action="append", dest="datasets", help="training dataset (repeatable)")
    parser.add_argument("--tag", action="append", dest="tags", help="extra model card tag (repeatable)")
    parser.add_argument("--revision", help="branch to push to (default main)")
    parser.add_argument("--message", help="commit message")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`)")
    args = parser.parse_args(argv)
    eval_results = None
    if args.eval_results:
        try:
            eval_results = json.loads(Path(args.eval_results).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"error: cannot read --eval-results {args.eval_results}: {exc}", file=sys.stderr)
            return 1
    try:
        url = push(
            args.folder,
            args.repo_id,
            eval_results=eval_results,
            commit_message=args.message,
            private=args.private or None,
            token=args.token,
            revision=args.revision,
            create_pr=args.create_pr,
            license=args.license,
            datasets=args.datasets,
            tags=args.tags,
        )
    except (TokenizerLoadError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # huggingface_hub's HTTP errors are OSErrors too
        print(f"error: the upload to {args.repo_id} failed: {exc}", file=sys.stderr)
        return 1
    print(url)
    return 0


def main_download(argv: Sequence[str] | None = None) -> int:
    """``tokenkit download NAME``: fetch a tokenizer into the Hub cache (or a folder) and check it loads."""
    parser = argparse.ArgumentParser(prog="tokenkit download", description=main_download.__doc__)
    parser.add_argument("name", help="pretrained name, hf-hub:org/repo[@revision], or a folder")
    parser.add_argument("--revision", help="override the pinned revision (its sha256 is then not checked)")
    parser.add_argument("--local-dir", help="also copy the files into this folder")
    parser.add_argument("--cache-dir", help="Hub cache folder (default: HF_HUB_CACHE)")
    parser.add_argument("--local-files-only", action="store_true", help="use the cache only, no network")
    parser.add_argument("--token", help="Hub token for private repositories")
    args = parser.parse_args(argv)
    try:
        folder = download(
            args.name,
            revision=args.revision,
            local_files_only=args.local_files_only,
            cache_dir=args.cache_dir,
            token=args.token,
            local_dir=args.local_dir,
        )
        load(folder)  # strict check: the files form a loadable tokenizer
    except (TokenizerLoadError, RegistryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


def _status(entry: PretrainedEntry) -> str:
    if entry.path is not None:
        return "shipped" if (Path(entry.path) / WEIGHTS_NAME).is_file() else "missing (package damaged?)"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(entry.repo_id, WEIGHTS_NAME, revision=entry.revision)
    state = "cached" if isinstance(cached, str) else "not cached"
    if entry.sha256 is None:
        state += ", sha256 not pinned"
    return state


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns = ["name", "modality", "where", "sha256", "status", "recipe"]
    table = []
    for r in rows:
        where = r["path"] if r["path"] else f"{r['repo_id']}@{r['revision']}"
        sha = r["sha256"][:12] if r["sha256"] else "-"
        table.append([r["name"], r["modality"], where, sha, r["status"], r["recipe"] or "-"])
    widths = [max([len(c)] + [len(str(row[i])) for row in table]) for i, c in enumerate(columns)]
    for row in [columns, *table]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def weights_sha256(folder: str | os.PathLike) -> str:
    """sha256 of a folder's model.safetensors: the value to pin in a pretrained entry."""
    return sha256_file(Path(folder) / WEIGHTS_NAME)


__all__ = [
    "GROUP",
    "ChecksumError",
    "CorruptFileError",
    "HubUnavailableError",
    "MissingFileError",
    "MissingPluginError",
    "NotOnHubError",
    "TokenizerLoadError",
    "WeightsMismatchError",
    "PretrainedEntry",
    "download",
    "list_pretrained",
    "load",
    "main_download",
    "main_pretrained",
    "main_push",
    "pretrained_entry",
    "push",
    "register_pretrained",
    "registry",
    "resolve",
    "weights_sha256",
]
