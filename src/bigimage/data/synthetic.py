"""The embedded default data set: a generated labelled image set shaped like the public flowers set.

JPEGs of 240-500 px a side written as ``root/<label>/<index>.jpg``, each with one to four flowers of its
class (a quarter also a smaller one of another class) on a cluttered background, with noise, blur and
colour jitter; the classes' looks are in docs/preprocess.md ("Data"). Every image is drawn from its own
random stream, ``numpy.random.default_rng([seed, index])``, so the output is byte-identical for the same
seed whatever the number of worker processes.
"""

from __future__ import annotations

import colorsys
import fcntl
import functools
import io
import json
import math
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Bump when the pictures change, so existing generated sets are regenerated.
GENERATOR_VERSION = 1
FINGERPRINT_NAME = "_SYNTHETIC.json"
DEFAULT_CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
MIN_SIDE, MAX_SIDE = 240, 500
_TMP_TAG = ".tmp-"
_OLD_TAG = ".old-"


# ------------------------------------------------------------------------------------------ colours


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    """HSV (h in degrees) to an RGB tuple of 0-255 ints."""
    r, g, b = colorsys.hsv_to_rgb((h % 360.0) / 360.0, s, v)
    return (int(r * 255), int(g * 255), int(b * 255))


def _shade(color: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * factor))) for c in color)  # type: ignore[return-value]


def _petal_color(
    rng: np.random.Generator, palette: Sequence[tuple[float, float, float, float, float]]
) -> tuple[int, int, int]:
    """Pick from a palette of (weight, hue, hue spread, saturation, value) entries, with jitter."""
    weights = np.array([p[0] for p in palette], dtype=float)
    w, hue, spread, sat, val = palette[int(rng.choice(len(palette), p=weights / weights.sum()))]
    return _hsv(
        hue + rng.normal(0, spread),
        float(np.clip(sat + rng.normal(0, 0.1), 0, 1)),
        float(np.clip(val + rng.normal(0, 0.08), 0.15, 1)),
    )


# fmt: off
_PALETTES = {  # (weight, hue, hue spread, saturation, value) per colour a flower of the class may have
    "daisy": [(0.75, 50, 20, 0.05, 0.97), (0.15, 320, 15, 0.35, 0.95), (0.10, 270, 15, 0.35, 0.9)],
    "dandelion": [(1.0, 50, 5, 0.9, 0.95)],
    "roses": [(0.45, 355, 8, 0.85, 0.75), (0.25, 335, 10, 0.45, 0.95),
              (0.15, 45, 10, 0.1, 0.97), (0.15, 50, 6, 0.75, 0.95)],
    "sunflowers": [(1.0, 42, 6, 0.9, 0.95)],
    "tulips": [(0.3, 355, 8, 0.85, 0.85), (0.25, 330, 10, 0.5, 0.95), (0.2, 52, 6, 0.8, 0.95),
               (0.15, 280, 12, 0.55, 0.6), (0.1, 25, 6, 0.85, 0.95)],
}
# fmt: on


# ------------------------------------------------------------------------------------------ shapes


