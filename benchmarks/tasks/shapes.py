"""Random geometry shared by the simulated tasks: lobulated blobs, smooth random fields, partial-volume masks.

Both simulators (`simulate_mr.py`, `simulate_us.py`) describe anatomy as smooth random shapes on a supersampled
grid and turn the target's covered fraction into a binary mask the same way, so the rule "a pixel belongs to the
target when at least half of it is covered" lives here once.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def random_harmonics(
    rng: np.random.Generator, *, orders: tuple[int, int], max_amplitude: float, count: int
) -> list[tuple[int, float, float]]:
    """`count` Fourier terms `(order, amplitude, phase)` for `radius_perturbation`, amplitudes falling as 1/order.

    Falling amplitudes keep the outline smooth (lobes, not spikes) while higher orders still add irregularity.
    """
    terms = []
    for _ in range(count):
        order = int(rng.integers(orders[0], orders[1] + 1))
        amplitude = float(rng.uniform(0.3, 1.0) * max_amplitude * orders[0] / order)
        terms.append((order, amplitude, float(rng.uniform(0, 2 * np.pi))))
    return terms


def radius_perturbation(theta: np.ndarray, harmonics: list[tuple[int, float, float]]) -> np.ndarray:
    """`1 + sum a_k cos(k theta + phi_k)`: the relative radius of a lobulated outline at polar angle `theta`."""
    radius = np.ones_like(theta)
    for order, amplitude, phase in harmonics:
        radius = radius + amplitude * np.cos(order * theta + phase)
    return radius


def normalised_radius(
    x: np.ndarray,
    y: np.ndarray,
    *,
    center: tuple[float, float],
    semi_axes: tuple[float, float],
    angle: float,
    harmonics: list[tuple[int, float, float]] | None = None,
) -> np.ndarray:
    """Elliptic radius of every point, divided by the lobulated outline: `< 1` inside, `1` on the boundary.

    Returning the radius (not a boolean) lets one shape define nested layers (scalp, skull, brain) by thresholds.
    """
    dx, dy = x - center[0], y - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy) / semi_axes[0]
    v = (-sin * dx + cos * dy) / semi_axes[1]
    rho = np.hypot(u, v)
    if harmonics:
        rho = rho / radius_perturbation(np.arctan2(v, u), harmonics)
    return rho


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], *, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation: texture and slow intensity drifts."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")
    return field / max(float(field.std()), 1e-12)


def area_downsample(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over `factor x factor` blocks: a voxel's value is the average of what it contains (partial volume)."""
    height, width = array.shape
    return array.reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask, holes filled (empty in, empty out).

    4-connectivity is the strict choice: one component under it is one component under 8-connectivity too.
    """
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def mask_from_fraction(fraction: np.ndarray) -> np.ndarray:
    """Target mask from the covered fraction of each output pixel: covered at least half, largest component."""
    return largest_component(fraction >= 0.5)
