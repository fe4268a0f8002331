"""A seeded anatomical model of the adult upper abdomen, continuous in patient millimetres (for `simulate_ct.py`).

Coordinates: `x` towards the patient's left, `y` anterior, `z` superior; `z = 0` lies near the renal hila and
`(x, y) = (0, 0)` at the centre of the abdominal cavity. Every structure is an implicit shape (a deformed ellipsoid,
a tube along a polyline, or a layer of the body wall), so one abdomen can be cut at any height and any resolution
and its slices agree with each other: a volume is a stack of such cuts, a 2-D sample is one.

What varies from one abdomen to the next: body habitus (cavity size, muscle and fat thickness), the size, position,
orientation and 3-D lobulation of every organ, the vertebral and rib levels, the bowel loops and their content, and
one smooth displacement field that bends the whole abdomen. Organs are clipped to the abdominal cavity, so they take
the shape of its wall, and painted in an anatomical order: a later structure carves an earlier one, so neighbouring
organs touch (kidney against liver and spleen, vessels against the spine) without gaps or overlaps.
The numbers and their sources are in `training/data/ct_abdomen_organs/README.md`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from shapes import Blob, Field, Tube, radius_perturbation, random_blob, random_field, random_harmonics

CLASSES = ("background", "liver", "spleen", "kidney_right", "kidney_left", "aorta")
LIVER, SPLEEN, KIDNEY_RIGHT, KIDNEY_LEFT, AORTA = range(1, len(CLASSES))


class Tissue(IntEnum):
    """What fills a point: sets its CT number (`simulate_ct.TISSUE_HU`); the organ label is painted beside it."""

    AIR = 0
    LUNG = 1
    FAT = 2
    MUSCLE = 3
    CORTICAL_BONE = 4
    CANCELLOUS_BONE = 5
    DISC = 6
    CSF = 7
    RIB = 8
    TABLE = 9
    LIVER = 10
    HEPATIC_VESSEL = 11
    SPLEEN = 12
    RENAL_CORTEX = 13
    RENAL_MEDULLA = 14
    RENAL_SINUS = 15
    URINE = 16
    AORTA = 17
    IVC = 18
    PORTAL_VEIN = 19
    PANCREAS = 20
    BILE = 21
    GUT_WALL = 22
    GUT_FLUID = 23
    GAS = 24


DISPLACEMENT_MM = 4.0  # standard deviation of each component of the whole-abdomen displacement field
DISPLACEMENT_WAVELENGTH_MM = (120.0, 300.0)
SKIN_MM = 2.0
TABLE_GAP_MM = 12.0  # between the back's skin and the table top, beyond the displacement field's reach
TABLE_MM = 5.0
BOWEL_CONTENTS = ("fluid", "collapsed", "gas", "level")  # "level": gas over fluid
BOWEL_CONTENT_PROBABILITIES = (0.45, 0.25, 0.15, 0.15)


# ---------------------------------------------------------------------------------------------------- a section
class Section:
    """Tissue and organ labels of one thin axial section, on a grid of rows `y` (anterior first) and columns `x`
    (the patient's right first: radiological display), in the abdomen's displaced coordinates."""

    def __init__(self, abdomen: Abdomen, x: np.ndarray, y: np.ndarray, z: float):
        self.columns, self.rows, self.height = x, y, z
        grid_x, grid_y = np.meshgrid(x, y)  # (H, W)
        dx, dy, dz = (field.on_grid(x, y, z) for field in abdomen.displacement)
        self.x, self.y, self.z = grid_x + dx, grid_y + dy, z + dz
        self.margin = max(field.bound for field in abdomen.displacement)
        self.tissue = np.full(grid_x.shape, Tissue.AIR, dtype=np.int8)
        self.organ = np.zeros(grid_x.shape, dtype=np.uint8)
        self.cavity = np.zeros(grid_x.shape, dtype=bool)

    def window(self, shape: Blob | Tube) -> tuple[slice, slice] | None:
        """The rows and columns a shape can reach in this section (None: it misses it)."""
        low, high = shape.bounds()
        low, high = low - self.margin, high + self.margin
        if not low[2] <= self.height <= high[2]:
            return None
        cols = np.flatnonzero((self.columns >= low[0]) & (self.columns <= high[0]))
        rows = np.flatnonzero((self.rows >= low[1]) & (self.rows <= high[1]))
        if cols.size == 0 or rows.size == 0:
            return None
        return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)

    def inside(self, shape: Blob | Tube, window: tuple[slice, slice]) -> np.ndarray:
        return shape.radius(self.x[window], self.y[window], self.z[window]) < 1.0

    def paint(self, window: tuple[slice, slice], region: np.ndarray, tissue: Tissue, organ: int = 0) -> None:
        self.tissue[window][region] = tissue
        self.organ[window][region] = organ


# ---------------------------------------------------------------------------------------------------- the abdomen
@dataclass(frozen=True)
class Gut:
    """A bowel loop, the colon or the stomach: a wall around gas over fluid (a gas-fluid level when both)."""

    shape: Blob | Tube
    wall_mm: float
    gas_above_mm: float  # gas where a point lies more than this anterior of `reference_y` (supine: gas rises)
    reference_y: float


@dataclass(frozen=True)
class Abdomen:
    """One abdomen's parameters (mm and radians); `section` cuts it."""

    cavity_semi_axes: tuple[float, float]  # mm, lateral and antero-posterior, at z = 0
    cavity_taper: float  # relative change of the cavity's semi-axes per 100 mm up
    cavity_outline: list[tuple[int, float, float]]  # harmonics of the cavity's outline
    back_flatness: float  # exponent of the superellipse behind the cavity's centre: 2 round, more flat
    muscle_mm: float  # abdominal wall
    back_muscle_mm: float  # paraspinal muscles: extra wall thickness behind the spine
    fat_mm: tuple[float, float, float]  # subcutaneous fat: anterior, lateral, posterior
    displacement: tuple[Field, Field, Field]
    diaphragm: tuple[float, float, float]  # dome height, drop to the sides, drop to the back (mm)
    spine: tuple[float, float, float, float]  # vertebral body centre y, lateral and AP semi-axes, first disc z
    vertebra_mm: float  # height of a vertebra with its disc
    disc_mm: float
    ribs: list[tuple[float, float]]  # height at the spine and angular extent from the back (rad) of each rib
    rib_drop: float  # mm a rib descends per radian around the body
    psoas: tuple[float, float]  # top z and largest radius (mm)
    liver: tuple[Blob, Blob, Blob]  # right lobe, its dome, left lobe
    hepatic_vessels: list[Tube]
    gallbladder: Blob | None
    spleen: tuple[Blob, Blob]  # the organ and the hilar notch cut from it
    kidneys: dict[int, tuple[Blob, Blob]]  # class id -> (kidney, renal sinus)
    aorta: Tube
    ivc: Tube
    portal_vein: Tube
    pancreas: Blob
    stomach: Gut
    bowel: list[Gut]

    @property
    def liver_top(self) -> float:
        return top_of(self.liver)

    @property
    def kidney_bottom(self) -> float:
        return float(min(kidney.center[2] - kidney.semi_axes.max() for kidney, _ in self.kidneys.values()))

    def extent(self) -> tuple[float, float, float]:
        """Half width, anterior and posterior reach of the body (mm), for a field of view that holds it."""
        a, b = self.cavity_semi_axes
        front, side, back = self.fat_mm
        reach = self.muscle_mm + SKIN_MM + 2 * DISPLACEMENT_MM
        return (a * 1.1 + side + reach, b + front + reach,
                b + back + self.back_muscle_mm + reach + TABLE_GAP_MM + TABLE_MM + 5.0)

    def section(self, x: np.ndarray, y: np.ndarray, z: float) -> Section:
        """Tissue and organ labels at height `z` on the grid `x` (columns) by `y` (rows)."""
        section = Section(self, x, y, z)
        self._paint_body(section)
        self._paint_gut(section)
        self._paint_abdominal_organs(section)
        self._paint_retroperitoneum(section)
        self._paint_bones(section)
        return section

    # The painters, in anatomical order: a later one carves what an earlier one painted.
    def _paint_body(self, s: Section) -> None:
        a, b = (axis * (1.0 + self.cavity_taper * s.z / 100.0) for axis in self.cavity_semi_axes)
        u, v = np.abs(s.x / a), s.y / b
        power = np.where(v < 0, self.back_flatness, 2.0)  # an ellipse in front, a flatter back
        angle = np.arctan2(s.y, s.x)
        rho = (u ** power + np.abs(v) ** power) ** (1.0 / power) / radius_perturbation(angle, self.cavity_outline)
        outside = np.hypot(s.x, s.y) * (1.0 - 1.0 / np.maximum(rho, 1e-9))  # mm beyond the cavity along the ray
        from_back = np.abs(np.angle(np.exp(1j * (angle + np.pi / 2))))  # 0 behind the spine, pi in front
        muscle = self.muscle_mm + self.back_muscle_mm * np.exp(-((from_back / 0.7) ** 4))  # paraspinal muscles
        front, side, back = self.fat_mm
        sine = np.sin(angle)
        fat = side + (front - side) * np.clip(sine, 0, None) + (back - side) * np.clip(-sine, 0, None)
        s.cavity = outside < 0
        s.tissue[outside < muscle + fat + SKIN_MM] = Tissue.MUSCLE  # skin
        s.tissue[outside < muscle + fat] = Tissue.FAT
        s.tissue[outside < muscle] = Tissue.MUSCLE
        s.tissue[s.cavity] = Tissue.FAT
        dome, side_drop, back_drop = self.diaphragm
        # Lung bases reach down behind the liver and spleen, on either side of the spine.
        beside_spine = np.clip((np.abs(s.x) - 30.0) / 40.0, 0.0, 1.0)
        diaphragm = dome - side_drop * (s.x / a) ** 2 - back_drop * np.clip(-s.y / b, 0, 1) ** 2 * beside_spine
        s.tissue[s.cavity & (s.z > diaphragm)] = Tissue.LUNG
        self._paint_ribs(s, outside, from_back)
        table_top = -(b + back + self.back_muscle_mm + self.muscle_mm + SKIN_MM + TABLE_GAP_MM)
        table_top = table_top + 40.0 * (s.columns / 250.0) ** 2  # (W,) a curved table, in scanner coordinates
        table = (s.rows[:, None] <= table_top) & (s.rows[:, None] > table_top - TABLE_MM)
        s.tissue[table & (np.abs(s.columns) < 230.0)] = Tissue.TABLE

    def _paint_ribs(self, s: Section, outside: np.ndarray, from_back: np.ndarray) -> None:
        in_wall = (outside > 2.0) & (outside < 11.0)
        for height, extent in self.ribs:
            rib = in_wall & (from_back > 0.45) & (from_back < extent)
            rib &= np.abs(s.z - (height - self.rib_drop * from_back)) < 6.0
            s.tissue[rib] = Tissue.RIB

    def _paint_gut(self, s: Section) -> None:
        for gut in (*self.bowel, self.stomach):
            window = s.window(gut.shape)
            if window is None:
                continue
            rho = gut.shape.radius(s.x[window], s.y[window], s.z[window])
            inside = (rho < 1.0) & s.cavity[window]
            scale = gut.shape.radii.min() if isinstance(gut.shape, Tube) else gut.shape.semi_axes.min()
            lumen = rho < 1.0 - gut.wall_mm / scale
            gas = s.y[window] > gut.reference_y + gut.gas_above_mm
            s.paint(window, inside, Tissue.GUT_WALL)
            s.paint(window, inside & lumen & ~gas, Tissue.GUT_FLUID)
            s.paint(window, inside & lumen & gas, Tissue.GAS)

    def _paint_abdominal_organs(self, s: Section) -> None:
        self._paint_blob(s, self.pancreas, Tissue.PANCREAS)
        organ, notch = self.spleen
        window = s.window(organ)
        if window is not None:
            crescent = s.inside(organ, window) & ~s.inside(notch, window)
            s.paint(window, crescent & s.cavity[window], Tissue.SPLEEN, SPLEEN)
        for lobe in self.liver:
            self._paint_blob(s, lobe, Tissue.LIVER, LIVER)
        for vessel in self.hepatic_vessels:
            window = s.window(vessel)
            if window is not None:
                s.paint(window, s.inside(vessel, window) & (s.organ[window] == LIVER), Tissue.HEPATIC_VESSEL, LIVER)
        if self.gallbladder is not None:
            self._paint_blob(s, self.gallbladder, Tissue.BILE)
        self._paint_blob(s, self.portal_vein, Tissue.PORTAL_VEIN)

    def _paint_retroperitoneum(self, s: Section) -> None:
        for organ, (kidney, sinus) in self.kidneys.items():
            window = s.window(kidney)
            if window is None:
                continue
            x, y, z = s.x[window], s.y[window], s.z[window]
            u, v, w = kidney.local(x, y, z)
            rho = kidney.radius(x, y, z)
            inside = (rho < 1.0) & s.cavity[window]
            # Medullary pyramids: inner parenchyma interrupted by cortical columns.
            pyramids = (rho < 0.72) & (np.cos(7.0 * np.arctan2(w, u)) > -0.2)
            in_sinus = sinus.radius(x, y, z) < 1.0
            s.paint(window, inside, Tissue.RENAL_CORTEX, organ)
            s.paint(window, inside & pyramids, Tissue.RENAL_MEDULLA, organ)
            s.paint(window, inside & in_sinus, Tissue.RENAL_SINUS)
            s.paint(window, inside & (sinus.radius(x, y, z) < 0.45), Tissue.URINE)
        self._paint_blob(s, self.ivc, Tissue.IVC)
        self._paint_blob(s, self.aorta, Tissue.AORTA, AORTA)

    def _paint_blob(self, s: Section, shape: Blob | Tube, tissue: Tissue, organ: int = 0) -> None:
        window = s.window(shape)
        if window is not None:
            s.paint(window, s.inside(shape, window) & s.cavity[window], tissue, organ)

    def _paint_bones(self, s: Section) -> None:
        """Psoas muscles, then the lumbar spine: vertebral bodies with discs, canal and posterior arch."""
        y_body, half_width, half_depth, first_disc = self.spine
        top, largest = self.psoas
        radius = largest * np.clip((top - s.z) / 110.0, 0.0, 1.0) ** 0.7
        for side in (-1.0, 1.0):
            psoas = ((s.x - side * (half_width + 0.8 * radius + 3.0)) / np.maximum(radius, 1e-6)) ** 2
            psoas += ((s.y - y_body - 4.0) / np.maximum(0.85 * radius, 1e-6)) ** 2
            muscle = (psoas < 1.0) & (radius > 1.0)
            s.tissue[muscle] = Tissue.MUSCLE
            s.organ[muscle] = 0
        phase = np.mod(s.z - first_disc, self.vertebra_mm)  # mm above the last disc's lower end plate
        disc = phase < self.disc_mm
        rho = np.hypot(s.x / half_width, (s.y - y_body) / half_depth)
        canal_y = y_body - half_depth - 9.0
        canal = np.hypot(s.x / 11.0, (s.y - canal_y) / 8.0)
        middle = np.abs(phase - (self.disc_mm + self.vertebra_mm) / 2.0)  # mm from the vertebra's mid-height
        arch = ~disc & (canal >= 1.0) & (canal < 1.8) & (s.y < canal_y + 3.0)
        arch |= ~disc & (middle < 8.0) & (np.hypot(s.x / 4.0, (s.y - canal_y + 22.0) / 14.0) < 1.0)  # spinous
        arch |= ~disc & (middle < 5.0) & (np.hypot((np.abs(s.x) - half_width - 12.0) / 17.0,
                                                   (s.y - canal_y - 4.0) / 5.0) < 1.0)  # transverse processes
        bone = {Tissue.CORTICAL_BONE: ~disc & (rho < 1.0) | arch,
                Tissue.CANCELLOUS_BONE: ~disc & (rho < 1.0 - 2.5 / half_depth),
                Tissue.DISC: disc & (rho < 1.03),
                Tissue.CSF: canal < 1.0}
        for tissue, region in bone.items():
            s.tissue[region] = tissue
            s.organ[region] = 0


# ---------------------------------------------------------------------------------------------------- sampling
def top_of(blobs: tuple[Blob, ...]) -> float:
    """The highest z (mm) of the blobs' ellipsoids, lobulation aside."""
    return float(max(blob.center[2] + blob.semi_axes[2] for blob in blobs))


def random_abdomen(rng: np.random.Generator) -> Abdomen:
    """One random adult upper abdomen (sizes in mm; see the README for the ranges and their sources)."""
    a, b = rng.uniform(115.0, 140.0), rng.uniform(82.0, 100.0)
    habitus = rng.uniform()  # 0 lean .. 1 obese: sets the subcutaneous fat
    fat = tuple(base + span * habitus + rng.uniform(-4.0, 4.0) for base, span in ((8, 45), (6, 35), (5, 25)))
    vertebra_mm = rng.uniform(32.0, 38.0)
    y_body, half_width, half_depth = -b + rng.uniform(6.0, 12.0), rng.uniform(21.0, 25.0), rng.uniform(14.0, 17.0)
    front_of_spine = y_body + half_depth
    rib_heights = rng.uniform(10.0, 35.0) + np.arange(7) * rng.uniform(24.0, 28.0)  # ribs 12, 11, ..., 6
    rib_extents = (1.3, 1.7, 2.2, 2.6, 2.7, 2.8, 2.9)

    z_liver = rng.uniform(40.0, 60.0)
    # The liver's lobes and the spleen are centred near the cavity's wall, so that clipped to the cavity they lie
    # against it at every height: the right lobe's inferior tip ends lateral, not floating in the middle.
    liver = (random_blob(rng, (-0.95 * a, 0.1 * b, z_liver), (0.78 * a, 0.95 * b, 68.0), angles=(0.0, 0.15, 0.2)),
             random_blob(rng, (-0.4 * a, -0.1 * b, z_liver + 30.0), (0.38 * a, 0.6 * b, 48.0)),  # the dome
             random_blob(rng, (-0.2 * a, 0.8 * b, z_liver + 15.0), (0.65 * a, 0.4 * b, 38.0), angles=(-0.2, 0.0, 0.0)))
    spleen = random_blob(rng, (0.7 * a, -0.55 * b, z_liver + rng.uniform(-5.0, 15.0)), (32.0, 45.0, 55.0),
                         angles=(np.arctan2(0.55 * b, -0.7 * a), 0.0, 0.15), shift_mm=5.0)
    notch = Blob(spleen.center + 0.9 * spleen.semi_axes[0] * spleen.axes[:, 0], spleen.semi_axes * (0.8, 0.6, 0.6),
                 spleen.axes)
    kidneys = {}
    hilum = 0.6  # radians from the medial direction towards anterior: the hilum faces antero-medially
    for organ, side, z_kidney in ((KIDNEY_RIGHT, -1.0, rng.uniform(-15.0, 0.0)),  # the right kidney lies lower
                                  (KIDNEY_LEFT, 1.0, rng.uniform(0.0, 15.0))):
        kidney = random_blob(
            rng, (side * rng.uniform(56.0, 68.0), -b + rng.uniform(30.0, 38.0), z_kidney), (29.0, 23.0, 56.0),
            angles=(hilum if side < 0 else np.pi - hilum, 0.0, -side * 0.2), shift_mm=4.0, lobulation=0.03,
        )  # roll: the upper pole leans postero-medially
        sinus = Blob(kidney.center + 0.55 * kidney.semi_axes[0] * kidney.axes[:, 0],
                     kidney.semi_axes * (0.5, 0.45, 0.55), kidney.axes)
        kidneys[organ] = (kidney, sinus)

    aorta_radius = rng.uniform(10.0, 13.0)
    aorta_xy = np.array([rng.uniform(5.0, 15.0), front_of_spine + aorta_radius + rng.uniform(1.0, 4.0)])
    aorta = Tube(np.array([[*aorta_xy, 250.0], [*(aorta_xy + rng.uniform(-4.0, 4.0, 2)), -250.0]]),
                 np.array([aorta_radius * 1.05, aorta_radius * 0.8]))
    ivc_x, ivc_y = -rng.uniform(20.0, 28.0), front_of_spine + rng.uniform(8.0, 14.0)
    ivc = Tube(np.array([[ivc_x, ivc_y, -250.0], [ivc_x, ivc_y, 20.0], [ivc_x - 5.0, ivc_y + 20.0, z_liver + 35.0],
                         [ivc_x - 8.0, ivc_y + 30.0, 250.0]]), np.full(4, rng.uniform(9.0, 12.0)))
    porta = np.array([-0.25 * a, front_of_spine + 45.0, z_liver - 10.0]) + rng.normal(0.0, 4.0, 3)
    confluence = np.array([rng.uniform(0.0, 10.0), front_of_spine + 30.0, rng.uniform(15.0, 25.0)])
    portal_vein = Tube(np.stack([confluence, porta]), np.full(2, rng.uniform(6.0, 8.0)))
    right_lobe = liver[0]
    portal_branches = [Tube(np.stack([porta, right_lobe.center + right_lobe.semi_axes * rng.uniform(-0.6, 0.6, 3)]),
                            np.array([5.0, 2.0])) for _ in range(4)]
    vein_root = np.array([ivc_x - 6.0, ivc_y + 25.0, z_liver + 40.0])
    hepatic_veins = [Tube(np.stack([vein_root, np.array(target) + rng.normal(0.0, 8.0, 3)]), np.array([5.0, 2.0]))
                     for target in ((-0.6 * a, 0.3 * b, z_liver + 50.0), (-0.1 * a, 0.5 * b, z_liver + 40.0),
                                    (0.1 * a, 0.5 * b, z_liver + 55.0))]
    gallbladder = (random_blob(rng, (-0.3 * a, 0.4 * b, z_liver - 40.0), (15.0, 14.0, 35.0), angles=(0.0, 0.0, 0.5))
                   if rng.uniform() < 0.85 else None)  # else removed (cholecystectomy)
    pancreas = random_blob(rng, (0.12 * a, front_of_spine + 40.0, rng.uniform(15.0, 30.0)), (0.55 * a, 11.0, 14.0),
                           angles=(-0.25, -0.25, 0.0), shift_mm=4.0, lobulation=0.1)
    stomach = random_blob(rng, (0.38 * a, 0.05 * b, z_liver + 25.0), (40.0, 35.0, 60.0), angles=(0.5, 0.0, 0.0))
    colon_radius = rng.uniform(17.0, 24.0)
    colon = Tube(np.array([[-0.72 * a, -0.15 * b, -160.0], [-0.7 * a, -0.05 * b, z_liver - 45.0],
                           [-0.55 * a, 0.3 * b, z_liver - 45.0], [0.0, 0.65 * b, z_liver - 70.0],
                           [0.55 * a, 0.3 * b, spleen.center[2] - 30.0], [0.75 * a, -0.2 * b, -160.0]])
                 + rng.normal(0.0, 6.0, (6, 3)), np.full(6, colon_radius))
    bowel = [Gut(colon, 3.0, rng.uniform(-colon_radius, 0.0), 0.0)]  # gas in front, fluid in the flanks' colon
    for _ in range(int(rng.integers(25, 41))):  # small-bowel loops
        start = np.array([rng.uniform(-0.6, 0.6) * a, rng.uniform(-0.1, 0.75) * b, rng.uniform(-110.0, 10.0)])
        steps = rng.normal(0.0, 1.0, (2, 3))
        steps *= 35.0 / np.linalg.norm(steps, axis=1, keepdims=True)
        content = BOWEL_CONTENTS[rng.choice(len(BOWEL_CONTENTS), p=BOWEL_CONTENT_PROBABILITIES)]
        collapsed = content == "collapsed"
        radius = rng.uniform(5.0, 8.0) if collapsed else rng.uniform(9.0, 14.0)
        wall = radius if collapsed else 2.5  # a collapsed loop is all wall
        gas_above = {"gas": -1000.0, "level": rng.uniform(0.0, 0.6) * radius}.get(content, 1000.0)
        points = np.cumsum(np.vstack([start, steps]), axis=0)  # (3, 3)
        bowel.append(Gut(Tube(points, np.full(3, radius)), wall, gas_above, float(points[:, 1].mean())))
    return Abdomen(
        cavity_semi_axes=(a, b),
        cavity_taper=rng.uniform(0.0, 0.05),
        cavity_outline=random_harmonics(rng, orders=(2, 4), max_amplitude=0.04, count=3),
        back_flatness=rng.uniform(2.5, 3.5),
        muscle_mm=rng.uniform(8.0, 14.0),
        back_muscle_mm=rng.uniform(35.0, 50.0),
        fat_mm=fat,
        displacement=tuple(random_field(rng, wavelength=DISPLACEMENT_WAVELENGTH_MM, std=DISPLACEMENT_MM)
                           for _ in range(3)),
        diaphragm=(top_of(liver) + rng.uniform(0.0, 10.0),
                   rng.uniform(30.0, 50.0), rng.uniform(40.0, 70.0)),
        spine=(y_body, half_width, half_depth, rng.uniform(0.0, vertebra_mm)),
        vertebra_mm=vertebra_mm,
        disc_mm=rng.uniform(8.0, 11.0),
        ribs=list(zip(rib_heights.tolist(), rib_extents)),
        rib_drop=rng.uniform(20.0, 30.0),
        psoas=(rng.uniform(0.0, 20.0), rng.uniform(16.0, 24.0)),
        liver=liver,
        hepatic_vessels=portal_branches + hepatic_veins,
        gallbladder=gallbladder,
        spleen=(spleen, notch),
        kidneys=kidneys,
        aorta=aorta,
        ivc=ivc,
        portal_vein=portal_vein,
        pancreas=pancreas,
        stomach=Gut(stomach, 5.0, rng.uniform(-0.2, 0.6) * stomach.semi_axes[1], float(stomach.center[1])),
        bowel=bowel,
    )
