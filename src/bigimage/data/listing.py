"""List a labelled image tree ``root/<label>/<file>``, local or at an fsspec URL, into (path, class) items.

The rules are Keras' ``image_dataset_from_directory``'s, stated in docs/preprocess.md ("Data"): what
cannot be listed is in ``failed`` with its reason, never dropped silently. Local file names need not be
UTF-8 (undecodable bytes are kept as surrogates; :func:`printable` shows them). A URL is listed with one
recursive call; object stores have no folders, so a class with no objects is known only when given.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections import Counter
from dataclasses import dataclass

from bigimage.data import storage
from bigimage.errors import UserError

EXPECTED_LAYOUT = "root/<label>/*.jpg (one sub-folder per class, image files inside)"


class DatasetNotFoundError(UserError, FileNotFoundError):
    """``dataset.root`` does not exist or holds nothing: a path for the user to fix."""


class DatasetLayoutError(UserError, ValueError):
    """``dataset.root`` is not a tree of class folders, or ``dataset.classes`` cannot name folders."""


@dataclass
class LabelledImages:
    """The images of a labelled tree: ``items`` are (path or URL, class index into ``classes``)."""

    root: str
    classes: list[str]
    items: list[tuple[str, int]]
    empty_classes: list[str]
    sizes: list[int]  # bytes, parallel to items
    unlisted_folders: list[str]  # folders not among the given classes
    # (path, reason) of what is under a class folder but could not be listed: unreadable folders, link
    # loops, broken links, special files. Task 1 counts them in failed_images.
    failed: list[tuple[str, str]]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(index for _, index in self.items)
        return {name: counts[index] for index, name in enumerate(self.classes)}

    def fingerprint(self) -> str:
        """A hash of the class list and every item's path relative to ``root``, class and size: the same
        for the same tree on any machine, another when a file is added, removed, renamed or changed."""
        digest = hashlib.sha256()
        digest.update("\x1f".join(self.classes).encode("utf-8"))
        prefix = len(self.root.rstrip("/" if storage.is_remote(self.root) else os.sep)) + 1
        for (path, index), size in zip(self.items, self.sizes):
            # surrogateescape: a name that is not UTF-8 hashes as its bytes (UTF-8 names as before)
            digest.update(f"\x1e{path[prefix:]}\x1f{index}\x1f{size}".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


def printable(path: str) -> str:
    """``path`` as text that can be written anywhere: bytes of a name that are not UTF-8 as ``\\xNN``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _stat(path: str, failed: list[tuple[str, str]]) -> os.stat_result | None:
    """``path``'s status, links followed; None, with why in ``failed``, when it has none (nothing when it
    was removed while listing)."""
    try:
        return os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            failed.append((path, "symbolic link loop (too many levels of symbolic links)"))
        elif os.path.islink(path):
            failed.append((path, f"broken symbolic link to {os.readlink(path)!r}"))
        elif error.errno != errno.ENOENT:
            failed.append((path, f"cannot read its status: {error.strerror or error}"))
        return None


def _loop(path: str) -> tuple[str, str]:
    return path, f"symbolic link loop: leads back to {os.path.realpath(path)}"


def _walk_class(root: str, folder: str) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """Every regular file under ``folder`` (links followed) with its size, and what failed, with why. A folder
    whose (device, inode) is on the path from ``root`` down to it is a loop; a stack, not recursion."""
    files: list[tuple[str, int]] = []
    failed: list[tuple[str, str]] = []
    stack: list[tuple[str, tuple[tuple[int, int], ...]]] = [(folder, (_identity(root), _identity(folder)))]
    while stack:
        path, ancestors = stack.pop()
        try:
            with os.scandir(path) as listing:
                entries = [entry for entry in listing if not _hidden(entry.name)]
        except OSError as error:
            failed.append((path, f"unreadable folder ({error.strerror or error}); the files in it are not counted"))
            continue
        for entry in entries:
            info = _stat(entry.path, failed)
            if info is None:
                continue
            if stat.S_ISDIR(info.st_mode):
                identity = (info.st_dev, info.st_ino)
                if identity in ancestors:
                    failed.append(_loop(entry.path))
                else:
                    stack.append((entry.path, (*ancestors, identity)))
            elif stat.S_ISREG(info.st_mode):
                files.append((entry.path, info.st_size))
            else:
                failed.append((entry.path, "not a regular file or folder"))
    return files, failed


