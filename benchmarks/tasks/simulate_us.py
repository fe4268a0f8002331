"""Simulated B-mode ultrasound of one hypoechoic, lobulated lesion in breast-like tissue (task `us_lesion`).

Physical model (see `training/data/us_lesion/README.md` for the references):

1. Tissue: layers parallel to a curvilinear probe (bright skin, hypoechoic subcutaneous fat, heterogeneous
   fibroglandular tissue, striated muscle), fat lobules as look-alikes, and one hypoechoic lesion with an
   irregular, lobulated outline.
2. Scattering: random point scatterers on a fine polar (depth x beam angle) grid; tissue sets their density and
   amplitude. The RF signal is the scatterer map convolved with a separable pulse-echo point-spread function: a
   Gaussian-modulated cosine along depth (axial resolution) and a Gaussian across beams (lateral resolution).
3. Propagation: two-way frequency-dependent attenuation integrated along each beam, so a lesion that attenuates more
   (less) than its surroundings casts a posterior shadow (enhancement); time-gain compensation corrects only the
   background attenuation, and imperfectly.
4. Display: envelope detection via the analytic signal (Hilbert transform), electronic noise, log compression to a
   random dynamic range, scan conversion of the fan to a square 8-bit image with black outside the sector.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

from shapes import area_downsample, mask_from_fraction, normalised_radius, random_harmonics, smooth_field

SPEED_OF_SOUND_MM_PER_US = 1.54
NEPER_PER_MM_PER_DB_PER_CM = np.log(10.0) / 200.0  # 1 dB = ln(10)/20 Np, 1 cm = 10 mm
CENTER_FREQUENCY_MHZ = (5.0, 7.5)
IMAGE_SIDE_MM = 45.0  # depth and width of the square field of view
PROBE_RADIUS_MM = (15.0, 35.0)  # curvilinear array radius: the fan's apex lies this far above the skin
SECTOR_HALF_ANGLE_RAD = (0.3, 0.45)
NUM_BEAMS = 256
AXIAL_SAMPLES_PER_WAVELENGTH = 8  # the two-way carrier has a period of half a wavelength: 4 samples per cycle
PULSE_SIGMA_WAVELENGTHS = (0.6, 0.9)  # Gaussian envelope of the pulse echo (axial resolution)
BEAM_SIGMA_MM = (0.35, 0.6)  # Gaussian lateral beam profile, taken at mid-depth
ATTENUATION_DB_PER_CM_MHZ = (0.5, 0.8)  # soft tissue
TGC_MISMATCH = (0.85, 1.05)  # TGC slope over the true background attenuation
SHADOWING_PROBABILITY = 0.5  # else the lesion attenuates less and enhances what lies behind it
LESION_ATTENUATION_RATIO = {"shadow": (1.5, 2.5), "enhancement": (0.1, 0.5)}
LESION_ECHOGENICITY = (0.08, 0.3)  # scattered power relative to fibroglandular tissue
LESION_RADIUS_MM = (3.5, 8.0)
DYNAMIC_RANGE_DB = (45.0, 60.0)
MEDIAN_GREY = (0.5, 0.65)  # display level of the median echo, as a fraction of white
ELECTRONIC_NOISE_DB = -55.0  # noise floor relative to the brightest echoes
SUPERSAMPLING = 4  # for the lesion's covered fraction of each output pixel
SECTOR_MARGIN_MM = 2.0  # the lesion stays this far inside the fan and above the bottom edge


def _tissue(
    rng: np.random.Generator, x: np.ndarray, depth: np.ndarray, lesion: np.ndarray, fat_lobules: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scattered power (echogenicity) and scatterer density at every sample; layers follow the probe surface."""
    skin = rng.uniform(1.2, 2.2)
    fat_bottom = rng.uniform(4.0, 10.0) + 1.5 * np.sin(rng.uniform(0.05, 0.2) * x + rng.uniform(0, 2 * np.pi))
    muscle_top = rng.uniform(34.0, 42.0) + 1.0 * np.sin(rng.uniform(0.05, 0.15) * x + rng.uniform(0, 2 * np.pi))

    echogenicity = np.exp(0.35 * smooth_field(rng, depth.shape, sigma=(depth.shape[0] / 40, depth.shape[1] / 40)))
    density = np.full(depth.shape, 0.8)
    layers = [
        (depth >= muscle_top, 0.45 * (1.0 + 0.7 * np.cos(2 * np.pi * depth / rng.uniform(1.2, 2.0))), 0.6),
        (fat_lobules | (depth < fat_bottom), rng.uniform(0.25, 0.4), 0.5),
        (depth < skin, 3.0, 1.0),
        (lesion, rng.uniform(*LESION_ECHOGENICITY), rng.uniform(0.3, 0.8)),
    ]
    for region, power, layer_density in layers:
        echogenicity = np.where(region, power, echogenicity)
        density = np.where(region, layer_density, density)
    return echogenicity, density


