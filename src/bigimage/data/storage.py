"""File operations on local paths and any fsspec URL (``gs://`` through gcsfs, ``s3://``, ``memory://``...).

fsspec does the generic work, and makes its file systems anew after a fork (Spark's Python workers).
What stays here is the project's own: atomic local writes with the mode ``open()`` gives (0666 less the
umask, never ``tempfile``'s 0600: a set on a shared file system must stay readable), conditional writes
and deletes on Cloud Storage (``if_generation_match``) through ``google-cloud-storage`` for the lock and
the manifest commit, and one atomic exchange of two local directories (:func:`swap_in_dir`). Remote
paths are returned as full URLs, local ones as given; a missing file or object raises FileNotFoundError.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import fsspec

from bigimage.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from fsspec import AbstractFileSystem
    from google.cloud.storage import Blob, Client

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# Marks a directory that local_cache_copy owns, so it may prune files the bucket no longer holds.
CACHE_MARKER = ".bigimage-cache"
_PROTOCOL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://")


class GCSCredentialsError(UserError, RuntimeError):
    """No credentials for Cloud Storage; the message says how to provide them."""


class PreconditionFailedError(RuntimeError):
    """A conditional write or delete found another generation of the object than the one required."""


class ExchangeUnsupportedError(OSError):
    """This file system (or OS) cannot exchange two directories atomically (``renameat2`` EXCHANGE)."""


@dataclass(frozen=True, order=True)
class FileInfo:
    """A regular file or object: its path (local path or URL) and size in bytes."""

    path: str
    size: int


def protocol(url: str) -> str:
    """The scheme of a URL (``gs``, ``s3``, ``memory``...), ``file`` for a local path."""
    match = _PROTOCOL.match(str(url))
    return match.group(1) if match else "file"


def is_remote(url: str) -> bool:
    """True for a URL of any file system but the local one."""
    return protocol(url) != "file"


def is_gcs(url: str) -> bool:
    """True for ``gs://`` URLs."""
    return protocol(url) == "gs"


def join(url: str, *parts: str) -> str:
    """Join path parts onto a local path or a URL (always with ``/`` for a URL)."""
    url = str(url)
    if not is_remote(url):
        return os.path.join(url, *[str(p) for p in parts])
    return "/".join([url.rstrip("/"), *(p for p in (str(part).strip("/") for part in parts) if p)])