@functools.cache
def _petal_profile(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(1 - cos t) / 2 and sin t at n points of t in [0, pi]: the same for every petal of n points."""
    t = np.linspace(0.0, math.pi, n)
    return (1 - np.cos(t)) / 2, np.sin(t)


def _petal(
    cx: float, cy: float, angle: float, inner: float, length: float, width: float, n: int = 10
) -> list[tuple[float, float]]:
    """Polygon of an elongated petal from radius ``inner`` to ``inner + length`` along ``angle``."""
    half_rise, rise = _petal_profile(n)
    along = inner + length * half_rise  # out along one side...
    across = width / 2 * rise
    along = np.concatenate([along, along[::-1]])
    across = np.concatenate([across, -across[::-1]])
    ca, sa = math.cos(angle), math.sin(angle)
    xs = cx + along * ca - across * sa
    ys = cy + along * sa + across * ca
    return list(zip(xs.tolist(), ys.tolist()))


def _disc(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill, outline=None) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline)


def _radial_flower(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    radius: float,
    petals: int,
    width_frac: float,
    color,
    rings: int = 1,
    center_frac: float = 0.2,
) -> None:
    start = rng.uniform(0, 2 * math.pi)
    edge = _shade(color, 0.75)
    for ring in range(rings):
        r = radius * (1 - 0.22 * ring)
        ring_color = _shade(color, 1 - 0.08 * ring)
        for k in range(petals):
            angle = start + 2 * math.pi * k / petals + ring * math.pi / petals + rng.normal(0, 0.06)
            length = r * (1 - center_frac * 0.5) * rng.uniform(0.85, 1.1)
            width = max(2.0, r * width_frac * rng.uniform(0.8, 1.2))
            draw.polygon(_petal(cx, cy, angle, r * center_frac * 0.5, length, width), fill=ring_color, outline=edge)


def _draw_daisy(draw, rng, cx, cy, radius):
    color = _petal_color(rng, _PALETTES["daisy"])
    cf = rng.uniform(0.2, 0.32)
    _radial_flower(draw, rng, cx, cy, radius, int(rng.integers(12, 23)), rng.uniform(0.16, 0.28), color, 1, cf)
    _disc(draw, cx, cy, radius * cf, _hsv(rng.uniform(40, 55), 0.9, rng.uniform(0.8, 1.0)))


def _draw_dandelion(draw, rng, cx, cy, radius):
    if rng.random() < 0.2:  # seed head: a white fluffy ball
        for _ in range(int(rng.integers(40, 80))):
            a = rng.uniform(0, 2 * math.pi)
            r = radius * rng.uniform(0.6, 1.0)
            x2, y2 = cx + r * math.cos(a), cy + r * math.sin(a)
            draw.line((cx, cy, x2, y2), fill=_hsv(0, 0, rng.uniform(0.8, 1.0)), width=1)
            _disc(draw, x2, y2, 1.5, _hsv(0, 0, 0.95))
        _disc(draw, cx, cy, radius * 0.1, _hsv(40, 0.3, 0.6))
        return
    color = _petal_color(rng, _PALETTES["dandelion"])
    petals, width, rings = int(rng.integers(26, 47)), rng.uniform(0.07, 0.13), int(rng.integers(2, 4))
    _radial_flower(draw, rng, cx, cy, radius, petals, width, color, rings, 0.12)
    _disc(draw, cx, cy, radius * rng.uniform(0.08, 0.16), _shade(color, 0.85))


def _draw_rose(draw, rng, cx, cy, radius):
    color = _petal_color(rng, _PALETTES["roses"])
    rings = int(rng.integers(3, 5))
    start = rng.uniform(0, 2 * math.pi)
    for ring in range(rings):
        r = radius * (1 - ring / (rings + 0.5))
        n = int(rng.integers(5, 8))
        shade = _shade(color, 1 - 0.12 * ring)
        for k in range(n):
            angle = start + 2 * math.pi * k / n + ring * 0.7
            draw.polygon(
                _petal(cx, cy, angle, 0, r, r * rng.uniform(0.55, 0.8)), fill=shade, outline=_shade(shade, 0.6)
            )
    _disc(draw, cx, cy, radius * 0.12, _shade(color, 0.45))


def _draw_sunflower(draw, rng, cx, cy, radius):
    color = _petal_color(rng, _PALETTES["sunflowers"])
    cf = rng.uniform(0.38, 0.55)
    _radial_flower(draw, rng, cx, cy, radius, int(rng.integers(14, 27)), rng.uniform(0.2, 0.32), color, 1, cf)
    rc = radius * cf
    _disc(draw, cx, cy, rc, _hsv(rng.uniform(20, 35), 0.8, rng.uniform(0.2, 0.35)))
    for _ in range(int(rc * 1.5)):  # seeds
        a, r = rng.uniform(0, 2 * math.pi), rc * math.sqrt(rng.random()) * 0.95
        _disc(
            draw, cx + r * math.cos(a), cy + r * math.sin(a), max(1.0, rc * 0.05), _hsv(30, 0.7, rng.uniform(0.1, 0.45))
        )


def _draw_tulip(draw, rng, cx, cy, radius):
    color = _petal_color(rng, _PALETTES["tulips"])
    radius *= 1.3  # a cup is narrower than an open flower of the same size
    tilt = rng.normal(0, 0.3)  # radians from upright
    up = -math.pi / 2 + tilt
    stem_len = radius * rng.uniform(1.2, 2.2)
    sx, sy = cx - stem_len * math.cos(up), cy - stem_len * math.sin(up)
    green = _hsv(rng.uniform(90, 130), 0.6, rng.uniform(0.35, 0.6))
    draw.line((cx, cy, sx, sy), fill=green, width=max(2, int(radius * 0.08)))
    if rng.random() < 0.7:
        la = up + math.pi + rng.choice([-1, 1]) * rng.uniform(0.3, 0.6)
        draw.polygon(_petal(sx, sy, la + math.pi, 0, stem_len * 0.8, radius * 0.35), fill=_shade(green, 1.1))
    n = int(rng.integers(3, 6))
    spread = rng.uniform(0.35, 0.6)
    for k in range(n):
        a = up + spread * (2 * k / max(1, n - 1) - 1)
        draw.polygon(
            _petal(cx, cy, a, -radius * 0.1, radius * rng.uniform(0.9, 1.1), radius * rng.uniform(0.4, 0.55)),
            fill=_shade(color, rng.uniform(0.85, 1.05)),
            outline=_shade(color, 0.65),
        )


_DRAWERS = {
    "daisy": _draw_daisy,
    "dandelion": _draw_dandelion,
    "roses": _draw_rose,
    "sunflowers": _draw_sunflower,
    "tulips": _draw_tulip,
}


def _drawer(label: str, rng: np.random.Generator):
    """The drawing function of a class; unknown class names map onto one of the five looks."""
    if label in _DRAWERS:
        return _DRAWERS[label]
    names = sorted(_DRAWERS)
    return _DRAWERS[names[sum(label.encode()) % len(names)]]


# -------------------------------------------------------------------------------------- background


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour fields (foliage, soil, sky), then leaves and grass blades on top."""
    base_hue = rng.choice([rng.uniform(70, 150), rng.uniform(20, 45), rng.uniform(190, 230)], p=[0.6, 0.25, 0.15])
    cells = int(rng.integers(3, 9))
    hue = base_hue + rng.normal(0, 15, (cells, cells))
    sat = np.clip(rng.normal(0.45, 0.15, (cells, cells)), 0.05, 0.9)
    val = np.clip(rng.normal(0.45, 0.15, (cells, cells)), 0.1, 0.9)
    small = np.array(
        [[_hsv(hue[i, j], sat[i, j], val[i, j]) for j in range(cells)] for i in range(cells)], dtype=np.uint8
    )
    img = Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 25))):  # leaves
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        size = rng.uniform(0.05, 0.2) * min(width, height)
        leaf = _hsv(rng.uniform(75, 140), rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.7))
        draw.polygon(_petal(x, y, rng.uniform(0, 2 * math.pi), 0, size, size * rng.uniform(0.25, 0.5)), fill=leaf)
    for _ in range(int(rng.integers(10, 60))):  # grass and twigs
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        a, n = rng.uniform(0, 2 * math.pi), rng.uniform(10, 80)
        color = _hsv(rng.uniform(40, 130), rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.8))
        draw.line((x, y, x + n * math.cos(a), y + n * math.sin(a)), fill=color, width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 12))):  # out-of-focus blobs of colour (other plants, bokeh)
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, 25)
        _disc(draw, x, y, r, _hsv(rng.uniform(0, 360), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.9)))
    return img


