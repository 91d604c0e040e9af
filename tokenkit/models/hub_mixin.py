"""Save, load and push tokenizers in the Hugging Face Hub layout.

Follows the conventions of ``huggingface_hub.PyTorchModelHubMixin``; a tokenizer folder (local,
in the Hub cache, or a Hub repository) holds exactly:

- ``config.json``: ``Tokenizer.config_dict()`` (architecture, tokenkit version, the
  architecture's fields, quantizer name and its config);
- ``model.safetensors``: the state dict, safetensors only (never pickle), loaded strictly;
- ``README.md``: the model card (:mod:`tokenkit.model_card`).

Loading builds a fresh tokenizer from ``config.json`` and fills it only after every check has
passed (files present and readable, architecture and quantizer installed, the same keys and
shapes), so a failure never leaves a half-loaded model behind. Writes go to a temporary folder
next to the target and are renamed into place.

The methods need four things of the class they are mixed into (``Tokenizer`` has them):
``config_dict()``, ``from_config_dict(d)``, ``architecture`` and ``modality``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from tokenkit.files import set_default_permissions

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, MODEL_CARD_NAME)

#: plugin names we know of -> the PyPI package that provides them, for "not installed" errors
KNOWN_PLUGINS: dict[str, dict[str, str]] = {
    "quantizer": {
        "lfq": "tokenkit-lfq",
    },
    "tokenizer architecture": {},
}

T = TypeVar("T", bound="HubMixin")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


# -- errors ---------------------------------------------------------------------------------------
class TokenizerLoadError(RuntimeError):
    """A tokenizer could not be loaded; the message says what is wrong and how to fix it."""


class MissingFileError(TokenizerLoadError, FileNotFoundError):
    """A file of the Hub layout is missing."""


class CorruptFileError(TokenizerLoadError):
    """A file exists but cannot be read (truncated download, wrong format)."""


class ChecksumError(TokenizerLoadError):
    """The weights file's sha256 is not the one pinned for it."""


class WeightsMismatchError(TokenizerLoadError):
    """The weights do not fit the model ``config.json`` describes (missing/unexpected keys, shapes)."""


class MissingPluginError(TokenizerLoadError):
    """``config.json`` names a quantizer or architecture that is not installed."""


class HubUnavailableError(TokenizerLoadError):
    """The files are neither reachable on the Hub nor in the local cache."""


class NotOnHubError(HubUnavailableError):
    """The Hub answered: no such repository (or no access), or no such revision."""


