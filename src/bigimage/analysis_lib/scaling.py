"""Ernest's scaling model (Venkataraman et al., NSDI'16) with a per-machine data term, fitted with
non-negative least squares and a residual bootstrap on a few small runs (docs/forecast.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from scipy.optimize import nnls

INTERCEPT, DATA, LOG_MACHINES, MACHINES = "intercept", "data_per_core", "log_machines", "machines"
DATA_PER_MACHINE = "data_per_machine"
ERNEST_TERMS = (INTERCEPT, DATA, LOG_MACHINES, MACHINES)
TERMS = (INTERCEPT, DATA, DATA_PER_MACHINE, LOG_MACHINES, MACHINES)
MACHINE_TERMS = (LOG_MACHINES, MACHINES)
TERM_FORMULA = {
    INTERCEPT: "t0 (s)",
    DATA: "t1 * images / cores (s per image per core)",
    DATA_PER_MACHINE: "t4 * images / machines (s per image per machine)",
    LOG_MACHINES: "t2 * log(machines) (s)",
    MACHINES: "t3 * machines (s per machine)",
}
MAX_CONDITION = 1e8  # of the column-scaled design; beyond it the terms are not told apart


class DegenerateDesign(ValueError):
    """The runs do not pin down the model's terms; the message says which runs to add."""


@dataclass(frozen=True)
class Point:
    """One measured run: ``images`` processed on ``cores`` cores in all over ``machines`` executors."""

    images: float
    cores: float
    machines: int
    seconds: float
    run_id: str = ""


def design_matrix(images, cores, machines, terms: Sequence[str], speed_ratio: float = 1.0) -> np.ndarray:
    """Rows of the model's features; ``speed_ratio`` divides the per-image work (faster cores: less time)."""
    images, cores, machines = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (images, cores, machines))
    columns = {
        INTERCEPT: np.ones_like(images),
        DATA: images / (cores * speed_ratio),
        DATA_PER_MACHINE: images / (machines * speed_ratio),
        LOG_MACHINES: np.log(machines),
        MACHINES: machines,
    }
    return np.column_stack([columns[term] for term in terms])


def identifiable_terms(points: Sequence[Point], allowed: Sequence[str] = TERMS) -> tuple[list[str], list[str]]:
    """The terms of ``allowed`` that ``points`` pin down, and notes on what was left out and why;
    :class:`DegenerateDesign` when the intercept and data term are not pinned down or the runs are too few."""
    sizes = sorted({p.images for p in points})
    cores = sorted({p.cores for p in points})
    machines = sorted({p.machines for p in points})
    if len(sizes) < 2:
        raise DegenerateDesign(
            f"all {len(points)} run(s) processed {_counts(sizes)} images: add runs at another data size "
            "(e.g. dataset.num_images=250,2000; the scaling_points experiment does)"
        )
    if len(cores) < 2:
        raise DegenerateDesign(
            f"all {len(points)} run(s) ran on {_counts(cores)} core(s), so how time scales with cores is unknown: "
            "add runs at another core count (e.g. cluster.executors=1,2 cluster.executor_cores=1)"
        )
    terms, notes = [t for t in (INTERCEPT, DATA) if t in allowed], []
    per_machine = sorted({p.cores / p.machines for p in points})
    if DATA_PER_MACHINE in allowed and len(per_machine) > 1:
        terms.append(DATA_PER_MACHINE)
    elif DATA_PER_MACHINE in allowed:
        notes.append(
            f"no per-machine data term: every run had {_counts(per_machine)} core(s) per executor, so whether "
            "the cores of one machine slow each other is unknown (assumed: not at all)"
        )
    wanted = [t for t in MACHINE_TERMS if t in allowed]
    if wanted and len(machines) == 1:
        notes.append(f"no machine term: every run had {_counts(machines)} executor(s) (absorbed by t0)")
    elif wanted and len(machines) == 2:
        terms += [MACHINES] if MACHINES in wanted else wanted[:1]
        notes.append(
            f"one machine term only: runs at 2 executor counts ({_counts(machines)}) cannot tell "
            "log(machines) from machines; add runs at a third count to fit both"
        )
    elif wanted:
        terms += wanted
    if len(points) < len(terms) + 1:
        raise DegenerateDesign(
            f"{len(terms)} terms ({', '.join(terms)}) need at least {len(terms) + 1} runs, there are {len(points)}: "
            "add runs at other data sizes or executor counts"
        )
    scaled = _scale(
        design_matrix([p.images for p in points], [p.cores for p in points], [p.machines for p in points], terms)
    )[0]
    if np.linalg.matrix_rank(scaled) < len(terms) or np.linalg.cond(scaled) > MAX_CONDITION:
        raise DegenerateDesign(
            f"the runs do not tell the terms {', '.join(terms)} apart (the design is singular): vary the data "
            "size and the executor count independently"
        )
    return terms, notes


