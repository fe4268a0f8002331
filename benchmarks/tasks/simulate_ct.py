"""Simulated abdominal CT with organ label maps: 2-D slices (task `ct_abdomen_organs`) and anisotropic volumes
(task `ct_abdomen_volumes`) of one anatomical model, `abdomen.py`.

Physical model (see `training/data/ct_abdomen_organs/README.md` for the numbers and references):

1. Anatomy: a random upper abdomen, continuous in millimetres (`abdomen.random_abdomen`), cut into thin sections.
2. Attenuation: each tissue's mean CT number in Hounsfield units (HU) for the case's contrast phase (unenhanced,
   late arterial or portal venous), the enhancement scaled by a per-case bolus factor, each tissue's mean moved by a
   few HU per case, and a smooth within-tissue texture; oral contrast fills the bowel in some cases.
3. Acquisition: partial volume (a voxel's HU is the mean over a supersampled grid within the pixel and over
   sub-sections across the slice thickness; its label is the class covering most of it), a Gaussian point-spread
   function of the reconstruction, quantum noise filtered by the same kernel with a standard deviation that follows
   the voxel size at a fixed dose, `sigma^2 ~ 1 / (w^3 h)` (Brooks and Di Chiro, 1976), rounding to integer HU.
4. Display, for the 2-D task: the soft-tissue window (level 40 HU, width 400 HU) to 8 bits, with the rounding of
   `modeling_icmoe.pipeline_icmoe_sam.scale_intensities`, so that a volume's slice windowed by the pipeline looks
   like a 2-D sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from abdomen import CLASSES, Abdomen, Field, Tissue, random_abdomen, random_field
from shapes import area_downsample

PHASES = ("unenhanced", "arterial", "portal_venous")
PHASE_PROBABILITIES = (0.2, 0.2, 0.6)
# Mean CT numbers (HU): unenhanced, late arterial (about 35 s), portal venous (about 70 s) phase.
TISSUE_HU: dict[Tissue, tuple[float, float, float]] = {
    Tissue.AIR: (-1000.0, -1000.0, -1000.0),
    Tissue.LUNG: (-850.0, -850.0, -850.0),
    Tissue.FAT: (-100.0, -100.0, -100.0),
    Tissue.MUSCLE: (50.0, 55.0, 60.0),
    Tissue.CORTICAL_BONE: (650.0, 650.0, 650.0),  # a 1-2 mm cortex of about 1500 HU, averaged over a 3 mm voxel
    Tissue.CANCELLOUS_BONE: (200.0, 205.0, 210.0),
    Tissue.DISC: (85.0, 85.0, 90.0),
    Tissue.CSF: (10.0, 10.0, 10.0),
    Tissue.RIB: (450.0, 450.0, 450.0),  # cortex and marrow of a rib in one voxel
    Tissue.TABLE: (150.0, 150.0, 150.0),
    Tissue.LIVER: (58.0, 75.0, 110.0),
    Tissue.HEPATIC_VESSEL: (40.0, 95.0, 165.0),
    Tissue.SPLEEN: (48.0, 120.0, 120.0),
    Tissue.RENAL_CORTEX: (32.0, 175.0, 170.0),
    Tissue.RENAL_MEDULLA: (32.0, 80.0, 145.0),
    Tissue.RENAL_SINUS: (-60.0, -55.0, -50.0),  # fat with the sinus vessels
    Tissue.URINE: (5.0, 5.0, 5.0),
    Tissue.AORTA: (42.0, 300.0, 165.0),
    Tissue.IVC: (40.0, 85.0, 145.0),
    Tissue.PORTAL_VEIN: (40.0, 120.0, 180.0),
    Tissue.PANCREAS: (45.0, 120.0, 100.0),
    Tissue.BILE: (8.0, 8.0, 8.0),
    Tissue.GUT_WALL: (40.0, 85.0, 85.0),
    Tissue.GUT_FLUID: (15.0, 15.0, 15.0),
    Tissue.GAS: (-950.0, -950.0, -950.0),  # bowel gas, its wall's partial volume included
}
# Standard deviation (HU) of the smooth texture within a tissue; spleen in the arterial phase: arciform enhancement.
TEXTURE_HU = {Tissue.AIR: 0.0, Tissue.GAS: 0.0, Tissue.TABLE: 0.0, Tissue.FAT: 8.0, Tissue.MUSCLE: 6.0,
              Tissue.LIVER: 5.0, Tissue.SPLEEN: 5.0, Tissue.RENAL_CORTEX: 6.0, Tissue.PANCREAS: 8.0,
              Tissue.CANCELLOUS_BONE: 30.0, Tissue.LUNG: 30.0, Tissue.GUT_FLUID: 6.0}
ARTERIAL_SPLEEN_TEXTURE_HU = 25.0
DEFAULT_TEXTURE_HU = 3.0
TEXTURE_WAVELENGTH_MM = (8.0, 30.0)
TEXTURE_TERMS = 48
BOLUS = (0.8, 1.2)  # scales every tissue's enhancement: contrast dose, body weight, cardiac output
TISSUE_JITTER_HU = 5.0  # per case and tissue
ORAL_CONTRAST_PROBABILITY = 0.25
ORAL_CONTRAST_HU = (200.0, 350.0)
# Noise: 10-40 HU (standard to low dose) in a 0.75 mm x 0.75 mm x 5 mm voxel, scaled to the simulated voxel.
NOISE_REFERENCE_HU = (10.0, 40.0)
REFERENCE_PIXEL_MM, REFERENCE_THICKNESS_MM = 0.75, 5.0
PSF_FWHM_PX = (1.0, 1.5)  # a reconstruction kernel matched to the pixel grid
SUPERSAMPLING = 3  # in-plane sub-samples per pixel side
SUBSECTIONS = 3  # sub-sections across the slice thickness
SLICE_THICKNESS_MM = 5.0  # of the 2-D slices; a volume's is an argument
FIELD_OF_VIEW_MARGIN = (1.02, 1.08)  # field of view over the body's largest extent
HU_RANGE = (-1024, 3071)  # 12-bit CT numbers
SOFT_TISSUE_WINDOW = (40.0, 400.0)  # level, width: `CT_WINDOWS["soft_tissue"]` of the pipeline
SLICE_MARGIN_MM = (15.0, 10.0)  # 2-D slices: from this far below the lower kidney pole to this far below the dome
VOLUME_TOP_BELOW_DOME_MM = (0.0, 20.0)  # a volume's top slice


@dataclass(frozen=True)
class Scan:
    """One examination: the CT number and texture of every tissue (indexed by `Tissue`), noise and blur."""

    phase: str
    hu: np.ndarray  # (num tissues,)
    texture_hu: np.ndarray  # (num tissues,)
    texture: Field
    noise_reference_hu: float
    psf_fwhm_px: float


def random_scan(rng: np.random.Generator) -> Scan:
    """A random examination: contrast phase, bolus strength, per-tissue CT numbers, oral contrast, noise, kernel."""
    phase = int(rng.choice(len(PHASES), p=PHASE_PROBABILITIES))
    bolus = rng.uniform(*BOLUS)
    hu = np.zeros(len(Tissue))
    for tissue, values in TISSUE_HU.items():
        enhancement = (values[phase] - values[0]) * bolus
        jitter = rng.normal(0.0, TISSUE_JITTER_HU) if -200.0 < values[0] < 300.0 else 0.0  # not air, gas, lung, bone
        hu[tissue] = values[0] + enhancement + jitter
    if rng.uniform() < ORAL_CONTRAST_PROBABILITY:
        hu[Tissue.GUT_FLUID] = rng.uniform(*ORAL_CONTRAST_HU)
    texture_hu = np.array([TEXTURE_HU.get(tissue, DEFAULT_TEXTURE_HU) for tissue in Tissue])
    if PHASES[phase] == "arterial":
        texture_hu[Tissue.SPLEEN] = ARTERIAL_SPLEEN_TEXTURE_HU
    return Scan(
        phase=PHASES[phase],
        hu=hu,
        texture_hu=texture_hu,
        texture=random_field(rng, wavelength=TEXTURE_WAVELENGTH_MM, std=1.0, count=TEXTURE_TERMS),
        noise_reference_hu=rng.uniform(*NOISE_REFERENCE_HU),
        psf_fwhm_px=rng.uniform(*PSF_FWHM_PX),
    )


def field_of_view(abdomen: Abdomen, rng: np.random.Generator, *, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Pixel centres (mm) of a square field of view that holds the body: columns `x` from the patient's right,
    rows `y` from anterior; and the pixel size. The body lies off-centre by a few millimetres, as on a real table."""
    half_width, front, back = abdomen.extent()
    side = max(2.0 * half_width, front + back) * rng.uniform(*FIELD_OF_VIEW_MARGIN)
    pixel = side / size
    centres = (np.arange(size) + 0.5) * pixel - side / 2.0
    offset = rng.normal(0.0, 5.0, 2)
    return centres + offset[0], (front - back) / 2.0 - centres + offset[1], pixel


