"""A deterministic synthetic chest-CT phantom in Hounsfield units.

The phantom is the project's embedded data: demos and tests run on it, so nothing is ever downloaded. Each
patient is drawn from a seed and has its own body outline, fat and muscle layers, lungs with branching vessels,
heart, aorta, trachea, spine, ribs, sternum, liver below the diaphragm, and the patient table. A scan adds
blur and noise, and sets pixels outside the circular reconstruction field to the scanner floor.

Geometry lives in normalised units: 1 unit is half the field of view, so the anatomy fills the image at any
matrix size. At 512 pixels of 0.75 mm the field of view is 384 mm and the body is adult-sized; smaller
matrices give a proportionally smaller patient at the same pixel spacing. Axes follow DICOM's patient frame
(LPS): x grows to the patient's left (image columns), y grows posterior (image rows), z grows superior.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

__all__ = ["Tissue", "TISSUE_HU", "SCANNER_FLOOR_HU", "LUNG_TISSUES", "ORGAN_LABELS", "SyntheticCT", "ChestPhantom",
           "Scanner", "organ_label_map", "generate_patient"]

SCANNER_FLOOR_HU = -1024  # value outside the reconstruction circle, and the lowest HU kept by preparation


class Tissue(IntEnum):
    """Labels of the phantom's tissue map (noise-free)."""

    AIR = 0
    TABLE = 1
    SKIN = 2
    FAT = 3
    MUSCLE = 4
    LUNG = 5
    VESSEL = 6
    HEART = 7
    MEDIASTINUM = 8
    CORTICAL_BONE = 9
    MARROW = 10
    AIRWAY = 11
    LIVER = 12
    CSF = 13
    DISC = 14
    GROUND_GLASS = 15
    NODULE = 16
    OUTSIDE_FOV = 17
    CONSOLIDATION = 18
    ATELECTASIS = 19


# Noise-free HU range of each tissue, as in real CT. The phantom draws every tissue's values inside its range.
TISSUE_HU: dict[Tissue, tuple[float, float]] = {
    Tissue.AIR: (-1000, -1000),
    Tissue.TABLE: (-200, 200),
    Tissue.SKIN: (20, 60),
    Tissue.FAT: (-120, -80),
    Tissue.MUSCLE: (35, 60),
    Tissue.LUNG: (-900, -700),
    Tissue.VESSEL: (35, 45),
    Tissue.HEART: (35, 50),
    Tissue.MEDIASTINUM: (-110, -60),
    Tissue.CORTICAL_BONE: (700, 1500),
    Tissue.MARROW: (300, 400),
    Tissue.AIRWAY: (-1000, -950),
    Tissue.LIVER: (50, 65),
    Tissue.CSF: (0, 15),
    Tissue.DISC: (70, 100),
    Tissue.GROUND_GLASS: (-600, -300),
    Tissue.NODULE: (20, 60),
    Tissue.OUTSIDE_FOV: (SCANNER_FLOOR_HU, SCANNER_FLOOR_HU),
    Tissue.CONSOLIDATION: (-100, 40),
    Tissue.ATELECTASIS: (-250, -50),
}


# tissues of the lung parenchyma with whatever it holds (findings, pulmonary vessels)
LUNG_TISSUES = (Tissue.LUNG, Tissue.GROUND_GLASS, Tissue.CONSOLIDATION, Tissue.ATELECTASIS, Tissue.VESSEL,
                Tissue.NODULE)

# The segmentation labels of a scan (value = index, 0 = background) and, per label, the drawn structure and the
# tissues it holds in the final slice. Listed in drawing order: where structures overlap, the later one is
# what the slice shows, and its label wins.
ORGAN_LABELS: tuple[str, ...] = (
    "background", "lung_left", "lung_right", "liver", "heart", "aorta", "airway", "spine", "rib", "sternum",
)  # fmt: skip
_LABEL_TISSUES: dict[str, tuple[str | None, tuple[Tissue, ...]]] = {
    "lung_left": ("lung_left", LUNG_TISSUES),
    "lung_right": ("lung_right", LUNG_TISSUES),
    "liver": (None, (Tissue.LIVER,)),
    "heart": ("heart", (Tissue.HEART,)),
    "aorta": ("aorta", (Tissue.VESSEL,)),
    "airway": ("airway", (Tissue.AIRWAY,)),  # lumen of the trachea and bronchi
    "spine": ("spine", (Tissue.CORTICAL_BONE, Tissue.MARROW, Tissue.DISC)),  # bodies, discs, arches, processes
    "rib": ("rib", (Tissue.CORTICAL_BONE, Tissue.MARROW)),
    "sternum": ("sternum", (Tissue.CORTICAL_BONE,)),
}


