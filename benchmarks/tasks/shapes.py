"""Random geometry shared by the simulated tasks: lobulated blobs, smooth random fields, partial-volume masks.

Both 2-D simulators (`simulate_mr.py`, `simulate_us.py`) describe anatomy as smooth random shapes on a supersampled
grid and turn the target's covered fraction into a binary mask the same way, so the rule "a pixel belongs to the
target when at least half of it is covered" lives here once. The CT model (`abdomen.py`) needs shapes continuous in
3-D, so that the slices of one volume agree: random fields of plane waves, lobulated ellipsoids (`Blob`) and tubes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FIELD_TERMS = 6  # plane waves per random 3-D field, unless told otherwise
LOBULATION = 0.06  # standard deviation of a blob's relative radius around its ellipsoid
LOBE_ORDERS = (2.0, 5.0)  # wavenumbers on the unit sphere: 2-5 lobes around a blob


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


# ---------------------------------------------------------------------------------------------------- 3-D
@dataclass(frozen=True)
class Field:
    """A smooth random scalar field on R^3: `amplitude * sum_j cos(k_j . p + phase_j)`."""

    wavevectors: np.ndarray  # (M, 3), radians per unit length
    phases: np.ndarray  # (M,)
    amplitude: float

    def at(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        total = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)))
        for (kx, ky, kz), phase in zip(self.wavevectors, self.phases):
            total += np.cos(kx * x + ky * y + kz * z + phase)
        return self.amplitude * total

    def on_grid(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
        """`at` on the grid of rows `y` (H,) and columns `x` (W,) at height `z`, shape (H, W): with
        `cos(a + b) = cos a cos b - sin a sin b`, two outer products per term instead of a cosine per point."""
        total = np.zeros((y.size, x.size))
        for (kx, ky, kz), phase in zip(self.wavevectors, self.phases):
            rows, cols = ky * y + kz * z + phase, kx * x
            total += np.outer(np.cos(rows), np.cos(cols)) - np.outer(np.sin(rows), np.sin(cols))  # (H, W)
        return self.amplitude * total

    @property
    def bound(self) -> float:
        """The largest value the field can take."""
        return self.amplitude * len(self.phases)


def random_field(
    rng: np.random.Generator, *, wavelength: tuple[float, float], std: float, count: int = FIELD_TERMS
) -> Field:
    """`count` random directions and wavelengths; the amplitude gives the field standard deviation `std`. A few
    terms make a smooth bend; a texture needs many, or it shows the stripes of single waves."""
    directions = rng.standard_normal((count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavevectors = directions * (2.0 * np.pi / rng.uniform(*wavelength, size=count))[:, None]
    return Field(wavevectors, rng.uniform(0.0, 2.0 * np.pi, count), std * np.sqrt(2.0 / count))


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """`Rz(yaw) @ Rx(roll) @ Ry(pitch)`: its columns are a shape's own axes in patient coordinates."""
    cz, sz, cx, sx, cy, sy = np.cos(yaw), np.sin(yaw), np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch)
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class Blob:
    """An ellipsoid with a lobulated surface: `radius < 1` inside."""

    center: np.ndarray  # (3,) mm
    semi_axes: np.ndarray  # (3,) mm, along the columns of `axes`
    axes: np.ndarray  # (3, 3)
    lobes: Field | None = None  # relative change of the radius, a function of the direction from the centre

    def local(self, x, y, z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates in the blob's own frame, in units of its semi-axes."""
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        return tuple((self.axes[0, i] * dx + self.axes[1, i] * dy + self.axes[2, i] * dz) / self.semi_axes[i]
                     for i in range(3))

    def radius(self, x, y, z) -> np.ndarray:
        u, v, w = self.local(x, y, z)
        rho = np.sqrt(u * u + v * v + w * w)
        if self.lobes is not None:
            safe = np.maximum(rho, 1e-9)
            rho = rho / (1.0 + self.lobes.at(u / safe, v / safe, w / safe))
        return rho

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = float(self.semi_axes.max()) * (1.0 + (self.lobes.bound if self.lobes is not None else 0.0))
        return self.center - reach, self.center + reach


def random_blob(
    rng: np.random.Generator,
    center: tuple[float, float, float],
    semi_axes: tuple[float, float, float],
    *,
    angles: tuple[float, float, float] = (0.0, 0.0, 0.0),
    shift_mm: float = 8.0,
    size_spread: float = 0.12,
    turn: float = 0.12,
    lobulation: float = LOBULATION,
) -> Blob:
    """A blob around the given anatomy: centre moved by `shift_mm` (std), each semi-axis scaled by up to
    `1 +- size_spread`, each angle turned by up to `turn` radians, and a random lobulation."""
    lobes = random_field(rng, wavelength=(2 * np.pi / LOBE_ORDERS[1], 2 * np.pi / LOBE_ORDERS[0]), std=lobulation)
    return Blob(
        center=np.asarray(center, dtype=float) + rng.normal(0.0, shift_mm, 3),
        semi_axes=np.asarray(semi_axes, dtype=float) * rng.uniform(1 - size_spread, 1 + size_spread, 3),
        axes=rotation(*(np.asarray(angles) + rng.uniform(-turn, turn, 3))),
        lobes=lobes if lobulation > 0 else None,
    )


@dataclass(frozen=True)
class Tube:
    """A tube along a polyline, its radius interpolated between the points: `radius < 1` inside."""

    points: np.ndarray  # (P, 3) mm
    radii: np.ndarray  # (P,) mm

    def radius(self, x, y, z) -> np.ndarray:
        best = np.full(np.shape(x), np.inf)
        for (start, end), (r0, r1) in zip(zip(self.points[:-1], self.points[1:]), zip(self.radii[:-1], self.radii[1:])):
            step = end - start
            t = ((x - start[0]) * step[0] + (y - start[1]) * step[1] + (z - start[2]) * step[2]) / (step @ step)
            t = np.clip(t, 0.0, 1.0)
            distance = np.sqrt((x - start[0] - t * step[0]) ** 2 + (y - start[1] - t * step[1]) ** 2
                               + (z - start[2] - t * step[2]) ** 2)
            np.minimum(best, distance / (r0 + t * (r1 - r0)), out=best)
        return best

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = float(self.radii.max())
        return self.points.min(axis=0) - reach, self.points.max(axis=0) + reach