# -- the mixin ------------------------------------------------------------------------------------
class HubMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for tokenizers."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        eval_results: dict[str, Any] | None = None,
        license: str | None = "apache-2.0",
        datasets: list[str] | None = None,
        tags: list[str] | None = None,
        repo_id: str | None = None,
        model_card: str | None = None,
    ) -> Path:
        """Write config.json, model.safetensors and README.md to ``save_directory``.

        ``model_card`` replaces the generated README.md text; otherwise the card is rendered from
        the config and ``eval_results`` (the dict ``tokenkit eval`` writes).
        """
        from tokenkit.model_card import render_model_card

        target = Path(save_directory)
        config = self.config_dict()
        card = model_card
        if card is None:
            card = render_model_card(
                config,
                self.modality,
                repo_id=repo_id,
                num_parameters=sum(p.numel() for p in self.parameters()),
                license=license,
                datasets=datasets,
                tags=tags,
                eval_results=eval_results,
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            _write_weights(self, tmp / WEIGHTS_NAME, config)
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            (tmp / MODEL_CARD_NAME).write_text(card, encoding="utf-8")
            set_default_permissions(tmp)
            _move_into_place(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    @classmethod
    def from_pretrained(
        cls: type[T],
        repo_id_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        local_files_only: bool = False,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        map_location: str = "cpu",
        expected_sha256: str | None = None,
    ) -> T:
        """Load a tokenizer from a local folder or a Hub repository id, strictly, in eval mode.

        ``expected_sha256`` pins the weights file's content; ``local_files_only`` (or
        ``HF_HUB_OFFLINE=1``) reads the Hub cache without any network access.
        """
        folder = Path(repo_id_or_path)
        if folder.is_dir():
            config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        elif _looks_like_path(str(repo_id_or_path)):
            raise MissingFileError(
                f"no tokenizer folder at {folder}: the path does not exist or is not a directory. A "
                f"tokenizer folder holds {CONFIG_NAME} and {WEIGHTS_NAME} (write one with "
                f"save_pretrained); a Hub repository is named like 'org/name'."
            )
        else:
            paths = download_files(
                str(repo_id_or_path),
                revision=revision,
                local_files_only=local_files_only,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
            )
            config_path, weights_path = paths[CONFIG_NAME], paths[WEIGHTS_NAME]
        return load_folder_files(cls, config_path, weights_path, map_location, expected_sha256)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        eval_results: dict[str, Any] | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        license: str | None = "apache-2.0",
        datasets: list[str] | None = None,
        tags: list[str] | None = None,
        model_card: str | None = None,
    ) -> str:
        """Create ``repo_id`` if needed and upload the three files in one commit; returns its URL."""
        with tempfile.TemporaryDirectory(prefix="tokenkit-push-") as tmp:
            folder = self.save_pretrained(
                Path(tmp) / "tokenizer",
                eval_results=eval_results,
                license=license,
                datasets=datasets,
                tags=tags,
                repo_id=repo_id,
                model_card=model_card,
            )
            return upload_folder(
                folder,
                repo_id,
                commit_message=commit_message or f"Upload {self.architecture} with tokenkit",
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
            )


# -- loading --------------------------------------------------------------------------------------
def load_folder_files(
    cls: type[T],
    config_path: str | os.PathLike,
    weights_path: str | os.PathLike,
    map_location: str = "cpu",
    expected_sha256: str | None = None,
) -> T:
    """Build the tokenizer config.json describes and load its weights; all checks come first."""
    config = read_config(config_path)
    if expected_sha256 is not None:
        verify_sha256(weights_path, expected_sha256)
    check_plugins(config, source=str(config_path))
    state = read_weights(weights_path)
    model = _build(cls, config, str(config_path))
    check_state_dict(model, state, source=str(weights_path))
    model.load_state_dict(state, strict=True)
    model.to(map_location)
    model.eval()
    return model


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` as a dict, with clear errors for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"{path} is missing: a tokenizer folder needs {CONFIG_NAME} next to {WEIGHTS_NAME}. Write "
            f"both with save_pretrained(folder)."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(
            f"{path} is not valid JSON ({exc}); the file is damaged. Download or save it again."
        ) from exc
    if not isinstance(config, dict) or "architecture" not in config:
        raise CorruptFileError(
            f"{path} is not a tokenkit config: expected a JSON object with an 'architecture' key "
            f"(e.g. \"ImageTokenizer\"). Was it written by tokenkit's save_pretrained?"
        )
    return config


def read_weights(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of a safetensors file (on CPU); a truncated or foreign file is a clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"{path} is missing: tokenkit loads weights only from {WEIGHTS_NAME} (safetensors; pickled "
            f".bin/.pt files are never loaded). Save the model with save_pretrained(folder)."
        )
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(
            f"{path} ({path.stat().st_size} bytes) is not a readable safetensors file: {exc}. It is "
            f"probably truncated (an interrupted download or copy); delete it and download or save it "
            f"again (tokenkit download NAME, or from_pretrained(..., force_download=True))."
        ) from exc


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise :class:`ChecksumError` unless the file's sha256 is ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} is missing, so its sha256 cannot be checked")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"{path} has sha256 {actual}, but {expected.lower()} is pinned for it: the file is damaged "
            f"or is not the published one. Nothing was loaded. Delete it and download again "
            f"(force_download=True), or load the folder without a pinned checksum if you trust it."
        )


def check_plugins(config: dict[str, Any], source: str) -> None:
    """The architecture and quantizer config.json names must be installed."""
    from tokenkit.models.registry import registry as architectures
    from tokenkit.quantizers.registry import registry as quantizers

    wanted = [("tokenizer architecture", config.get("architecture"), architectures)]
    if config.get("quantizer") is not None:
        wanted.append(("quantizer", config["quantizer"], quantizers))
    for kind, name, registry in wanted:
        if not isinstance(name, str) or not name:
            raise CorruptFileError(f"{source}: the {kind} must be a non-empty string, got {name!r}")
        if name in registry:
            continue
        package = KNOWN_PLUGINS.get(kind, {}).get(name)
        hint = (
            f"It is provided by the package {package!r}: pip install {package}"
            if package
            else "Install the plugin package that provides it (it registers the name through the entry "
            f"point group {registry.group!r})"
        )
        raise MissingPluginError(
            f"{source} names the {kind} {name!r}, which is not installed. {hint}. Installed: "
            f"{', '.join(registry.names()) or 'none'}. Nothing was loaded."
        )


def check_state_dict(model: Any, state: dict[str, Any], source: str) -> None:
    """Same keys and shapes as the model's own state dict, or a :class:`WeightsMismatchError`."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if not (missing or unexpected or shapes):
        return
    problems = []
    if missing:
        problems.append(f"missing keys {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_some(unexpected)}")
    if shapes:
        problems.append(
            "shape mismatches " + _some([f"{k}: file {found[k]} vs model {expected[k]}" for k in shapes])
        )
    raise WeightsMismatchError(
        f"{source} does not fit the model its config.json describes: {'; '.join(problems)}. The weights "
        f"and config.json come from different models (or different tokenkit versions); save both "
        f"together with save_pretrained. Nothing was loaded."
    )


def _build(cls: type[T], config: dict[str, Any], source: str) -> T:
    from tokenkit.models.registry import get

    klass = get(config["architecture"])
    if not issubclass(klass, cls):
        raise TypeError(
            f"{source} describes a {klass.__name__}, not a {cls.__name__}; load it with "
            f"tokenkit.load(...) or {klass.__name__}.from_pretrained(...)"
        )
    try:
        return cls.from_config_dict(config)
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{source} does not describe a valid tokenizer: {exc}") from exc


# -- the Hub client -------------------------------------------------------------------------------
def download_files(
    repo_id: str,
    *,
    revision: str | None = None,
    local_files_only: bool = False,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    advice: str = "",
    with_card: bool = False,
) -> dict[str, Path]:
    """config.json and model.safetensors of ``repo_id`` through the Hub cache.

    ``with_card`` also fetches README.md when there is one (loading never needs it). Errors say
    what to do; ``advice`` adds a way out (e.g. the training recipe of a name).
    """
    import huggingface_hub as hf
    from huggingface_hub import errors

    where = f"{repo_id}@{revision or 'main'}"
    paths: dict[str, Path] = {}
    def fetch(filename: str) -> Path:
        return Path(
            hf.hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                force_download=force_download,
                token=token,
            )
        )

    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths[filename] = fetch(filename)
        except errors.LocalEntryNotFoundError as exc:
            raise HubUnavailableError(_unavailable(where, local_files_only, advice, exc)) from exc
        except errors.RemoteEntryNotFoundError as exc:
            extra = (
                " tokenkit loads weights from safetensors only (never pickled .bin/.pt files); re-upload "
                "with push_to_hub or `tokenkit push`."
                if filename == WEIGHTS_NAME
                else " It is not a tokenkit tokenizer repository."
            )
            raise MissingFileError(f"{where} has no {filename}.{extra}") from exc
        except errors.RepositoryNotFoundError as exc:
            raise NotOnHubError(
                f"repository {repo_id} was not found on {hf.constants.ENDPOINT} (or it is private: pass "
                f"token=... or run `hf auth login`).{_advice(advice)}"
            ) from exc
        except errors.RevisionNotFoundError as exc:
            raise NotOnHubError(
                f"revision {revision!r} does not exist in {repo_id}; list its branches and tags with "
                f"huggingface_hub.list_repo_refs({repo_id!r}).{_advice(advice)}"
            ) from exc
        except errors.HFValidationError as exc:
            raise MissingFileError(
                f"{repo_id!r} is neither an existing folder nor a valid Hub repository id ({exc})"
            ) from exc
        except (errors.HfHubHTTPError, OSError) as exc:  # HTTP errors, refused connections, timeouts
            raise HubUnavailableError(_unavailable(where, local_files_only, advice, exc)) from exc
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in ("httpx", "httpcore"):
                raise HubUnavailableError(_unavailable(where, local_files_only, advice, exc)) from exc
            raise
    if with_card:
        try:
            paths[MODEL_CARD_NAME] = fetch(MODEL_CARD_NAME)
        except (errors.EntryNotFoundError, errors.HfHubHTTPError, OSError):
            pass  # the card is documentation: a repository without one still loads
    return paths


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload tokenizer with tokenkit",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Upload a tokenizer folder's three files to ``repo_id`` in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise MissingFileError(f"{folder} has no {name}; write the folder with save_pretrained first")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        allow_patterns=[name for name in HUB_FILES if (folder / name).is_file()],
        commit_message=commit_message,
        revision=revision,
        create_pr=create_pr,
    )
    return str(info)


def _unavailable(where: str, local_files_only: bool, advice: str, exc: BaseException) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or local_files_only:
        why = (
            "offline mode is on (HF_HUB_OFFLINE=1)"
            if constants.HF_HUB_OFFLINE
            else "local_files_only=True was asked"
        )
        reason = f"{why} and the files are not in the Hub cache ({constants.HF_HUB_CACHE})"
    else:
        reason = f"the Hub ({constants.ENDPOINT}) could not be reached and the files are not in the cache"
    return (
        f"cannot load {where}: {reason} [{type(exc).__name__}: {_first_line(exc)}]. What to do:\n"
        f"- connect to the Hub and retry (or set HF_ENDPOINT to a reachable mirror"
        f"{'; unset HF_HUB_OFFLINE' if constants.HF_HUB_OFFLINE else ''});\n"
        f"- or fill the cache on a machine that can reach the Hub (`tokenkit download ...`) and copy "
        f"its HF cache folder here (HF_HOME / HF_HUB_CACHE);\n"
        f"- or load a local folder in the Hub layout ({CONFIG_NAME} + {WEIGHTS_NAME}): "
        f"tokenkit.load('/path/to/folder')" + (f";\n- or {advice}" if advice else ".")
    )


def _advice(advice: str) -> str:
    return f" Or {advice}" if advice else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def _some(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"


def _looks_like_path(name: str) -> bool:
    """True for strings that cannot be a Hub repo id ('name' or 'org/name')."""
    return name.startswith((".", "/", "~")) or not _REPO_ID.match(name)


# -- writing --------------------------------------------------------------------------------------
def _write_weights(model: Any, path: Path, config: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    # copies: safetensors refuses tensors that share storage (views, tied weights)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    # one metadata key only: safetensors stores metadata in a hash map whose order changes from
    # process to process, and the pinned sha256 of a shipped file must not depend on that
    # (architecture and version live in config.json)
    save_file(state, str(path), metadata={"format": "pt"})


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished folder to ``target``; into an existing folder, replace file by file."""
    if not target.exists():
        os.replace(tmp, target)
        return
    if not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory; choose another save_directory")
    for name in (WEIGHTS_NAME, CONFIG_NAME, MODEL_CARD_NAME):
        os.replace(tmp / name, target / name)