def _identity(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _local_class_folders(root: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The visible top-level folders of ``root`` (links to folders included), and unusable entries there."""
    folders: list[str] = []
    failed: list[tuple[str, str]] = []
    root_identity = _identity(root)
    try:
        with os.scandir(root) as listing:
            entries = list(listing)
    except OSError as error:
        raise PermissionError(f"dataset root {root} cannot be listed: {error.strerror or error}") from error
    for entry in entries:
        if _hidden(entry.name) or entry.name.startswith("_"):
            continue
        info = _stat(entry.path, failed)
        if info is None or not stat.S_ISDIR(info.st_mode):
            continue  # a file beside the class folders
        if (info.st_dev, info.st_ino) == root_identity:
            failed.append(_loop(entry.path))
        elif not _utf8(entry.name):
            failed.append((entry.path, "folder name is not UTF-8, so it cannot be a label; rename it to use its files"))
        else:
            folders.append(entry.name)
    return folders, failed


def _checked_classes(classes: list[str] | None) -> list[str] | None:
    if not classes:
        return None
    classes = [str(name) for name in classes]
    if len(set(classes)) != len(classes):
        raise DatasetLayoutError(f"dataset.classes has duplicates: {classes}")
    if any(not name or "/" in name or name in (".", "..") for name in classes):
        raise DatasetLayoutError(f"dataset.classes must be non-empty folder names, got {classes}")
    return classes


def _remote_class_files(root: str) -> dict[str, list[tuple[str, int]]]:
    """Top-level folder -> [(URL, size)] of every visible object under it."""
    files = storage.list_files(root)
    if not files:
        raise DatasetNotFoundError(f"dataset.root={root} holds no objects; expected {EXPECTED_LAYOUT}")
    by_folder: dict[str, list[tuple[str, int]]] = {}
    for info in files:
        parts = info.path[len(root.rstrip("/")) + 1 :].split("/")
        if len(parts) < 2:  # a file directly in root
            continue
        folder = parts[0]
        if folder.startswith("_") or any(_hidden(part) for part in parts):
            continue
        by_folder.setdefault(folder, []).append((info.path, info.size))
    return by_folder


def list_labelled_images(root: str, classes: list[str] | None = None) -> LabelledImages:
    """List ``root/<label>/...`` into items ordered by class index, then path.

    ``classes``: the class names in index order (default: the sorted folder names); those without files
    are in ``empty_classes``, folders not among them in ``unlisted_folders``. Raises
    :class:`DatasetNotFoundError`, :class:`DatasetLayoutError`, or PermissionError when ``root`` itself
    cannot be listed.
    """
    root = str(root)
    classes = _checked_classes(classes)
    remote = storage.is_remote(root)
    failed: list[tuple[str, str]] = []
    if remote:
        by_folder = _remote_class_files(root)
    else:
        if not os.path.exists(root):
            raise DatasetNotFoundError(f"dataset.root={root} does not exist; expected {EXPECTED_LAYOUT}")
        if not os.path.isdir(root):
            raise DatasetLayoutError(f"dataset.root={root} is not a directory; expected {EXPECTED_LAYOUT}")
        # Local folders can be empty, and an empty class folder is still a class.
        folders, failed = _local_class_folders(root)
        by_folder = {name: [] for name in folders}
    if not by_folder:
        raise DatasetLayoutError(f"dataset.root={root} has no class folders; expected {EXPECTED_LAYOUT}")

    names = list(classes) if classes else sorted(by_folder)
    if not remote:  # only the folders that are classes are walked: unlisted ones are reported as such
        for name in names:
            if name in by_folder:
                by_folder[name], class_failed = _walk_class(root, os.path.join(root, name))
                failed += class_failed
    items: list[tuple[str, int]] = []
    sizes: list[int] = []
    empty: list[str] = []
    for index, name in enumerate(names):
        entries = sorted(by_folder.get(name, []))
        if not entries:
            empty.append(name)
        for path, size in entries:
            items.append((path, index))
            sizes.append(size)
    unlisted = sorted(set(by_folder) - set(names))
    return LabelledImages(
        root=root,
        classes=names,
        items=items,
        empty_classes=empty,
        sizes=sizes,
        unlisted_folders=unlisted,
        failed=sorted(failed),
    )