def _counts(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns scaled to a maximum of 1 (NNLS's solution is invariant to it; its numerics are not)."""
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    return x / scale, scale


def _t_over_z(confidence: float, dof: int) -> float:
    """How much wider a Student-t interval with ``dof`` degrees of freedom is than a normal one: the
    bootstrap takes the noise level it resamples as known, while a few runs only estimate it."""
    half = (1.0 + confidence) / 2.0
    return float(stats.t.ppf(half, max(dof, 1)) / stats.norm.ppf(half))


def _modified_residuals(x: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Residuals for resampling: divided by sqrt(1 - leverage) (a fitted run sits nearer its fit than a
    new one will), then centred (Davison & Hinkley, Bootstrap Methods, 1997, alg. 6.1)."""
    scaled = _scale(x)[0]
    leverage = np.einsum("ij,ji->i", scaled, np.linalg.pinv(scaled))
    modified = residuals / np.sqrt(np.clip(1.0 - leverage, 0.05, None))
    return modified - modified.mean()


def nnls_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares coefficients of ``y ~ x``."""
    scaled, scale = _scale(x)
    coefficients, _ = nnls(scaled, y)
    return coefficients / scale


@dataclass
class Prediction:
    seconds: float
    low: float
    high: float


@dataclass
class Fit:
    """A fitted model: coefficients with bootstrap intervals, residuals and the leave-one-out error."""

    terms: list[str]
    coefficients: np.ndarray
    low: np.ndarray
    high: np.ndarray
    points: list[Point]
    fitted: np.ndarray
    loo_predicted: np.ndarray
    confidence: float
    samples: np.ndarray  # bootstrap coefficients, one row per replicate
    noise: np.ndarray  # one resampled relative residual per replicate (prediction intervals)
    notes: list[str] = field(default_factory=list)

    @property
    def machine_counts(self) -> list[int]:
        return sorted({p.machines for p in self.points})

    def coefficient(self, term: str) -> float:
        return float(self.coefficients[self.terms.index(term)]) if term in self.terms else 0.0

    def covers_machines(self, machines: int) -> bool:
        """Whether the fit can say anything about ``machines`` executors: any count once both machine
        terms are fitted (an extrapolation beyond the largest count run), else only the counts run."""
        return all(t in self.terms for t in MACHINE_TERMS) or machines in self.machine_counts

    def line(self, cores: float, machines: int, speed_ratio: float = 1.0) -> tuple[float, float]:
        """``(a, b)`` with predicted time ``a + b * images`` for a fixed shape."""
        a = self.coefficient(INTERCEPT) + self.coefficient(MACHINES) * machines
        a += self.coefficient(LOG_MACHINES) * math.log(machines)
        b = self.coefficient(DATA) / cores + self.coefficient(DATA_PER_MACHINE) / machines
        return a, b / speed_ratio

    def predict(self, images: float, cores: float, machines: int, speed_ratio: float = 1.0) -> Prediction:
        """Point prediction and the prediction interval at ``confidence``."""
        x = design_matrix(images, cores, machines, self.terms, speed_ratio)[0]
        draws = (self.samples @ x) * (1.0 + self.noise)
        tail = (1.0 - self.confidence) / 2.0 * 100.0
        low, high = np.percentile(draws, [tail, 100.0 - tail])
        return Prediction(float(x @ self.coefficients), float(low), float(high))

    def residuals(self) -> list[dict]:
        return [
            {
                "run_id": p.run_id,
                "images": p.images,
                "cores": p.cores,
                "machines": p.machines,
                "seconds": p.seconds,
                "fitted_seconds": float(f),
                "residual_seconds": p.seconds - float(f),
                "loo_predicted_seconds": float(lp),
                "loo_relative_error": abs(float(lp) - p.seconds) / p.seconds,
            }
            for p, f, lp in zip(self.points, self.fitted, self.loo_predicted, strict=True)
        ]

    def loo_error(self) -> tuple[float, float]:
        """Mean and largest leave-one-out relative error."""
        y = np.array([p.seconds for p in self.points])
        errors = np.abs(self.loo_predicted - y) / y
        return float(errors.mean()), float(errors.max())

    def as_dict(self) -> dict:
        mean, worst = self.loo_error()
        return {
            "formula": " + ".join(TERM_FORMULA[t] for t in self.terms),
            "coefficients": [
                {"term": t, "value": float(v), "low": float(lo), "high": float(hi)}
                for t, v, lo, hi in zip(self.terms, self.coefficients, self.low, self.high, strict=True)
            ],
            "confidence": self.confidence,
            "runs": len(self.points),
            "machine_counts": self.machine_counts,
            "loo_mean_relative_error": mean,
            "loo_max_relative_error": worst,
            "residuals": self.residuals(),
            "notes": self.notes,
        }


def fit(
    points: Sequence[Point],
    allowed: Sequence[str] = TERMS,
    confidence: float = 0.95,
    bootstrap: int = 2000,
    seed: int = 0,
) -> Fit:
    """Fit the terms ``points`` pin down (:func:`identifiable_terms`); raises :class:`DegenerateDesign`."""
    points = list(points)
    terms, notes = identifiable_terms(points, allowed)
    x = design_matrix([p.images for p in points], [p.cores for p in points], [p.machines for p in points], terms)
    y = np.array([p.seconds for p in points], dtype=float)
    coefficients = nnls_fit(x, y)
    fitted = x @ coefficients
    relative = _modified_residuals(x, (y - fitted) / np.maximum(fitted, 1e-12))
    rng = np.random.default_rng(seed)
    resampled = rng.choice(relative, size=(bootstrap, len(y)))
    widen = _t_over_z(confidence, len(y) - len(terms))
    refits = np.array([nnls_fit(x, fitted * np.maximum(1.0 + r, 0.05)) for r in resampled])
    samples = np.maximum(coefficients + (refits - coefficients) * widen, 0.0)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    noise = np.maximum(rng.choice(relative, size=bootstrap) * widen, -0.95)
    loo = np.array([x[i] @ nnls_fit(np.delete(x, i, 0), np.delete(y, i)) for i in range(len(y))])
    return Fit(terms, coefficients, low, high, points, fitted, loo, confidence, samples, noise, notes)


def d_optimal(candidates: np.ndarray, count: int) -> list[int]:
    """Indices of ``count`` rows of the design matrix ``candidates`` maximising det(X'X): a greedy pick (a tiny
    ridge lets it start from nothing), then Fedorov exchanges until no swap raises the determinant."""
    x, _ = _scale(np.asarray(candidates, dtype=float))
    if not x.shape[1] <= count <= len(x):
        raise ValueError(f"choose between {x.shape[1]} (the terms) and {len(x)} (the candidates) points, not {count}")
    ridge = 1e-6 * np.eye(x.shape[1])

    def score(rows: list[int]) -> float:
        return float(np.linalg.slogdet(x[rows].T @ x[rows] + ridge)[1])

    chosen: list[int] = []
    while len(chosen) < count:
        rest = [i for i in range(len(x)) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (score(chosen + [i]), -i)))
    improved = True
    while improved:
        improved = False
        for position in range(count):
            for other in (i for i in range(len(x)) if i not in chosen):
                trial = chosen[:position] + [other] + chosen[position + 1 :]
                if score(trial) > score(chosen) + 1e-9:
                    chosen, improved = trial, True
    return sorted(chosen)
