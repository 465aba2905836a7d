"""Workdir files through :mod:`etils.epath`: a local path and ``gs://bucket/run`` alike.

Every file the trainer and the experiments read or write in a workdir goes through these helpers
(``epath.Path`` underneath: plain files locally, ``fsspec``/``gcsfs`` or ``tf.io.gfile`` for
``gs://``, ``s3://`` ...). Local paths behave as plain files always did: a whole-file write goes to
``<name>.tmp`` and is renamed over the old file (atomic), an append appends. On an object store an
object appears only once its upload has completed, so a whole-file write is atomic as it is and is
done directly (a rename there is a copy and a delete); objects cannot be appended to, so an append
reads the object and writes it back whole (logs are small and written at log cadence).
"""

from __future__ import annotations

import os

from etils import epath

__all__ = [
    "absolute",
    "append_text",
    "is_local",
    "makedirs",
    "read_bytes",
    "read_text",
    "write_bytes",
    "write_text",
]


def is_local(path: epath.PathLike) -> bool:
    """False for a URI (``gs://bucket/run``, ``s3://...``), True for a local path."""
    return "://" not in os.fspath(path)


def absolute(path: epath.PathLike) -> str:
    """``os.path.abspath`` of a local path; a URI as it is (``abspath`` would turn
    ``gs://bucket/run`` into ``<cwd>/gs:/bucket/run``)."""
    return os.path.abspath(path) if is_local(path) else os.fspath(path)


def makedirs(path: epath.PathLike) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def read_bytes(path: epath.PathLike) -> bytes:
    with epath.Path(path).open("rb") as f:
        return f.read()


def read_text(path: epath.PathLike) -> str:
    """The file's text, decoded as UTF-8 (never the locale's encoding)."""
    return read_bytes(path).decode("utf-8")


def write_bytes(path: epath.PathLike, data: bytes) -> None:
    """Replace ``path``'s content with ``data`` so that a reader sees the old or the new file,
    never a part (locally: ``<path>.tmp`` then ``os.replace``)."""
    if not is_local(path):
        with epath.Path(path).open("wb") as f:
            f.write(data)
        return
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path: epath.PathLike, text: str) -> None:
    """:func:`write_bytes` of ``text`` in UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def append_text(path: epath.PathLike, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path``, creating it if missing."""
    if is_local(path):
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    p = epath.Path(path)
    old = read_bytes(p) if p.exists() else b""
    with p.open("wb") as f:
        f.write(old + text.encode("utf-8"))
