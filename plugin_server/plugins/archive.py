"""Reads one file out of a plugin archive: a GitHub zip or an npm tgz (spec/plugins.md §1.5)."""

from __future__ import annotations

import io
import posixpath
import tarfile
import zipfile


class ArchiveError(Exception):
    pass


def read_archive_file(archive: bytes, path: str) -> str | None:
    """The text of `path` below the archive's root folder, or None when it is absent."""
    try:
        return _from_zip(archive, path)
    except zipfile.BadZipFile:
        pass
    try:
        return _from_tgz(archive, path)
    except (tarfile.TarError, OSError, EOFError):
        raise ArchiveError("Could not read archive as .zip or .tgz") from None


def _from_zip(archive: bytes, path: str) -> str | None:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        names = zf.namelist()
        if not names:
            return None
        first = names[0]
        # A root folder when the first entry is one; archives whose first entry is a top-level
        # file are read from the top level (the original could not read them, quirk 8.12).
        root = first if first.endswith("/") else posixpath.dirname(first)
        wanted = posixpath.join(root, path) if root else path
        try:
            return zf.read(wanted).decode("utf-8")
        except KeyError:
            return None


def _from_tgz(archive: bytes, path: str) -> str | None:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tf:
        members = tf.getmembers()
        if not members:
            return None
        root = posixpath.dirname(members[0].name) or members[0].name.split("/")[0]
        if members[0].isdir():
            root = members[0].name.rstrip("/")
        wanted = posixpath.join(root, path) if root else path
        try:
            member = tf.getmember(wanted)
        except KeyError:
            return None
        extracted = tf.extractfile(member)
        return extracted.read().decode("utf-8") if extracted is not None else None
