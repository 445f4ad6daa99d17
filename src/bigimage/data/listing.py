"""List a labelled image tree ``root/<label>/<file>``, local or ``gs://``, into (path, class) items.

Conventions (the same as Keras' ``image_dataset_from_directory``, so a tree that works there works
here):

* Every sub-folder of ``root`` is a class; classes are the sorted folder names unless given.
* Every regular file anywhere under a class folder is an item of that class, including files in
  deeper sub-folders (``root/roses/2019/a.jpg`` is a rose). Nothing is filtered by extension:
  non-image files are items too, and the preprocessing job decodes and counts the failures.
* Hidden names are skipped: files or folders whose name starts with ``.`` (``.DS_Store``, editor and
  atomic-write temp files, ``.ipynb_checkpoints``) and top-level folders starting with ``_``
  (``_temporary`` and similar job markers). Files directly in ``root`` are not items (a
  ``LICENSE.txt`` or ``_SYNTHETIC.json`` beside the class folders is fine).
* ``gs://`` is listed with one recursive listing call. Cloud Storage has no real folders, so a
  class with no objects is only known if it is given in ``classes`` (it is then an empty class).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from bigimage.data import storage

EXPECTED_LAYOUT = "root/<label>/*.jpg (one sub-folder per class, image files inside)"


@dataclass
class LabelledImages:
    """The images of a labelled tree: ``items`` are (path or URL, class index into ``classes``)."""

    root: str
    classes: list[str]
    items: list[tuple[str, int]]
    empty_classes: list[str]
    sizes: list[int] = field(default_factory=list)  # bytes, parallel to items
    unlisted_folders: list[str] = field(default_factory=list)  # folders not among the given classes

    def class_counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.classes}
        for _, index in self.items:
            counts[self.classes[index]] += 1
        return counts

    def fingerprint(self) -> str:
        """A hash of the class list and every item's relative path, class and size.

        Changes when a file is added, removed, renamed, relabelled or changes size; stable across
        machines for the same tree (paths are taken relative to ``root``).
        """
        digest = hashlib.sha256()
        digest.update("\x1f".join(self.classes).encode("utf-8"))
        sizes = self.sizes or [-1] * len(self.items)
        prefix = len(self.root.rstrip("/" if storage.is_gcs(self.root) else os.sep)) + 1
        for (path, index), size in zip(self.items, sizes):
            digest.update(f"\x1e{path[prefix:]}\x1f{index}\x1f{size}".encode("utf-8"))
        return digest.hexdigest()


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _split_relative(root: str, path: str) -> list[str]:
    sep = "/" if storage.is_gcs(root) else os.sep
    rel = path[len(root.rstrip(sep)) + 1 :]
    return rel.split(sep)


def list_labelled_images(root: str, classes: list[str] | None = None) -> LabelledImages:
    """List ``root/<label>/...`` into items ordered by class index, then path.

    ``classes``: the class names in index order; ``None`` or empty means the sorted folder names.
    Given classes without a folder (or without files) are reported in ``empty_classes``; folders not
    among them are skipped and reported in ``unlisted_folders``.

    Raises FileNotFoundError if ``root`` does not exist (or, for gs://, holds no objects), and
    ValueError if it has no class folders or ``classes`` has duplicates or empty names.
    """
    root = str(root)
    if classes:
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes has duplicates: {classes}")
        if any(not c or "/" in c or c in (".", "..") for c in classes):
            raise ValueError(f"class names must be non-empty folder names, got {classes}")

    gcs = storage.is_gcs(root)
    if gcs:
        storage.split_gcs(root)  # validates the URL
    elif not os.path.exists(root):
        raise FileNotFoundError(f"dataset root {root} does not exist; expected {EXPECTED_LAYOUT}")
    elif not os.path.isdir(root):
        raise NotADirectoryError(f"dataset root {root} is not a directory; expected {EXPECTED_LAYOUT}")

    files = storage.list_files(root)
    if gcs and not files:
        raise FileNotFoundError(f"no objects under {root}; expected {EXPECTED_LAYOUT}")

    # folder -> [(path, size)] for every visible file under a top-level folder.
    by_folder: dict[str, list[tuple[str, int]]] = {}
    if not gcs:
        # Local folders can be empty, and an empty class folder is still a class.
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.is_dir() and not _hidden(entry.name) and not entry.name.startswith("_"):
                    by_folder.setdefault(entry.name, [])
    for info in files:
        parts = _split_relative(root, info.path)
        if len(parts) < 2:  # a file directly in root
            continue
        folder = parts[0]
        if folder.startswith("_") or any(_hidden(p) for p in parts):
            continue
        by_folder.setdefault(folder, []).append((info.path, info.size))

    if not by_folder:
        raise ValueError(f"dataset root {root} has no class folders; expected {EXPECTED_LAYOUT}")

    names = list(classes) if classes else sorted(by_folder)
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
    return LabelledImages(root=root, classes=names, items=items, empty_classes=empty, sizes=sizes, unlisted_folders=unlisted)
