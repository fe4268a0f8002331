"""Simulated T2-weighted spin-echo MR brain slice with one low-contrast white-matter lesion (task `mr_brain_lesion`).

Physical model (see `training/data/mr_brain_lesion/README.md` for the references):

1. Anatomy: a randomised axial head phantom on a 4x supersampled grid: scalp, skull, subarachnoid CSF, a folded
   cortical grey-matter ribbon with sulci, white matter, deep grey matter and two lateral ventricles, and one lesion
   (lobulated, deep / periventricular / juxtacortical) replacing parenchyma.
2. Signal: the spin-echo equation `S = PD * (1 - exp(-TR/T1)) * exp(-TE/T2)` per tissue, with 1.5 T relaxation
   times; the lesion's edge is diffuse (its signal blends into the surrounding tissue over about a voxel).
3. Acquisition: partial volume (area average of the supersampled signal), a smooth multiplicative bias field, and
   Rician noise (the magnitude of the signal plus complex Gaussian noise); the magnitude image is scaled to 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from shapes import (
    area_downsample,
    largest_component,
    mask_from_fraction,
    normalised_radius,
    random_harmonics,
    smooth_field,
)


@dataclass(frozen=True)
class Tissue:
    """Relaxation times (ms) and relative proton density of one tissue at 1.5 T."""

    t1_ms: float
    t2_ms: float
    proton_density: float


AIR, SCALP, SKULL, CSF, GREY, WHITE = range(6)
# Grey/white matter: Stanisz et al. 2005 (1.5 T); CSF, fat-rich scalp and bone: typical textbook ranges.
TISSUES: dict[int, Tissue] = {
    AIR: Tissue(t1_ms=1.0, t2_ms=1.0, proton_density=0.0),
    SCALP: Tissue(t1_ms=300.0, t2_ms=85.0, proton_density=0.9),
    SKULL: Tissue(t1_ms=500.0, t2_ms=10.0, proton_density=0.05),
    CSF: Tissue(t1_ms=4000.0, t2_ms=2000.0, proton_density=1.0),
    GREY: Tissue(t1_ms=1124.0, t2_ms=95.0, proton_density=0.80),
    WHITE: Tissue(t1_ms=884.0, t2_ms=72.0, proton_density=0.70),
}
# Chronic T2 lesions have prolonged T1/T2 and slightly raised water content; the ranges are kept narrow on purpose
# so that the lesion is only modestly brighter than white matter and close to grey matter (a hard target).
LESION_T1_MS = (950.0, 1250.0)
LESION_T2_MS = (80.0, 100.0)
LESION_PD = (0.72, 0.82)
LESION_RADIUS_PX = (3.5, 11.0)  # log-uniform, in output pixels
LESION_KINDS = ("deep", "periventricular", "juxtacortical")
LESION_KIND_PROBABILITIES = (0.4, 0.35, 0.25)
MIN_LESION_AREA_PX = 12
REPETITION_TIME_MS = (3000.0, 5000.0)
ECHO_TIME_MS = (80.0, 110.0)
TISSUE_VARIATION = 0.05  # relative per-image spread of T1, T2 and PD (subject-to-subject variation)
SNR_WHITE_MATTER = (7.0, 14.0)  # mean white-matter signal over the noise standard deviation
BIAS_AMPLITUDE = (0.1, 0.3)  # standard deviation of the log bias field
SUPERSAMPLING = 4
PARENCHYMA_TEXTURE = 0.04  # relative standard deviation of smooth within-tissue signal variation
BRAIN_EDGE = 0.85  # normalised head radius of the brain surface; scalp and skull lie outside it


def spin_echo_signal(tissue: Tissue, *, repetition_time_ms: float, echo_time_ms: float) -> float:
    """Spin-echo magnitude `PD (1 - exp(-TR/T1)) exp(-TE/T2)` (TE << TR, perfect 90/180 pulses)."""
    recovery = 1.0 - np.exp(-repetition_time_ms / tissue.t1_ms)
    return float(tissue.proton_density * recovery * np.exp(-echo_time_ms / tissue.t2_ms))


def _jitter(tissue: Tissue, rng: np.random.Generator) -> Tissue:
    scale = 1.0 + TISSUE_VARIATION * rng.standard_normal(3)
    return Tissue(tissue.t1_ms * scale[0], tissue.t2_ms * scale[1], tissue.proton_density * scale[2])


def _head_phantom(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue labels of a random axial head and the mask of its ventricles (lesions may abut them)."""
    center = tuple(rng.uniform(-0.04, 0.04, size=2))
    head = normalised_radius(
        x,
        y,
        center=center,
        semi_axes=(rng.uniform(0.68, 0.78), rng.uniform(0.84, 0.93)),
        angle=rng.uniform(-0.12, 0.12),
        harmonics=random_harmonics(rng, orders=(2, 4), max_amplitude=0.03, count=3),
    )
    labels = np.full(x.shape, AIR, dtype=np.int8)
    labels[head < 1.0] = SCALP
    labels[head < rng.uniform(0.92, 0.95)] = SKULL
    labels[head < rng.uniform(0.86, 0.88)] = CSF

    # Cortical folding: white matter reaches out into the gyri and retreats under the sulci.
    theta = np.arctan2(y - center[1], x - center[0])
    folds = np.cos(rng.integers(14, 22) * theta + rng.uniform(0, 2 * np.pi))
    folds = 0.75 * folds + 0.25 * np.cos(rng.integers(5, 9) * theta + rng.uniform(0, 2 * np.pi))
    cortex = rng.uniform(0.05, 0.07)
    white_edge = BRAIN_EDGE - cortex - rng.uniform(0.05, 0.09) * (1.0 - folds) / 2.0
    labels[head < BRAIN_EDGE] = GREY
    labels[head < white_edge] = WHITE
    labels[(folds < -0.85) & (head < BRAIN_EDGE) & (head > white_edge + 0.01)] = CSF  # sulci

    for side in (-1.0, 1.0):
        deep_grey = normalised_radius(
            x, y, center=(center[0] + side * 0.16, center[1] + 0.08), semi_axes=(0.08, 0.12), angle=side * 0.3
        )
        labels[deep_grey < 1.0] = GREY
    ventricles = np.zeros(x.shape, dtype=bool)
    half_gap, height = rng.uniform(0.09, 0.13), rng.uniform(-0.12, -0.02)
    width, length = rng.uniform(0.035, 0.07), rng.uniform(0.2, 0.3)
    for side in (-1.0, 1.0):
        ventricle = normalised_radius(
            x,
            y,
            center=(center[0] + side * half_gap, center[1] + height),
            semi_axes=(width * rng.uniform(0.9, 1.1), length * rng.uniform(0.9, 1.1)),
            angle=-side * rng.uniform(0.15, 0.35),
            harmonics=random_harmonics(rng, orders=(2, 3), max_amplitude=0.08, count=2),
        )
        ventricles |= ventricle < 1.0
    labels[ventricles] = CSF
    return labels, ventricles