def _random_lesion(rng: np.random.Generator):
    """A random lobulated lesion outline `(x, depth) -> normalised radius` (mm, depth below the skin)."""
    harmonics = random_harmonics(rng, orders=(3, 8), max_amplitude=0.18, count=4)
    radius = rng.uniform(*LESION_RADIUS_MM)
    semi_axes = (radius * rng.uniform(0.8, 1.4), radius * rng.uniform(0.6, 1.0))  # usually wider than tall
    center = (rng.uniform(-12.0, 12.0), rng.uniform(10.0, 32.0))
    angle = rng.uniform(-0.4, 0.4)
    return lambda x, depth: normalised_radius(
        x, depth, center=center, semi_axes=semi_axes, angle=angle, harmonics=harmonics
    )


def _fat_lobules(rng: np.random.Generator):
    """0-2 hypoechoic fat lobules inside the glandular layer: lesion look-alikes."""
    lobules = [
        tuple(rng.uniform(low, high) for low, high in ((-20, 20), (12, 32), (2.5, 5.0), (1.5, 3.0), (-0.3, 0.3)))
        for _ in range(int(rng.integers(0, 3)))
    ]

    def inside(x: np.ndarray, depth: np.ndarray) -> np.ndarray:
        region = np.zeros(x.shape, dtype=bool)
        for cx, cz, ax, az, angle in lobules:
            region |= normalised_radius(x, depth, center=(cx, cz), semi_axes=(ax, az), angle=angle) < 1.0
        return region

    return inside