# --------------------------------------------------------------------------------------- one image


def render_image(label: str, classes: Sequence[str], seed: int, index: int) -> bytes:
    """The JPEG bytes of image ``index`` of class ``label``: a pure function of its arguments."""
    rng = np.random.default_rng([seed, index])
    short = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    aspect = float(np.exp(rng.uniform(math.log(1.0), math.log(1.6))))
    long_side = min(MAX_SIDE, int(round(short * aspect)))
    width, height = (long_side, short) if rng.random() < 0.7 else (short, long_side)

    img = _background(rng, width, height)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(1, 4)))  # depth of field
    draw = ImageDraw.Draw(img)
    m = min(width, height)
    flowers = [(label, rng.uniform(0.12, 0.32) * m) for _ in range(int(rng.choice([1, 1, 2, 2, 3, 4])))]
    others = [c for c in classes if c != label]
    if others and rng.random() < 0.25:
        flowers.insert(
            int(rng.integers(0, len(flowers) + 1)),
            (others[int(rng.integers(len(others)))], rng.uniform(0.08, 0.16) * m),
        )
    for name, radius in flowers:
        cx = rng.uniform(radius * 0.5, width - radius * 0.5)
        cy = rng.uniform(radius * 0.5, height - radius * 0.5)
        _drawer(name, rng)(draw, rng, cx, cy, radius)

    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    pixels = np.asarray(img, dtype=np.float32)  # a new array: changed in place below, without temporaries
    gain = rng.normal(1.0, 0.08, 3).astype(np.float32) * rng.uniform(0.75, 1.2)  # white balance, exposure
    noise = rng.standard_normal((height, width, 3), dtype=np.float32)
    noise *= rng.uniform(2, 10)
    pixels *= gain
    pixels += rng.uniform(-20, 20)
    pixels += noise
    pixels = np.clip(pixels, 0, 255, out=pixels).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=int(rng.integers(75, 96)))
    return out.getvalue()


# ------------------------------------------------------------------------------------------ the set


def _fingerprint(num_images: int, seed: int, classes: Sequence[str]) -> dict:
    return {
        "generator": "bigimage.data.synthetic",
        "version": GENERATOR_VERSION,
        "num_images": int(num_images),
        "seed": int(seed),
        "classes": list(classes),
    }


