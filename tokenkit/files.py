"""Writing files so that nothing a user saved is ever half-written.

Everything tokenkit writes (checkpoints, tokenizer folders, pictures, eval.json) goes to a temp
file or folder next to its destination and is renamed into place. Temp files are created private
(mode 600/700); before the rename they get the permissions an ordinary ``open()`` would give
(0666/0777 less the umask), so shipped or shared files stay readable.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def set_default_permissions(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and the files directly in it) umask-default permissions."""
    path = Path(path)
    mask = _umask()
    if path.is_dir():
        path.chmod(0o777 & ~mask)
        for child in path.iterdir():
            if child.is_file():
                child.chmod(0o666 & ~mask)
    else:
        path.chmod(0o666 & ~mask)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` for a temp file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        set_default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