def basename(url: str) -> str:
    """Last path component of a local path or URL (ignoring a trailing slash)."""
    return str(url).rstrip("/").rsplit("/", 1)[-1]


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec file system holding ``url`` and the path of ``url`` in it; ValueError for a ``gs://`` URL
    without a bucket, :class:`GCSCredentialsError` when Cloud Storage has no credentials.

    ``gs://`` goes to gcsfs's core class (the subclass gcsfs registers asks each bucket's type over gRPC,
    which an emulator never answers), without a listings cache: other processes write the same prefixes.
    """
    url = str(url)
    if not is_remote(url):
        return fsspec.filesystem("file"), os.path.abspath(url)
    if not is_gcs(url):
        return fsspec.core.url_to_fs(url)
    from gcsfs.core import GCSFileSystem
    from google.auth.exceptions import DefaultCredentialsError

    path = url[len("gs://") :].rstrip("/")
    if not path.partition("/")[0]:
        raise ValueError(f"{url!r} has no bucket name; expected gs://bucket/path")
    try:
        token = "anon" if os.environ.get(EMULATOR_ENV) else "google_default"
        return GCSFileSystem(token=token, use_listings_cache=False), path
    except DefaultCredentialsError as exc:
        raise _credentials_error(exc) from exc


def list_files(url: str) -> list[FileInfo]:
    """Every regular file under directory ``url`` (gs://: the prefix ``key/``), recursively, sorted by path;
    ``[]`` when there is none or no such directory: callers decide how to complain."""
    url = str(url)
    fs, path = filesystem(url)
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:  # no such bucket: nothing under the URL either
        return []
    inside = path.rstrip("/") + "/"
    return sorted(
        FileInfo(f"{url.rstrip('/')}/{name[len(inside) :]}", int(info.get("size") or 0))
        for name, info in found.items()
        if name.startswith(inside) and info.get("type") == "file"
    )


def exists(url: str) -> bool:
    """True if ``url`` is an existing file/object or a directory (for gs://: a non-empty prefix)."""
    fs, path = filesystem(url)
    return bool(fs.exists(path))


def read_bytes(url: str) -> bytes:
    """The whole content of a file or object. Raises FileNotFoundError if missing. Local files are read
    by Python itself: fsspec's local files seek, which a pipe or device cannot."""
    if not is_remote(url):
        with open(url, "rb") as handle:
            return handle.read()
    fs, path = filesystem(url)
    return bytes(fs.cat_file(path))


def create_new_file(directory: str, prefix: str, suffix: str) -> tuple[int, str]:
    """A new, uniquely named file in ``directory``, opened for writing: ``(fd, path)``; ``tempfile.mkstemp``
    with the mode ``open()`` gives (module doc)."""
    path = os.path.join(directory, f"{prefix}{uuid.uuid4().hex}{suffix}")  # 122 random bits: no retry
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A file to write local ``path`` through, synced and renamed over it when the block ends (readers see
    the old content or the new), removed if it raises. Parents are made; a replaced file's mode is kept."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, temp = create_new_file(parent, f".{os.path.basename(path)}.", ".tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def write_bytes(url: str, data: bytes, *, if_generation_match: int | None = None) -> int | None:
    """Write ``data`` to ``url`` atomically (local: :func:`atomic_file`; remote: one upload).

    ``if_generation_match`` (gs:// only) makes it conditional: 0 creates only if absent, N replaces only
    generation N, else :class:`PreconditionFailedError`; it returns the new object's generation.
    """
    url = str(url)
    if if_generation_match is not None:
        return _write_conditional(url, data, if_generation_match)
    if not is_remote(url):
        with atomic_file(url) as handle:
            handle.write(data)
        return None
    fs, path = filesystem(url)
    try:
        fs.pipe_file(path, data)
    except FileNotFoundError:
        raise FileNotFoundError(f"cannot write {url}: the bucket does not exist") from None
    return None


def copy(src: str, dst: str) -> None:
    """Copy one file/object to ``dst``, replacing it, between any two file systems. A local ``dst`` is
    written atomically; within one remote file system the copy is the server's (gs://: a rewrite)."""
    src, dst = str(src), str(dst)
    source, src_path = filesystem(src)
    target, dst_path = filesystem(dst)
    if not is_remote(dst):
        with source.open(src_path, "rb") as reader, atomic_file(dst) as writer:
            shutil.copyfileobj(reader, writer, length=1 << 20)
    elif not is_remote(src):
        if not os.path.isfile(src_path):
            raise FileNotFoundError(f"no such file: {src}")
        target.put_file(src_path, dst_path)
    elif source is target:
        source.cp_file(src_path, dst_path)
    else:
        write_bytes(dst, read_bytes(src))


def move(src: str, dst: str) -> None:
    """Move a file/object, replacing ``dst``. Local: ``os.replace`` (parents created; a copy if the
    rename crosses file systems). Otherwise a copy, then a delete."""
    src, dst = str(src), str(dst)
    if is_remote(src) or is_remote(dst):
        copy(src, dst)
        delete(src)
        return
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # another file system
            raise
        copy(src, dst)
        os.unlink(src)


def delete(url: str, *, if_generation_match: int | None = None) -> None:
    """Delete one file or object; a missing one is fine. ``if_generation_match`` (gs:// only):
    delete only that generation, else :class:`PreconditionFailedError`."""
    if if_generation_match is not None:
        _delete_conditional(str(url), if_generation_match)
        return
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def delete_files(urls: Iterable[str]) -> None:
    """Delete many files/objects (missing ones are fine); gs:// objects go in batched requests."""
    objects: list[str] = []
    for url in urls:
        if is_gcs(url):
            objects.append(url)
        else:
            delete(url)
    if objects:
        with contextlib.suppress(FileNotFoundError):  # raised when none of them was there
            filesystem(objects[0])[0].rm([filesystem(url)[1] for url in objects])


def remove_tree(url: str) -> None:
    """Delete a local directory tree, or every object under a prefix; a missing one is fine."""
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def local_cache_copy(url_dir: str, cache_dir: str | Path) -> str:
    """A local mirror of everything under a remote ``url_dir`` (local paths are returned unchanged).

    Files already there with the same size are not downloaded again. In a ``cache_dir`` this function
    made (it holds :data:`CACHE_MARKER`) files ``url_dir`` no longer holds are removed.
    """
    url_dir = str(url_dir)
    if not is_remote(url_dir):
        return url_dir
    cache = Path(cache_dir)
    owned = (cache / CACHE_MARKER).exists() or not cache.exists() or not any(cache.iterdir())
    cache.mkdir(parents=True, exist_ok=True)
    if owned:
        (cache / CACHE_MARKER).touch()
    prefix = len(url_dir.rstrip("/")) + 1
    remote = {str(cache.joinpath(*info.path[prefix:].split("/"))): info for info in list_files(url_dir)}
    todo = {
        local: filesystem(info.path)[1]
        for local, info in remote.items()
        if not os.path.isfile(local) or os.path.getsize(local) != info.size
    }
    if todo:
        filesystem(url_dir)[0].get(list(todo.values()), list(todo))
    if owned:
        for info in list_files(str(cache)):
            if info.path not in remote and os.path.basename(info.path) != CACHE_MARKER:
                os.unlink(info.path)
    return str(cache)


# ----------------------------------------------------------------------- atomic directory swap

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def _renameat2(src: str, dst: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        raise ExchangeUnsupportedError(errno.ENOSYS, "no renameat2 in this C library", src)
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        kind = ExchangeUnsupportedError if code in _UNSUPPORTED else OSError
        raise kind(code, os.strerror(code), src, None, dst)


def swap_in_dir(new_dir: str, target: str) -> None:
    """Make local directory ``target`` be ``new_dir`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``),
    the old ``target`` left at ``new_dir`` for the caller to delete; a missing ``target`` is a plain rename.
    :class:`ExchangeUnsupportedError` where the file system cannot (:func:`supports_exchange`)."""
    if os.path.lexists(target):
        _renameat2(new_dir, target, _RENAME_EXCHANGE)
    else:
        os.rename(new_dir, target)
    fd = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename is durable: a power cut after it must not undo it
    finally:
        os.close(fd)


def supports_exchange(directory: str) -> bool:
    """Whether :func:`swap_in_dir` works in local ``directory`` (tried on two empty folders there)."""
    first = os.path.join(directory, f".exchange-probe-{uuid.uuid4().hex[:12]}")
    second = f"{first}-b"
    os.mkdir(first)
    try:
        os.mkdir(second)
        _renameat2(first, second, _RENAME_EXCHANGE)
        return True
    except ExchangeUnsupportedError:
        return False
    finally:
        for path in (first, second):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(path)


# ------------------------------------------------------------------ Cloud Storage conditional writes


def gcs_client() -> Client:
    """This process's ``google-cloud-storage`` client (for conditional writes), made on first use and
    anew after a fork. With ``STORAGE_EMULATOR_HOST`` it reaches that emulator, anonymously."""
    return _client(os.getpid(), os.environ.get(EMULATOR_ENV) or None)


@functools.lru_cache(maxsize=1)  # a new pid (a fork) or emulator setting replaces the client
def _client(pid: int, emulator: str | None) -> Client:
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    if emulator and "://" not in emulator:  # the client takes the variable as its endpoint, scheme included
        os.environ[EMULATOR_ENV] = f"http://{emulator}"
    try:
        return storage.Client(project=None)  # objects need no project (buckets are global)
    except DefaultCredentialsError as exc:
        raise _credentials_error(exc) from exc


def _credentials_error(cause: Exception) -> GCSCredentialsError:
    return GCSCredentialsError(
        "No Google Cloud credentials found for gs:// access. Set GOOGLE_APPLICATION_CREDENTIALS "
        "to a service-account key file, or run `gcloud auth application-default login` "
        f"(or set {EMULATOR_ENV} to use a storage emulator). Cause: {cause}"
    )


def _blob(url: str) -> Blob:
    if not is_gcs(url):
        raise ValueError(f"conditional writes are for gs:// objects only, not {url}")
    bucket, _, key = filesystem(url)[1].partition("/")
    return gcs_client().bucket(bucket).blob(key)


def read_with_generation(url: str) -> tuple[bytes, int]:
    """A gs:// object's content and its generation (for a later conditional write or delete)."""
    from google.api_core.exceptions import NotFound

    blob = _blob(str(url))
    try:
        found = blob.bucket.get_blob(blob.name)
        if found is not None:
            return found.download_as_bytes(), int(found.generation or 0)
    except NotFound:
        pass
    raise FileNotFoundError(f"no such object: {url}")


def _write_conditional(url: str, data: bytes, generation: int) -> int:
    from google.api_core.exceptions import NotFound, PreconditionFailed

    blob = _blob(url)
    try:
        blob.upload_from_string(data, content_type="application/octet-stream", if_generation_match=generation)
    except NotFound:
        raise FileNotFoundError(f"cannot write {url}: the bucket does not exist") from None
    except PreconditionFailed:
        raise PreconditionFailedError(f"{url} is not at generation {generation}") from None
    return int(blob.generation or 0)


def _delete_conditional(url: str, generation: int) -> None:
    from google.api_core.exceptions import NotFound, PreconditionFailed

    try:
        _blob(url).delete(if_generation_match=generation)
    except NotFound:
        pass
    except PreconditionFailed:
        raise PreconditionFailedError(f"{url} is not at generation {generation}") from None