def organ_label_map(tissue: np.ndarray, structures: dict[str, np.ndarray]) -> np.ndarray:
    """The (Y, X) uint8 label map of a rendered slice, values indexing :data:`ORGAN_LABELS`: each structure's
    pixels that still show its tissue, so a label never covers what a later stroke drew over it."""
    labels = np.zeros(tissue.shape, np.uint8)
    for value, name in enumerate(ORGAN_LABELS[1:], start=1):
        structure, tissues = _LABEL_TISSUES[name]
        mask = np.isin(tissue, tissues)
        if structure is not None:
            mask &= structures[structure]
        labels[mask] = value
    return labels


@dataclass
class SyntheticCT:
    """One generated scan: HU and tissue volumes of shape (Z, Y, X), spacing (dz, dy, dx) in mm, LPS origin."""

    hu: np.ndarray  # (Z, Y, X) int16, Hounsfield units
    tissue: np.ndarray  # (Z, Y, X) uint8, Tissue labels before blur and noise
    labels: np.ndarray  # (Z, Y, X) uint8, organ labels (ORGAN_LABELS) on the same grid
    spacing: tuple[float, float, float]  # (slice, row, column) spacing in mm
    origin: tuple[float, float, float]  # LPS position in mm of voxel (0, 0, 0)
    has_lesions: bool