def simulate_us_lesion(rng: np.random.Generator, *, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One simulated B-mode frame: `(image uint8 (size, size), lesion mask bool (size, size))`."""
    frequency = rng.uniform(*CENTER_FREQUENCY_MHZ)
    wavelength = SPEED_OF_SOUND_MM_PER_US / frequency
    probe_radius, half_angle = rng.uniform(*PROBE_RADIUS_MM), rng.uniform(*SECTOR_HALF_ANGLE_RAD)
    pixel = IMAGE_SIDE_MM / size
    sector = _sector(size, probe_radius=probe_radius, half_angle=half_angle)
    allowed = ndimage.binary_erosion(sector, iterations=int(np.ceil(SECTOR_MARGIN_MM / pixel)))
    fine = (np.arange(size * SUPERSAMPLING) + 0.5) * pixel / SUPERSAMPLING
    fine_depth, fine_x = np.meshgrid(fine, fine - IMAGE_SIDE_MM / 2, indexing="ij")
    while True:
        lesion_outline = _random_lesion(rng)
        covered = lesion_outline(fine_x, fine_depth) < 1.0
        mask = mask_from_fraction(area_downsample(covered.astype(float), SUPERSAMPLING))
        touched = covered.reshape(size, SUPERSAMPLING, size, SUPERSAMPLING).any(axis=(1, 3))  # (size, size)
        if mask.any() and not (touched & ~allowed).any():
            break
    fat_lobules = _fat_lobules(rng)

    # Beam-space grid: r along each beam (from the apex), theta across beams.
    step = wavelength / AXIAL_SAMPLES_PER_WAVELENGTH
    r_max = np.hypot(IMAGE_SIDE_MM / 2, probe_radius + IMAGE_SIDE_MM) + step
    r = probe_radius + np.arange(0.0, r_max - probe_radius, step)
    theta = np.linspace(-half_angle, half_angle, NUM_BEAMS)
    rr, tt = np.meshgrid(r, theta, indexing="ij")  # (R, B)
    x, depth = rr * np.sin(tt), rr * np.cos(tt) - probe_radius
    lesion = lesion_outline(x, depth) < 1.0
    echogenicity, density = _tissue(rng, x, rr - probe_radius, lesion, fat_lobules(x, depth))

    present = rng.random(rr.shape) < density
    scatterers = np.sqrt(echogenicity) * rng.standard_normal(rr.shape) * present  # (R, B)

    background = rng.uniform(*ATTENUATION_DB_PER_CM_MHZ)
    kind = "shadow" if rng.random() < SHADOWING_PROBABILITY else "enhancement"
    attenuation = np.where(lesion, background * rng.uniform(*LESION_ATTENUATION_RATIO[kind]), background)
    nepers_per_mm = attenuation * frequency * NEPER_PER_MM_PER_DB_PER_CM  # (R, B)
    round_trip_loss = np.exp(-2.0 * np.cumsum(nepers_per_mm, axis=0) * step)
    tgc_slope = background * rng.uniform(*TGC_MISMATCH) * frequency * NEPER_PER_MM_PER_DB_PER_CM
    tgc = np.exp(2.0 * tgc_slope * (rr - probe_radius))
    scatterers = scatterers * round_trip_loss * tgc

    pulse_sigma = rng.uniform(*PULSE_SIGMA_WAVELENGTHS) * wavelength
    offsets = np.arange(-4 * pulse_sigma, 4 * pulse_sigma + step, step)
    pulse = np.exp(-0.5 * (offsets / pulse_sigma) ** 2) * np.cos(4 * np.pi * offsets / wavelength)
    rf = ndimage.convolve1d(scatterers, pulse, axis=0, mode="constant")
    beam_sigma_rad = rng.uniform(*BEAM_SIGMA_MM) / (probe_radius + IMAGE_SIDE_MM / 2)
    rf = ndimage.gaussian_filter1d(rf, sigma=beam_sigma_rad / (theta[1] - theta[0]), axis=1, mode="constant")

    analytic = signal.hilbert(rf, axis=0)
    noise_level = np.abs(analytic).max() * 10 ** (ELECTRONIC_NOISE_DB / 20)
    analytic = analytic + noise_level * (rng.standard_normal(rr.shape) + 1j * rng.standard_normal(rr.shape))
    envelope = np.abs(analytic)

    # Scan conversion: sample the beam-space envelope at each output pixel after smoothing it to pixel scale.
    beam_spacing_mm = r.mean() * (theta[1] - theta[0])
    envelope = ndimage.gaussian_filter(envelope, sigma=(0.5 * pixel / step, 0.5 * pixel / beam_spacing_mm))
    centers = (np.arange(size) + 0.5) * pixel
    out_depth, out_x = np.meshgrid(centers, centers - IMAGE_SIDE_MM / 2, indexing="ij")
    out_r, out_theta = np.hypot(out_x, out_depth + probe_radius), np.arctan2(out_x, out_depth + probe_radius)
    coordinates = np.stack([(out_r - r[0]) / step, (out_theta - theta[0]) / (theta[1] - theta[0])])
    sampled = ndimage.map_coordinates(envelope, coordinates, order=1, mode="nearest")

    dynamic_range = rng.uniform(*DYNAMIC_RANGE_DB)
    # Gain: the median tissue echo lands at a random mid-grey, as an operator would set it.
    decibels = 20.0 * np.log10(np.maximum(sampled, 1e-12) / np.median(sampled[sector]))
    grey = rng.uniform(*MEDIAN_GREY) + decibels / dynamic_range
    image = np.round(np.clip(grey, 0.0, 1.0) * 255.0) * sector
    return image.astype(np.uint8), mask


def _sector(size: int, *, probe_radius: float, half_angle: float) -> np.ndarray:
    """Output pixels inside the fan: below the probe's arc and within the outermost beams."""
    centers = (np.arange(size) + 0.5) * IMAGE_SIDE_MM / size
    depth, x = np.meshgrid(centers, centers - IMAGE_SIDE_MM / 2, indexing="ij")
    r, theta = np.hypot(x, depth + probe_radius), np.arctan2(x, depth + probe_radius)
    return (r >= probe_radius) & (np.abs(theta) <= half_angle)