def _lesion_center(
    rng: np.random.Generator, labels: np.ndarray, ventricles: np.ndarray, radius: float
) -> tuple[int, int]:
    """A random pixel where a lesion of `radius` (supersampled pixels) of a random kind can sit."""
    white = labels == WHITE
    depth = ndimage.distance_transform_edt(white)
    kind = rng.choice(LESION_KINDS, p=LESION_KIND_PROBABILITIES)
    if kind == "periventricular":
        distance = ndimage.distance_transform_edt(~ventricles)
        candidates = white & (distance > 0.5 * radius) & (distance < 1.1 * radius)
    elif kind == "juxtacortical":
        brain_depth = ndimage.distance_transform_edt(labels >= GREY)
        candidates = white & (depth < 0.8 * radius) & (brain_depth > 1.5 * radius)
    else:
        candidates = depth > 0.7 * radius
    if not candidates.any():
        candidates = depth >= depth.max() * 0.5
    rows, cols = np.nonzero(candidates)
    pick = int(rng.integers(rows.size))
    return int(rows[pick]), int(cols[pick])


def simulate_mr_brain_lesion(rng: np.random.Generator, *, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One simulated slice: `(image uint8 (size, size), lesion mask bool (size, size))`."""
    n = size * SUPERSAMPLING
    coords = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    y, x = np.meshgrid(coords, coords, indexing="ij")
    labels, ventricles = _head_phantom(rng, x, y)
    parenchyma = (labels == GREY) | (labels == WHITE)

    while True:
        radius = np.exp(rng.uniform(*np.log(LESION_RADIUS_PX))) * SUPERSAMPLING
        row, col = _lesion_center(rng, labels, ventricles, radius)
        outline = normalised_radius(
            x,
            y,
            center=(x[row, col], y[row, col]),
            semi_axes=tuple(radius * rng.uniform(0.7, 1.3, size=2) * 2.0 / n),
            angle=rng.uniform(0, np.pi),
            harmonics=random_harmonics(rng, orders=(2, 5), max_amplitude=0.2, count=3),
        )
        lesion = largest_component((outline < 1.0) & parenchyma)
        mask = mask_from_fraction(area_downsample(lesion.astype(float), SUPERSAMPLING))
        if mask.sum() >= MIN_LESION_AREA_PX:
            break

    repetition_time, echo_time = rng.uniform(*REPETITION_TIME_MS), rng.uniform(*ECHO_TIME_MS)
    signals = {
        label: spin_echo_signal(_jitter(tissue, rng), repetition_time_ms=repetition_time, echo_time_ms=echo_time)
        for label, tissue in TISSUES.items()
    }
    lesion_tissue = Tissue(rng.uniform(*LESION_T1_MS), rng.uniform(*LESION_T2_MS), rng.uniform(*LESION_PD))
    lesion_signal = spin_echo_signal(lesion_tissue, repetition_time_ms=repetition_time, echo_time_ms=echo_time)
    signal = np.vectorize(signals.get, otypes=[float])(labels)
    # A diffuse edge: the lesion's share of each voxel's water falls off over about one output voxel.
    share = ndimage.gaussian_filter(lesion.astype(float), sigma=rng.uniform(0.4, 1.2) * SUPERSAMPLING) * parenchyma
    signal = (1.0 - share) * signal + share * lesion_signal
    # Parenchymal texture at the lesion's own scale gives the lesion look-alikes to be told apart from.
    texture = smooth_field(rng, signal.shape, sigma=2.0 * SUPERSAMPLING)
    signal = signal * np.where(parenchyma, 1.0 + PARENCHYMA_TEXTURE * texture, 1.0)

    signal = area_downsample(signal, SUPERSAMPLING)
    ramp_y, ramp_x = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    log_bias = smooth_field(rng, (size, size), sigma=size / 4)
    log_bias = log_bias + np.tensordot(rng.normal(size=2), np.stack([ramp_x, ramp_y]), axes=1)  # (size, size)
    signal = signal * np.exp(rng.uniform(*BIAS_AMPLITUDE) * log_bias / np.sqrt(3.0))
    noise_std = signals[WHITE] / rng.uniform(*SNR_WHITE_MATTER)
    real = signal + noise_std * rng.standard_normal(signal.shape)
    imaginary = noise_std * rng.standard_normal(signal.shape)
    magnitude = np.hypot(real, imaginary)  # Rician: what a magnitude reconstruction returns

    top = np.percentile(magnitude, 99.7)
    image = np.round(np.clip(magnitude / top, 0.0, 1.0) * 255.0).astype(np.uint8)
    return image, mask