def render(abdomen: Abdomen, scan: Scan, *, x: np.ndarray, y: np.ndarray, z: float, thickness: float,
           supersampling: int = SUPERSAMPLING, subsections: int = SUBSECTIONS) -> tuple[np.ndarray, np.ndarray]:
    """The noiseless CT numbers (H, W) of the slice centred at `z` on the pixel centres `x` (W,), `y` (H,), and its
    label map (H, W): each pixel's class is the one covering most of it (ties to the lower id, background first)."""
    pixel = x[1] - x[0]  # y runs the other way (anterior first) with the same spacing
    offsets = ((np.arange(supersampling) + 0.5) / supersampling - 0.5)  # (S,) in pixels
    fine_x = (x[:, None] + offsets * pixel).ravel()
    fine_y = (y[:, None] - offsets * pixel).ravel()
    hu = np.zeros((y.size, x.size))
    texture = np.zeros_like(hu)
    coverage = np.zeros((len(CLASSES), y.size, x.size))
    for step in range(subsections):
        section = abdomen.section(fine_x, fine_y, z + ((step + 0.5) / subsections - 0.5) * thickness)
        hu += area_downsample(scan.hu[section.tissue], supersampling)
        texture += area_downsample(scan.texture_hu[section.tissue], supersampling)
        for organ in range(len(CLASSES)):
            coverage[organ] += area_downsample((section.organ == organ).astype(float), supersampling)
    hu = (hu + texture * scan.texture.on_grid(x, y, z)) / subsections
    return hu, np.argmax(coverage, axis=0).astype(np.uint8)