def _read_fingerprint(root: Path) -> dict | None:
    try:
        return json.loads((root / FINGERPRINT_NAME).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _labels(num_images: int, seed: int, classes: Sequence[str]) -> list[str]:
    """Balanced class counts (differing by at most one), in a seeded order."""
    order = np.random.default_rng([seed, 2**32 - 1]).permutation(num_images)
    return [classes[int(k) % len(classes)] for k in order]


def _file_name(index: int, num_images: int) -> str:
    return f"{index:0{max(4, len(str(num_images - 1)))}d}.jpg"


def _write_one(job: tuple[str, str, tuple[str, ...], int, int]) -> int:
    path, label, classes, seed, index = job
    data = render_image(label, classes, seed, index)
    with open(path, "wb") as f:
        f.write(data)
    return index


def _remove_stale_siblings(root: Path) -> None:
    """Remove the temp dirs and old sets that dead generations left: under the lock, no other one runs."""
    for sibling in root.parent.iterdir():
        if sibling.name.startswith((f".{root.name}{_TMP_TAG}", f".{root.name}{_OLD_TAG}")):
            shutil.rmtree(sibling, ignore_errors=True)


def _generate(target: Path, num_images: int, seed: int, classes: tuple[str, ...], workers: int) -> None:
    from tqdm import tqdm

    for label in classes:
        (target / label).mkdir(parents=True, exist_ok=True)
    labels = _labels(num_images, seed, classes)
    jobs = [
        (str(target / label / _file_name(i, num_images)), label, classes, seed, i) for i, label in enumerate(labels)
    ]
    desc = f"generating synthetic images ({workers} processes)"
    with tqdm(total=num_images, desc=desc, unit="img", mininterval=1.0) as progress:
        if workers <= 1:
            for job in jobs:
                _write_one(job)
                progress.update()
        else:
            # Not fork: the caller may hold threads (MLflow, a Spark gateway) that fork would copy. Not spawn
            # either: its workers import the caller's __main__ (run.py imports MLflow, slow to import in each worker).
            # A fork server that preloads only this module forks clean, light workers.
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
            with ctx.Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_one, jobs, chunksize=8):
                    progress.update()


def ensure_synthetic_dataset(
    root: str | Path,
    num_images: int,
    seed: int,
    classes: Sequence[str] = DEFAULT_CLASSES,
    workers: int | None = None,
) -> Path:
    """Make sure ``root`` holds the synthetic set for (``num_images``, ``seed``, ``classes``); return it.

    A set is complete when ``root/_SYNTHETIC.json`` matches the request (generator version included).
    Otherwise it is generated in a temporary sibling, its fingerprint written last, and renamed into
    place, so an interrupted generation never looks complete. A ``root`` with content but without a
    fingerprint is not ours: FileExistsError. ``workers``: processes (default: the CPUs usable here).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    classes = tuple(str(c) for c in (classes or DEFAULT_CLASSES))
    if len(set(classes)) != len(classes) or any(not c or "/" in c or c.startswith((".", "_")) for c in classes):
        raise ValueError(f"classes must be distinct plain folder names, got {list(classes)}")
    root = Path(root)
    wanted = _fingerprint(num_images, seed, classes)
    if _read_fingerprint(root) == wanted:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # One generator at a time per root (parallel sweep jobs share the default set): the others wait,
    # then find the set complete. The lock dies with its process, so a killed generator frees it.
    with open(root.parent / f".{root.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _read_fingerprint(root) == wanted:
                return root
            _generate_and_swap(root, wanted, num_images, seed, classes, workers)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return root


def _generate_and_swap(
    root: Path, wanted: dict, num_images: int, seed: int, classes: tuple[str, ...], workers: int | None
) -> None:
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and _read_fingerprint(root) is None)):
        raise FileExistsError(
            f"{root} exists and is not a generated synthetic set (no {FINGERPRINT_NAME}); "
            "not overwriting it. Point dataset.root at an empty or new folder, or use dataset=folder for real data."
        )
    _remove_stale_siblings(root)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(int(workers), num_images // 16 or 1))

    tmp = root.parent / f".{root.name}{_TMP_TAG}{uuid.uuid4().hex[:8]}"
    try:
        _generate(tmp, num_images, seed, classes, workers)
        # Written last: its presence is what makes a set complete.
        (tmp / FINGERPRINT_NAME).write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")
        old = None
        if root.exists():  # an outdated set (other seed, size or version) or an empty dir
            old = root.parent / f".{root.name}{_OLD_TAG}{uuid.uuid4().hex[:8]}"
            os.rename(root, old)
        os.rename(tmp, root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
