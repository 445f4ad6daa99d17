"""File operations on local paths and ``gs://bucket/key`` URLs, with one vocabulary for both.

Cloud Storage goes through the ``google-cloud-storage`` client (not TensorFlow's filesystem), so the data
layer needs neither TensorFlow nor Hadoop connectors. The client is made lazily, once per process and
again after a fork, so every function is safe in Spark's Python workers (no connection pool crosses a
fork). ``STORAGE_EMULATOR_HOST`` selects an emulator (anonymous, no project); otherwise Application
Default Credentials are used.

``gs://`` paths are returned as full URLs, local ones as given; a missing file or object raises
:class:`FileNotFoundError` for both. Local files get the mode a plain ``open()`` gives (0666 less the
umask), never ``tempfile``'s 0600: a TFRecord set on a shared file system must be readable by the users
the umask lets in. Conditional writes (``if_generation_match``; 0: create only if absent) are Cloud
Storage's one atomic primitive, a compare-and-swap on one object; locally a TFRecord swap has
:func:`swap_in_dir` (one atomic directory exchange).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bigimage.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from google.cloud.storage import Blob, Client

GCS_SCHEME = "gs://"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# Marks a directory that local_cache_copy owns, so it may prune files the bucket no longer holds.
CACHE_MARKER = ".bigimage-cache"
_BATCH_LIMIT = 100  # the JSON API's maximum calls per batch request
_DOWNLOAD_THREADS = 8


class GCSCredentialsError(UserError, RuntimeError):
    """No credentials for Cloud Storage; the message says how to provide them."""


class PreconditionFailedError(RuntimeError):
    """A conditional write or delete found another generation of the object than the one required."""


class ExchangeUnsupportedError(OSError):
    """This file system (or OS) cannot exchange two directories atomically (``renameat2`` EXCHANGE)."""


@dataclass(frozen=True, order=True)
class FileInfo:
    """A regular file or object: its path (local path or gs:// URL) and size in bytes."""

    path: str
    size: int


# --------------------------------------------------------------------------------------------- URLs


def is_gcs(url: str) -> bool:
    """True for ``gs://`` URLs."""
    return str(url).startswith(GCS_SCHEME)


def split_gcs(url: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``; the key may be empty. Raises ValueError."""
    if not is_gcs(url):
        raise ValueError(f"{url!r} is not a gs:// URL")
    bucket, _, key = url[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"{url!r} has no bucket name; expected gs://bucket/path")
    return bucket, key


def join(url: str, *parts: str) -> str:
    """Join path parts onto a local path or a gs:// URL (always with ``/`` for gs://)."""
    url = str(url)
    if not is_gcs(url):
        return os.path.join(url, *[str(p) for p in parts])
    out = url.rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def basename(url: str) -> str:
    """Last path component of a local path or gs:// URL (ignoring a trailing slash)."""
    return str(url).rstrip("/").rsplit("/", 1)[-1] if is_gcs(url) else os.path.basename(str(url).rstrip(os.sep))


# ------------------------------------------------------------------------------------------- client


def gcs_client() -> Client:
    """This process's Cloud Storage client, created on first use (and anew after a fork).

    ``STORAGE_EMULATOR_HOST`` (e.g. ``http://127.0.0.1:9023``) selects an emulator, anonymous
    credentials and no project. Otherwise Application Default Credentials; if there are none,
    :class:`GCSCredentialsError` says what to set.
    """
    return _client(os.getpid(), os.environ.get(EMULATOR_ENV) or None)


@functools.lru_cache(maxsize=1)  # a new pid (a fork) or emulator setting replaces the client
def _client(pid: int, emulator: str | None) -> Client:
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    if emulator:
        endpoint = emulator if "://" in emulator else f"http://{emulator}"
        if endpoint != emulator:
            # The client reads the variable itself and needs the scheme in it.
            os.environ[EMULATOR_ENV] = endpoint
        return storage.Client(
            project=os.environ.get("GOOGLE_CLOUD_PROJECT") or "emulator-project",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
        )
    try:
        try:
            return storage.Client()
        except OSError:
            # Credentials found but no default project: objects need none (buckets are global).
            return storage.Client(project=None)
    except DefaultCredentialsError as exc:
        raise GCSCredentialsError(
            "No Google Cloud credentials found for gs:// access. Set GOOGLE_APPLICATION_CREDENTIALS "
            "to a service-account key file, or run `gcloud auth application-default login` "
            f"(or set {EMULATOR_ENV} to use a storage emulator). Cause: {exc}"
        ) from exc


def _blob(url: str) -> Blob:
    bucket, key = split_gcs(url)
    if not key:
        raise ValueError(f"{url!r} names a bucket, not an object")
    return gcs_client().bucket(bucket).blob(key)


def _not_found(url: str) -> FileNotFoundError:
    return FileNotFoundError(f"no such file or object: {url}")


def _gcs_errors():
    """``google.api_core.exceptions``, imported on first use: it costs 0.2-0.3 s (grpc) that local runs skip."""
    from google.api_core import exceptions

    return exceptions


# ---------------------------------------------------------------------------------------- listings


def list_files(url: str) -> list[FileInfo]:
    """Every regular file under ``url`` (recursively), sorted by path.

    ``url`` is treated as a directory (for gs://, the prefix ``key/``). A missing local directory,
    a path that is not a directory, or a prefix with no objects gives ``[]``: callers decide how to
    complain. Zero-byte ``key/`` "folder" placeholder objects are left out.
    """
    url = str(url)
    if is_gcs(url):
        bucket, key = split_gcs(url)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        base = f"{GCS_SCHEME}{bucket}/"
        try:
            files = [
                FileInfo(base + blob.name, int(blob.size or 0))
                for blob in gcs_client().list_blobs(bucket, prefix=prefix)
                if not blob.name.endswith("/")
            ]
        except _gcs_errors().NotFound:  # no such bucket: nothing under the URL either
            return []
        return sorted(files)
    if not os.path.isdir(url):
        return []
    files = []
    for dirpath, _dirnames, filenames in os.walk(url):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:  # removed while listing, or a dangling symlink
                continue
            if os.path.isfile(path):
                files.append(FileInfo(path, st.st_size))
    return sorted(files)


def exists(url: str) -> bool:
    """True if ``url`` is an existing file/object or a directory (for gs://: a non-empty prefix)."""
    url = str(url)
    if not is_gcs(url):
        return os.path.exists(url)
    bucket, key = split_gcs(url)
    client = gcs_client()
    if not key.strip("/"):
        return client.bucket(bucket).exists()
    if not key.endswith("/") and client.bucket(bucket).blob(key).exists():
        return True
    prefix = key.rstrip("/") + "/"
    try:
        return any(True for _ in client.list_blobs(bucket, prefix=prefix, max_results=1))
    except _gcs_errors().NotFound:  # no such bucket
        return False


# ------------------------------------------------------------------------------------ read / write


def read_bytes(url: str) -> bytes:
    """The whole content of a file or object. Raises FileNotFoundError if missing."""
    url = str(url)
    if not is_gcs(url):
        with open(url, "rb") as f:
            return f.read()
    try:
        return _blob(url).download_as_bytes()
    except _gcs_errors().NotFound:
        raise _not_found(url) from None


def create_new_file(directory: str, prefix: str, suffix: str) -> tuple[int, str]:
    """A new, uniquely named file in ``directory``, opened for writing: ``(fd, path)``.

    Like ``tempfile.mkstemp`` but with the mode ``open()`` gives (0666 less the umask): mkstemp's
    0600 would follow the file when it is renamed into place and lock out every other reader.
    """
    path = os.path.join(directory, f"{prefix}{uuid.uuid4().hex}{suffix}")  # 122 random bits: no retry
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), path


def _atomic_local_write(path: str, write) -> None:
    """Write through ``write(fileobj)`` into a new file beside ``path``, then rename over it."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = create_new_file(parent, f".{os.path.basename(path)}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(url: str, data: bytes, *, if_generation_match: int | None = None) -> int | None:
    """Write ``data`` to ``url`` atomically: readers see the old content or the new, never half.

    Local: a temp file in the same directory, then ``os.replace`` (parent dirs are created).
    gs://: a single-object upload, which Cloud Storage commits atomically; returns the new object's
    generation. ``if_generation_match`` (gs:// only) makes the write conditional: 0 creates only if
    absent, N replaces only generation N; otherwise :class:`PreconditionFailedError`.
    """
    url = str(url)
    if is_gcs(url):
        blob = _blob(url)
        try:
            blob.upload_from_string(
                data, content_type="application/octet-stream", if_generation_match=if_generation_match
            )
        except _gcs_errors().NotFound:
            raise FileNotFoundError(f"cannot write {url}: the bucket does not exist") from None
        except _gcs_errors().PreconditionFailed:
            raise PreconditionFailedError(f"{url} is not at generation {if_generation_match}") from None
        return int(blob.generation or 0)
    if if_generation_match is not None:
        raise ValueError("if_generation_match is for gs:// objects only")
    _atomic_local_write(url, lambda f: f.write(data))
    return None


def read_with_generation(url: str) -> tuple[bytes, int]:
    """A gs:// object's content and its generation (for a later conditional write or delete)."""
    url = str(url)
    bucket, key = split_gcs(url)
    try:
        blob = gcs_client().bucket(bucket).get_blob(key)
        if blob is None:
            raise _not_found(url)
        return blob.download_as_bytes(), int(blob.generation or 0)
    except _gcs_errors().NotFound:
        raise _not_found(url) from None


def upload_file(local_path: str | Path, url: str) -> None:
    """Copy a local file to ``url`` (gs:// or local; local destinations are written atomically)."""
    local_path = str(local_path)
    if not os.path.isfile(local_path):
        raise _not_found(local_path)
    url = str(url)
    if is_gcs(url):
        try:
            _blob(url).upload_from_filename(local_path, content_type="application/octet-stream")
        except _gcs_errors().NotFound:
            raise FileNotFoundError(f"cannot write {url}: the bucket does not exist") from None
    else:
        _atomic_local_write(url, lambda f: _copy_into(local_path, f))


def _copy_into(src_path: str, fileobj) -> None:
    with open(src_path, "rb") as src:
        shutil.copyfileobj(src, fileobj, length=1 << 20)


def download_file(url: str, local_path: str | Path) -> None:
    """Copy ``url`` (gs:// or local) to a local file, atomically; parent dirs are created."""
    url, local_path = str(url), str(local_path)
    if not is_gcs(url):
        if not os.path.isfile(url):
            raise _not_found(url)
        _atomic_local_write(local_path, lambda f: _copy_into(url, f))
        return
    blob = _blob(url)
    try:
        _atomic_local_write(local_path, lambda f: blob.download_to_file(f))
    except _gcs_errors().NotFound:
        raise _not_found(url) from None


# ----------------------------------------------------------------------------------- delete / move


def delete(url: str, *, if_generation_match: int | None = None) -> None:
    """Delete one file or object; a missing one is fine. ``if_generation_match`` (gs:// only):
    delete only that generation, else :class:`PreconditionFailedError`."""
    url = str(url)
    if not is_gcs(url):
        if if_generation_match is not None:
            raise ValueError("if_generation_match is for gs:// objects only")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(url)
        return
    try:
        _blob(url).delete(if_generation_match=if_generation_match)
    except _gcs_errors().NotFound:
        pass
    except _gcs_errors().PreconditionFailed:
        raise PreconditionFailedError(f"{url} is not at generation {if_generation_match}") from None


def delete_files(urls: Iterable[str]) -> None:
    """Delete many files/objects (missing ones are fine); gs:// objects go in batched requests."""
    by_bucket: dict[str, list[str]] = {}
    for url in urls:
        url = str(url)
        if is_gcs(url):
            bucket, key = split_gcs(url)
            by_bucket.setdefault(bucket, []).append(key)
        else:
            delete(url)
    if not by_bucket:
        return
    client = gcs_client()
    for bucket_name, keys in by_bucket.items():
        bucket = client.bucket(bucket_name)
        for start in range(0, len(keys), _BATCH_LIMIT):
            # raise_exception=False: a 404 for an already-missing object must not fail the batch.
            with client.batch(raise_exception=False):
                for key in keys[start : start + _BATCH_LIMIT]:
                    bucket.delete_blob(key)


def copy(src: str, dst: str) -> None:
    """Copy a file/object to ``dst``, replacing it atomically. gs:// to gs:// is a server-side copy."""
    src, dst = str(src), str(dst)
    if is_gcs(src) and is_gcs(dst):
        src_blob, dst_blob = _blob(src), _blob(dst)
        try:
            token, _, _ = dst_blob.rewrite(src_blob)
            while token is not None:  # large objects across locations take several calls
                token, _, _ = dst_blob.rewrite(src_blob, token=token)
        except _gcs_errors().NotFound:
            raise _not_found(src) from None
    elif is_gcs(dst):
        upload_file(src, dst)
    else:
        download_file(src, dst)


def move(src: str, dst: str) -> None:
    """Move a file/object, replacing ``dst``. Local: ``os.replace`` (parents created; a copy if the
    rename crosses file systems). gs://: server-side copy then delete. Mixed: transfer then delete.
    """
    src, dst = str(src), str(dst)
    if not is_gcs(src) and not is_gcs(dst):
        if not os.path.isfile(src):
            raise _not_found(src)
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        try:
            os.replace(src, dst)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # another file system
                raise
            _atomic_local_write(dst, lambda f: _copy_into(src, f))
            os.unlink(src)
        return
    copy(src, dst)
    delete(src)


def remove_tree(url: str) -> None:
    """Delete a local directory tree, or every object under a gs:// prefix; a missing one is fine."""
    url = str(url)
    if is_gcs(url):
        delete_files(info.path for info in list_files(url))
        return
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(url)


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
    """Make local directory ``target`` be ``new_dir`` in one atomic step; the old ``target`` is
    left at ``new_dir`` (for the caller to delete). A missing ``target`` is a plain rename.

    Linux ``renameat2(RENAME_EXCHANGE)``: no instant shows neither or half of either directory, and
    an open ``target/*`` glob resolves in one or the other. Raises :class:`ExchangeUnsupportedError`
    where the file system cannot (see :func:`supports_exchange`).
    """
    if os.path.lexists(target):
        _renameat2(new_dir, target, _RENAME_EXCHANGE)
    else:
        os.rename(new_dir, target)
    _fsync_dir(os.path.dirname(os.path.abspath(target)))


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


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (a power cut after it must not undo it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- cache


def local_cache_copy(url_dir: str, cache_dir: str | Path) -> str:
    """A local mirror of everything under a gs:// prefix; local paths are returned unchanged.

    Objects already in ``cache_dir`` with the same size are not downloaded again; downloads are
    atomic, so an interrupted copy leaves no partial file with a plausible size. If ``cache_dir``
    is one this function created (it holds a ``.bigimage-cache`` marker), files the prefix no
    longer holds are removed, so the mirror lists exactly what the bucket holds. Returns the local
    directory as a string.
    """
    url_dir = str(url_dir)
    if not is_gcs(url_dir):
        return url_dir
    cache = Path(cache_dir)
    owned = (cache / CACHE_MARKER).exists() or not cache.exists() or not any(cache.iterdir())
    cache.mkdir(parents=True, exist_ok=True)
    if owned:
        (cache / CACHE_MARKER).touch()
    prefix = url_dir.rstrip("/") + "/"
    remote = list_files(url_dir)
    wanted: set[str] = set()
    todo: list[tuple[str, str]] = []
    for info in remote:
        rel = info.path[len(prefix) :]
        target = cache.joinpath(*rel.split("/"))
        wanted.add(str(target))
        try:
            if target.stat().st_size == info.size:
                continue
        except FileNotFoundError:
            pass
        todo.append((info.path, str(target)))
    if todo:
        gcs_client()  # create the client once, before the threads share it
        with ThreadPoolExecutor(max_workers=min(_DOWNLOAD_THREADS, len(todo))) as pool:
            for future in [pool.submit(download_file, src, dst) for src, dst in todo]:
                future.result()
    if owned:
        for info in list_files(str(cache)):
            if info.path not in wanted and os.path.basename(info.path) != CACHE_MARKER:
                os.unlink(info.path)
    return str(cache)