@dataclass
class _Tubes:
    """Points sampled along tubular structures: centres (N, 3) in normalised units, radii (N,)."""

    points: np.ndarray
    radii: np.ndarray

    @staticmethod
    def from_polylines(polylines: list[tuple[np.ndarray, float]], step: float) -> "_Tubes":
        """Sample every segment of every polyline at most ``step`` apart."""
        starts = np.concatenate([line[:-1] for line, _ in polylines])  # (S, 3)
        ends = np.concatenate([line[1:] for line, _ in polylines])
        seg_radii = np.concatenate([np.full(len(line) - 1, r) for line, r in polylines])
        return _Tubes.from_segments(starts, ends, seg_radii, step)

    @staticmethod
    def from_segments(starts: np.ndarray, ends: np.ndarray, seg_radii: np.ndarray, step: float) -> "_Tubes":
        """Sample segments ``starts`` -> ``ends`` (S, 3) of radii (S,) at most ``step`` apart."""
        counts = np.maximum(2, np.ceil(np.linalg.norm(ends - starts, axis=1) / step).astype(int) + 1)
        seg = np.repeat(np.arange(len(starts)), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        frac = ((np.arange(len(seg)) - first) / (counts[seg] - 1))[:, None]
        return _Tubes(starts[seg] + frac * (ends[seg] - starts[seg]), seg_radii[seg])


class ChestPhantom:
    """One synthetic patient. ``render`` draws axial slices at any z (normalised units) of this patient.

    Args:
        rng: source of every random choice; the same generator state gives the same patient.
        size: matrix size in pixels (square slices).
        lesions: whether the lungs carry COVID-19-like pneumonia (the positive class of the demo task):
            ground-glass opacities in the periphery, more posterior, of a per-patient extent from mild to
            extensive, with consolidation in their densest parts for some patients. Whatever ``lesions``, some
            patients have dependent atelectasis (a dense posterior subpleural band at the bases) and 0-2 solid
            nodules: findings that are not the target and must not be taken for it.
    """

    def __init__(self, rng: np.random.Generator, size: int, lesions: bool = False) -> None:
        self.rng = rng
        self.size = size
        self.lesions = lesions
        u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
        # body outline: an ellipse resting on the table, with low-frequency shape variation
        self.table_y = u(0.80, 0.88)
        self.body_a = u(0.66, 0.86)
        self.body_b = self.body_a * u(0.60, 0.78)
        self.body_cy = self.table_y - self.body_b - 0.02
        self.shape_coef = [(k, u(0.0, 0.035), u(0, 2 * np.pi)) for k in (2, 3, 4)]
        self.fat = u(0.03, 0.12)
        self.muscle = u(0.04, 0.08)
        self.chest_len = 1.7 * self.body_a  # craniocaudal extent of the lungs, diaphragm (t=0) to apex (t=1)
        # lungs: one ellipse per side, sized from the thoracic cavity
        self.lung_ax = u(0.38, 0.46)
        self.lung_ay = u(0.72, 0.85)
        self.lung_cx = u(0.47, 0.55)
        self.lung_density = u(-870, -820)
        self.heart = np.array([u(0.08, 0.18), u(-0.25, -0.1), u(0.12, 0.25)])  # (x/a, y/b, t)
        self.heart_axes = np.array([u(0.30, 0.38), u(0.38, 0.48), u(0.22, 0.30)])  # (x/a, y/b, t)
        self.spine_r = u(0.09, 0.12)
        self.level_height = u(0.10, 0.13)
        self.level_phase = u(0, 1)
        self.hu = {t: u(*TISSUE_HU[t]) for t in Tissue}
        self.vessels = self._vessel_tree()
        self.ribs = self._ribs()
        self.aorta = self._aorta()
        self.airways = self._airways()
        self.nodules = [(self._random_lung_point(), u(0.015, 0.04)) for _ in range(int(rng.integers(0, 3)))]
        self.ggo_field = self._smooth_field(4.0)
        self.ggo_level = u(-0.5, 0.6)  # threshold of the unit-variance field: extent ~70 % to ~27 % of the band
        self.consolidation = bool(rng.random() < 0.4)
        self.atelectasis = u(0.0, 0.035) if rng.random() < 0.35 else 0.0  # band thickness (normalised), or none
        self.texture = self._smooth_field(1.5)

    # --- geometry helpers (normalised units) -------------------------------------------------------------
    def _t(self, z: float) -> float:
        return z / self.chest_len

    def _cavity_scale(self) -> tuple[float, float]:
        wall = self.fat + self.muscle
        return self.body_a - wall, self.body_b - wall

    def _lung_centre(self, side: int) -> tuple[float, float]:
        ca, cb = self._cavity_scale()
        return side * self.lung_cx * ca, self.body_cy + 0.05 * cb

    def _lung_axes(self, t: float) -> tuple[float, float]:
        ca, cb = self._cavity_scale()
        s = np.sqrt(np.clip(1 - ((t - 0.35) / 0.68) ** 2, 0.0, 1.0))
        return self.lung_ax * ca * s, self.lung_ay * cb * s

    def _random_lung_point(self) -> np.ndarray:
        side = self.rng.choice([-1, 1])
        t = self.rng.uniform(0.2, 0.8)
        cx, cy = self._lung_centre(side)
        ax, ay = self._lung_axes(t)
        r, phi = np.sqrt(self.rng.uniform(0, 0.5)), self.rng.uniform(0, 2 * np.pi)
        return np.array([cx + r * ax * np.cos(phi), cy + r * ay * np.sin(phi), t * self.chest_len])

    def _smooth_field(self, cycles: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Random 3D cosine field of a few low frequencies: (freqs (K, 3), phases (K,), amplitudes (K,))."""
        k = 12
        freqs = self.rng.normal(0, cycles, size=(k, 3))
        return freqs, self.rng.uniform(0, 2 * np.pi, k), self.rng.uniform(0.5, 1.0, k)

    @staticmethod
    def _eval_field(field, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
        freqs, phases, amps = field
        out = np.zeros_like(x)
        for f, p, a in zip(freqs, phases, amps):
            out += a * np.cos(f[0] * x + f[1] * y + f[2] * z + p)
        return out / np.sqrt((amps**2).sum() / 2)

    def _vessel_tree(self) -> _Tubes:
        """Pulmonary vessels: a branching tree per lung, rooted at the hilum, grown one generation at a time."""
        starts, ends, radii = [], [], []
        for side in (-1, 1):
            cx, cy = self._lung_centre(side)
            root = np.array([cx - side * 0.25 * self.lung_ax, cy - 0.05, 0.45 * self.chest_len])
            # one trunk per direction from the hilum, upwards to downwards; each branch splits in two
            direction = np.array([[side * 0.6, 0.0, dz] for dz in (0.9, 0.4, 0.0, -0.4, -0.9)])  # (B, 3)
            start = np.repeat(root[None], len(direction), axis=0)
            length, radius = 0.14, 0.03
            for _ in range(9):
                ax, ay = self._lung_axes(self._t(start[:, 2]))  # (B,) each
                inward = np.zeros_like(start)
                inside = ax > 0
                inward[inside, 0] = (cx - start[inside, 0]) / ax[inside]
                inward[inside, 1] = (cy - start[inside, 1]) / ay[inside]
                direction = direction + self.rng.normal(0, 0.5, start.shape) + 0.6 * inward
                direction /= np.linalg.norm(direction, axis=1, keepdims=True)
                end = start + length * direction
                starts.append(start)
                ends.append(end)
                radii.append(np.full(len(start), radius))
                start, direction = np.repeat(end, 2, axis=0), np.repeat(direction, 2, axis=0)
                length, radius = length * 0.8, max(radius * 0.78, 0.006)
        return _Tubes.from_segments(np.concatenate(starts), np.concatenate(ends), np.concatenate(radii),
                                    step=0.5 / self.size)

    def _ribs(self) -> _Tubes:
        """Twelve rib pairs hugging the chest wall, sloping down from the spine to the front."""
        lines = []
        wall = self.fat + 0.5 * self.muscle
        phi = np.linspace(0.05, 0.8 * np.pi, 40)  # 0 = posterior midline
        for k in range(12):
            t0 = 1.0 - k / 11 * 1.05
            for side in (-1, 1):
                x = side * (self.body_a - wall) * np.sin(phi)
                y = self.body_cy + (self.body_b - wall) * np.cos(phi)
                z = (t0 - 0.25 * (1 - np.cos(phi)) / 2) * self.chest_len
                lines.append((np.stack([x, y, z], axis=1), 0.022))
        return _Tubes.from_polylines(lines, step=0.5 / self.size)

    def _aorta(self) -> _Tubes:
        cb = self._cavity_scale()[1]
        ys = self.body_cy + 0.45 * cb  # beside the spine
        pts = np.array(
            [
                [0.05, self.body_cy - 0.15 * cb, 0.20],
                [0.04, self.body_cy - 0.12 * cb, 0.70],
                [0.08, self.body_cy + 0.15 * cb, 0.80],
                [0.12, ys, 0.72],
                [0.12, ys, -0.30],
            ]
        )
        pts[:, 2] *= self.chest_len
        return _Tubes.from_polylines([(pts, 0.065)], step=0.5 / self.size)

    def _airways(self) -> _Tubes:
        cb = self._cavity_scale()[1]
        carina = np.array([0.0, self.body_cy + 0.1 * cb, 0.55 * self.chest_len])
        top = np.array([0.0, self.body_cy + 0.05 * cb, 1.3 * self.chest_len])
        lines = [(np.stack([top, carina]), 0.055)]
        for side in (-1, 1):
            cx, cy = self._lung_centre(side)
            hilum = np.array([cx - side * 0.2 * self.lung_ax, cy, 0.42 * self.chest_len])
            lines.append((np.stack([carina, hilum]), 0.035))
        return _Tubes.from_polylines(lines, step=0.5 / self.size)

    # --- rendering -----------------------------------------------------------------------------------------
    def _stamp_tubes(self, tubes: _Tubes, z: float, scale: float = 1.0) -> np.ndarray:
        """Boolean (Y, X) cross-section at height z of tubes whose radii are multiplied by ``scale``."""
        mask = np.zeros((self.size, self.size), bool)
        radii = tubes.radii * scale
        sel = np.abs(tubes.points[:, 2] - z) < radii
        if not sel.any():
            return mask
        half = self.size / 2
        pts = tubes.points[sel]
        r_px = np.maximum(np.sqrt(radii[sel] ** 2 - (pts[:, 2] - z) ** 2) * half, 0.5)
        cols = np.clip(np.round((pts[:, 0] + 1) * half - 0.5).astype(int), 0, self.size - 1)
        rows = np.clip(np.round((pts[:, 1] + 1) * half - 0.5).astype(int), 0, self.size - 1)
        # each pixel joins the tube of its nearest centre when it lies within that centre's radius
        k = int(np.ceil(r_px.max())) + 1
        r0, c0 = max(rows.min() - k, 0), max(cols.min() - k, 0)
        r1, c1 = min(rows.max() + k + 1, self.size), min(cols.max() + k + 1, self.size)
        radius = np.zeros((r1 - r0, c1 - c0))
        np.maximum.at(radius, (rows - r0, cols - c0), r_px)
        dist, (ir, ic) = ndimage.distance_transform_edt(radius == 0, return_indices=True)
        mask[r0:r1, c0:c1] = dist <= radius[ir, ic]
        return mask

    def render(self, z: float) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """The noise-free axial slice at height z: HU float32 (Y, X), tissue uint8 (Y, X), and boolean (Y, X)
        masks of the named structures as drawn, before later strokes (heart, aorta, vertebra (body), rib,
        sternum, airway, lung_left, lung_right, spine), for the organ patches and :func:`organ_label_map`."""
        n = self.size
        coords = (np.arange(n) + 0.5) / n * 2 - 1
        y, x = np.meshgrid(coords, coords, indexing="ij")  # (Y, X)
        t = self._t(z)
        tissue = np.full((n, n), Tissue.AIR, np.uint8)

        # table and body layers
        tissue[(y > self.table_y) & (y < self.table_y + 0.03) & (np.abs(x) < 0.95)] = Tissue.TABLE
        theta = np.arctan2(y - self.body_cy, x)
        wobble = 1 + sum(c * np.cos(k * theta + p) for k, c, p in self.shape_coef)
        rho = np.sqrt((x / self.body_a) ** 2 + ((y - self.body_cy) / self.body_b) ** 2) / wobble
        depth = (1 - rho) * self.body_b  # approximate distance inside the skin
        tissue[depth > 0] = Tissue.SKIN
        tissue[depth > 0.012] = Tissue.FAT
        tissue[depth > self.fat] = Tissue.MUSCLE
        cavity = depth > self.fat + self.muscle
        tissue[cavity] = Tissue.MEDIASTINUM

        # below the diaphragm: liver on the right (x < 0), soft tissue elsewhere
        lungs = np.zeros((n, n), bool)
        left_lung = np.zeros((n, n), bool)  # the patient's left: x > 0 (image columns run right to left)
        for side in (-1, 1):
            cx, cy = self._lung_centre(side)
            ax, ay = self._lung_axes(t)
            if ax <= 0:
                continue
            r2 = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
            dome = 0.12 * (1 - np.clip(r2, 0, 1)) - 0.06
            inside = cavity & (r2 < 1)
            lungs |= inside & (t > dome)
            if side > 0:
                left_lung = inside & (t > dome)
            tissue[inside & (t <= dome)] = Tissue.LIVER if side < 0 else Tissue.MUSCLE
        if t < 0.02:
            ca, cb = self._cavity_scale()
            liver = cavity & ((x + 0.3 * ca) ** 2 / (0.7 * ca) ** 2 + (y - self.body_cy) ** 2 / cb**2 < 1)
            tissue[liver & ~lungs] = Tissue.LIVER

        # heart: an ellipsoid in front of the spine, slightly to the left
        ca, cb = self._cavity_scale()
        hx, hy, ht = self.heart
        e = ((x - hx * ca) / (self.heart_axes[0] * ca)) ** 2 + ((y - self.body_cy - hy * cb) / (self.heart_axes[1] * cb)) ** 2
        e = e + ((t - ht) / self.heart_axes[2]) ** 2
        heart = cavity & (e < 1)
        lungs &= ~(cavity & (e < 1.25))
        tissue[lungs] = Tissue.LUNG
        tissue[heart] = Tissue.HEART

        # findings: pneumonia in the lung periphery (the target), dependent atelectasis, nodules anywhere
        edge = ndimage.distance_transform_edt(lungs) if lungs.any() else np.zeros((n, n))
        if self.lesions and lungs.any():
            periph = lungs & (edge < 0.2 * n)
            posterior = np.clip((y[periph] - self.body_cy) / self.body_b, -1, 1)  # -1 front .. 1 back
            field = self._eval_field(self.ggo_field, x[periph], y[periph], z) + 0.5 * posterior
            ggo, dense = np.zeros_like(periph), np.zeros_like(periph)
            ggo[periph] = field > self.ggo_level
            dense[periph] = field > self.ggo_level + 1.2
            tissue[ggo] = Tissue.GROUND_GLASS
            if self.consolidation:
                tissue[dense] = Tissue.CONSOLIDATION
        if self.atelectasis and t < 0.45 and lungs.any():
            _, cy = self._lung_centre(1)
            band = lungs & (edge < self.atelectasis * n) & (y > cy + 0.2 * self._lung_axes(t)[1])
            tissue[band] = Tissue.ATELECTASIS
        for centre, radius in self.nodules:
            dz = z - centre[2]
            if abs(dz) < radius:
                r = np.sqrt(radius**2 - dz**2)
                tissue[lungs & ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 < r**2)] = Tissue.NODULE

        tissue[lungs & self._stamp_tubes(self.vessels, z)] = Tissue.VESSEL
        aorta = cavity & ~lungs & self._stamp_tubes(self.aorta, z)
        tissue[aorta] = Tissue.VESSEL
        airway_wall = self._stamp_tubes(self.airways, z, 1.25)
        tissue[cavity & airway_wall] = Tissue.MUSCLE
        airway = cavity & self._stamp_tubes(self.airways, z)
        tissue[airway] = Tissue.AIRWAY

        # spine: vertebral bodies and discs, canal, spinous process
        sy = self.body_cy + 0.62 * cb
        level = (t * self.chest_len / self.level_height + self.level_phase) % 1.0
        body = (x / self.spine_r) ** 2 + ((y - sy) / (0.85 * self.spine_r)) ** 2
        canal = (x / (0.45 * self.spine_r)) ** 2 + ((y - sy - 1.45 * self.spine_r) / (0.45 * self.spine_r)) ** 2
        process = (np.abs(x) < 0.25 * self.spine_r) & (y > sy + 1.4 * self.spine_r) & (y < sy + 2.8 * self.spine_r)
        arch = (x / (0.8 * self.spine_r)) ** 2 + ((y - sy - 1.45 * self.spine_r) / (0.75 * self.spine_r)) ** 2
        if level < 0.2:
            tissue[body < 1] = Tissue.DISC
        else:
            tissue[body < 1] = Tissue.CORTICAL_BONE
            tissue[body < 0.7] = Tissue.MARROW
        tissue[((arch < 1) | process) & (canal >= 1) & (body >= 1)] = Tissue.CORTICAL_BONE
        tissue[canal < 1] = Tissue.CSF

        # ribs (cortex and marrow) and sternum
        ribs = self._stamp_tubes(self.ribs, z) & (depth > 0)
        tissue[ribs] = Tissue.CORTICAL_BONE
        tissue[self._stamp_tubes(self.ribs, z, 0.55) & (depth > 0)] = Tissue.MARROW
        sternum = np.zeros_like(ribs)
        if 0.15 < t < 0.9:
            sy_front = self.body_cy - self.body_b + self.fat + 0.5 * self.muscle
            sternum = (x / 0.07) ** 2 + ((y - sy_front) / 0.025) ** 2 < 1
            tissue[sternum] = Tissue.CORTICAL_BONE

        structures = {"heart": heart, "aorta": aorta, "vertebra": body < 1, "rib": ribs, "sternum": sternum,
                      "airway": airway, "lung_left": lungs & left_lung, "lung_right": lungs & ~left_lung,
                      "spine": (body < 1) | (((arch < 1) | process) & (canal >= 1))}

        # scanner: the reconstruction circle
        tissue[x**2 + y**2 > 1.0] = Tissue.OUTSIDE_FOV

        hu = np.empty((n, n), np.float32)
        for label in Tissue:
            hu[tissue == label] = self.hu[label]
        # parenchymal texture and the denser dependent (posterior) lung, kept inside the lung range
        lung = tissue == Tissue.LUNG
        if lung.any():
            tex = self._eval_field(self.texture, x[lung], y[lung], z)
            lo, hi = TISSUE_HU[Tissue.LUNG]
            hu[lung] = np.clip(self.lung_density + 25 * tex + 60 * np.clip(y[lung] - self.body_cy, 0, None), lo, hi)
        ggo = tissue == Tissue.GROUND_GLASS
        if ggo.any():
            lo, hi = TISSUE_HU[Tissue.GROUND_GLASS]
            tex = self._eval_field(self.texture, x[ggo], y[ggo], 3 * z)
            hu[ggo] = np.clip(self.hu[Tissue.GROUND_GLASS] + 120 * tex, lo, hi)
        return hu, tissue, structures


class Scanner:
    """Acquisition of one scan: pixel and slice spacing, blur and noise, drawn from ``rng``."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng = rng
        # a chest field of view of 317-400 mm whatever the matrix (0.62-0.78 mm pixels at 512)
        self.pixel_mm = float(np.round(rng.uniform(0.62, 0.78) * 512 / size, 4))
        self.slice_mm = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0]))
        self.half_mm = size * self.pixel_mm / 2  # millimetres per normalised unit
        self.noise_sd = rng.uniform(8, 20)
        self.blur = rng.uniform(0.5, 0.9)

    def acquire(self, phantom: "ChestPhantom", z: float) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(HU int16 (Y, X) with blur and noise, tissue (Y, X), structure masks) of the slice at z."""
        clean, tissue, structures = phantom.render(z)
        noisy = ndimage.gaussian_filter(clean, self.blur) + self.rng.normal(0, self.noise_sd, clean.shape)
        noisy[tissue == Tissue.OUTSIDE_FOV] = SCANNER_FLOOR_HU
        return np.clip(np.round(noisy), SCANNER_FLOOR_HU, 3071).astype(np.int16), tissue, structures


def generate_patient(
    seed: int | np.random.SeedSequence,
    size: int = 256,
    n_slices: int = 40,
    lesions: bool | None = None,
) -> SyntheticCT:
    """Generate one chest CT: slice spacing 1-3 mm, pixel spacing 0.6-0.9 mm, blur and noise.

    Args:
        seed: the patient's seed; the same seed gives the same scan, voxel for voxel.
        size: matrix size (pixels per row and column).
        n_slices: number of axial slices; the scan covers a random part of the chest.
        lesions: force ground-glass lesions on or off; ``None`` draws them with probability 0.5.
    """
    rng = np.random.default_rng(seed)
    if lesions is None:
        lesions = bool(rng.random() < 0.5)
    phantom = ChestPhantom(rng, size, lesions=lesions)
    scanner = Scanner(rng, size)
    dz = scanner.slice_mm / scanner.half_mm  # slice spacing in normalised units
    lo, hi = -0.1 * phantom.chest_len, 1.05 * phantom.chest_len
    z0 = rng.uniform(lo, max(lo, hi - (n_slices - 1) * dz))
    hu = np.empty((n_slices, size, size), np.int16)
    tissue = np.empty((n_slices, size, size), np.uint8)
    labels = np.empty((n_slices, size, size), np.uint8)
    for k in range(n_slices):
        hu[k], tissue[k], structures = scanner.acquire(phantom, z0 + k * dz)
        labels[k] = organ_label_map(tissue[k], structures)
    corner = -scanner.half_mm + scanner.pixel_mm / 2
    origin = (corner, corner, float(np.round(z0 * scanner.half_mm, 3)))
    return SyntheticCT(hu, tissue, labels, (scanner.slice_mm, scanner.pixel_mm, scanner.pixel_mm), origin, lesions)