def acquire(
    hu: np.ndarray, rng: np.random.Generator, scan: Scan, *, pixel_mm: float, thickness_mm: float
) -> np.ndarray:
    """Blur, noise and quantisation of one reconstructed slice: integer HU (int16)."""
    sigma = scan.psf_fwhm_px / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    blurred = ndimage.gaussian_filter(hu, sigma, mode="nearest")
    impulse = np.zeros((9, 9))
    impulse[4, 4] = 1.0
    gain = np.sqrt((ndimage.gaussian_filter(impulse, sigma) ** 2).sum())  # the kernel's effect on white noise
    noise_hu = scan.noise_reference_hu * (REFERENCE_PIXEL_MM / pixel_mm) ** 1.5 * (
        REFERENCE_THICKNESS_MM / thickness_mm) ** 0.5
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape), sigma, mode="wrap") * (noise_hu / gain)
    return np.clip(np.round(blurred + noise), *HU_RANGE).astype(np.int16)


def soft_tissue_window(hu: np.ndarray) -> np.ndarray:
    """HU to uint8 through the soft-tissue window: `scale_intensities(hu, window="soft_tissue")` of the pipeline."""
    level, width = SOFT_TISSUE_WINDOW
    low = level - width / 2.0
    return np.round((np.clip(hu.astype(np.float64), low, low + width) - low) / width * 255.0).astype(np.uint8)


def simulate_ct_slice(rng: np.random.Generator, *, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One axial slice of a random abdomen at a random height: `(image uint8 (size, size) through the soft-tissue
    window, class-id map uint8 (size, size))`. Rows run from anterior, columns from the patient's right."""
    abdomen, scan = random_abdomen(rng), random_scan(rng)
    x, y, pixel = field_of_view(abdomen, rng, size=size)
    z = rng.uniform(abdomen.kidney_bottom - SLICE_MARGIN_MM[0], abdomen.liver_top - SLICE_MARGIN_MM[1])
    hu, labels = render(abdomen, scan, x=x, y=y, z=z, thickness=SLICE_THICKNESS_MM)
    return soft_tissue_window(acquire(hu, rng, scan, pixel_mm=pixel, thickness_mm=SLICE_THICKNESS_MM)), labels


def simulate_ct_volume(
    rng: np.random.Generator, *, size: int, num_slices: int, thickness_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One volume of contiguous axial slices `thickness_mm` thick from just below the liver dome down: `(CT numbers
    int16, class-id map uint8, affine (4, 4))`, both arrays `(size, size, num_slices)` with axes towards the
    patient's left, posterior and superior (an LPS-like stored order); the affine maps them to RAS+ millimetres."""
    abdomen, scan = random_abdomen(rng), random_scan(rng)
    x, y, pixel = field_of_view(abdomen, rng, size=size)
    top = abdomen.liver_top - rng.uniform(*VOLUME_TOP_BELOW_DOME_MM)
    heights = top - (num_slices - np.arange(num_slices) - 0.5) * thickness_mm  # inferior first
    hu = np.empty((size, size, num_slices), dtype=np.int16)
    labels = np.empty((size, size, num_slices), dtype=np.uint8)
    for k, z in enumerate(heights):
        plane, plane_labels = render(abdomen, scan, x=x, y=y, z=z, thickness=thickness_mm)
        hu[:, :, k] = acquire(plane, rng, scan, pixel_mm=pixel, thickness_mm=thickness_mm).T  # (col, row)
        labels[:, :, k] = plane_labels.T
    table_z = rng.uniform(-600.0, -300.0)  # the scanner's z of the model's z = 0
    affine = np.array([
        [-pixel, 0.0, 0.0, -x[0]],  # i: towards the patient's left, where R decreases
        [0.0, -pixel, 0.0, y[0]],  # j: towards posterior
        [0.0, 0.0, thickness_mm, heights[0] + table_z],  # k: towards superior
        [0.0, 0.0, 0.0, 1.0],
    ])
    return hu, labels, affine
