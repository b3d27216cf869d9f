"""The embedded demo collection: synthetic chest CT written in the formats real data comes in.

``make_demo_data`` writes, deterministically from one seed:

- ``nifti/<patient>.nii.gz``: the pre-training pool, the generator's own HU volumes, and
  ``labels/<patient>.nii.gz`` their organ label maps on the same grid and affine, with ``datalist.json``
  listing both (patient-level training/validation/test split) and the label names;
- ``dicom/``: the first of those scans again as a LIDC-IDRI-like tree ``<patient>/<study>/<series>/1-NNN.dcm``
  (three stored-value encodings across patients; what ``prepare-dicom`` must turn back into the NIfTI volumes)
  and one DX radiograph series that CT preparation must skip;
- ``covid_ct/``: binary slice classification in the UCSD COVID-CT layout (a folder per class and split files);
- ``organ_mnist.npz``: 28 x 28 organ and tissue patches in the MedMNIST layout, 11 classes like OrganSMNIST.

How labels are made is in ``LABELS``, also written to ``README.md`` in the output folder.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from medssl_monai.data import dicom
from medssl_monai.data.nifti import lps_affine, write_ct_nifti, write_label_nifti
from medssl_monai.data.synthetic import LUNG_TISSUES, ORGAN_LABELS, ChestPhantom, Scanner, Tissue, generate_patient
from medssl_monai.data.transforms import HU_WINDOWS, PNG_HU_OFFSET
from medssl_monai.utils import atomic_path, worker_pool, write_json

__all__ = ["make_demo_data", "ensure_demo_data", "demo_data_version", "DEMO_VERSION", "ORGAN_CLASSES", "COVID_CLASSES",
           "ORGAN_WINDOW"]

logger = logging.getLogger(__name__)

DEMO_VERSION = 4  # of the generator's output: 2 = learnable COVID-like task, 5,376-slice pool, 128 px; 3 = organ
# label volumes and a test split of the pool (its images, the classification sets and pre-training's "training"
# list unchanged); 4 = organ patches in the lung window, pre-training's (everything else unchanged)

INCOMPLETE = ".demo_incomplete"  # present while a collection is being written
ORGAN_WINDOW = HU_WINDOWS["lung"]  # HU range mapped to 0..255 in the organ patches: pre-training's window
COVID_CLASSES = ("NonCOVID", "COVID")  # label 0, label 1
ORGAN_CLASSES = (
    "heart", "aorta", "vertebra", "rib", "sternum", "airway", "lung", "pulmonary_vessel", "muscle", "fat", "liver",
)  # fmt: skip
ENCODINGS = ("unsigned", "padded", "signed")
# the public COVID-CT set's split: 425 / 118 / 203 images
COVID_SPLIT = (118 / 746, 203 / 746)

LABELS = """\
## How the labels are made

**covid_ct** (binary, label 1 = `COVID`): each image is one axial slice, taken between 15% and 85% of the
chest's height, of its own synthetic patient (two images per patient, both in one split; 424 / 118 / 204
images by default, like the public COVID-CT set's 425 / 118 / 203). Patients of class `COVID` have
COVID-19-like pneumonia: ground-glass opacities (-600..-300 HU, textured) in the outer 20% of the lung, more
often posterior, shaped by a smooth random field whose threshold sets a per-patient extent from mild to
extensive, and in 40% of them consolidation (-100..40 HU) in the densest parts; a positive slice shows
pneumonia in at least 5% of its lung. Both classes share everything else: anatomy, 0 to 2 solid nodules,
dependent atelectasis at the bases (-250..-50 HU, a posterior subpleural band, in about a third of the
patients), dependent lung density, noise and blur, so neither mean intensity nor body size separates the
classes, and a dense posterior band is not the finding: the model has to learn peripheral ground glass.

**labels/** (organ segmentation of the pool's scans, uint8 NIfTI on each HU volume's grid and affine; names
under `labels` in `datalist.json`): 0 background, 1 lung_left, 2 lung_right (the parenchyma with whatever it
holds: vessels, findings), 3 liver, 4 heart, 5 aorta, 6 airway (lumen of the trachea and bronchi), 7 spine
(vertebral bodies, discs, arches and processes; the canal is background), 8 rib, 9 sternum. A label covers the
pixels of its structure that show its tissue in the noise-free phantom, before blur and noise, so labels
follow what was drawn last where structures meet. Pre-training reads only the images of `training`;
`validation` and `test` (10 % of the patients each) are never pre-trained on.

**organ_mnist.npz** (11 classes, MedMNIST layout): 28 x 28 patches centred (jitter +-3 pixels) on a random
pixel of one structure, with a random field of view (18-30% of the scan's), the lung window (-1350..150 HU, the
window of pre-training and of the COVID-like task) mapped to 0..255, so bone and marrow are saturated white.
Classes: heart, aorta, vertebra, rib, sternum, airway, lung (parenchyma, no vessel at the centre), pulmonary
vessel, muscle, fat, liver. Heart, aorta, muscle and liver share soft-tissue HU; vertebra, rib and sternum
share bone HU; lung, airway and pulmonary vessel share the lung's surroundings: classes differ by shape
and context, not by intensity.
"""


def _png16(path: Path, hu: np.ndarray) -> None:
    """Write a (Y, X) HU slice as a 16-bit PNG holding HU + 1024."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.clip(hu.astype(np.int32) + PNG_HU_OFFSET, 0, 65535).astype(np.uint16)).save(tmp, format="PNG")


def _patient(args: tuple[Path, np.random.SeedSequence, int, int, int, bool]) -> dict:
    """Generate patient ``index``: its NIfTI volume and, with ``with_dicom``, its DICOM series (and a
    radiograph for patient 0)."""
    out, seed, index, size, n_slices, with_dicom = args
    pid = f"DEMO-{index:04d}"
    ct = generate_patient(seed, size=size, n_slices=n_slices)
    affine = lps_affine((1, 0, 0, 0, 1, 0), ct.origin, ct.spacing)
    nifti = out / "nifti" / f"{pid}.nii.gz"
    write_ct_nifti(nifti, ct.hu, affine)
    label = out / "labels" / f"{pid}.nii.gz"
    write_label_nifti(label, ct.labels, affine)
    entry = {"image": os.path.relpath(nifti, out), "label": os.path.relpath(label, out)}
    if not with_dicom:
        return entry
    study = dicom.uid_from(seed.entropy, index, "study")
    series = dicom.uid_from(seed.entropy, index, "series")
    study_dir = out / "dicom" / pid / f"01-01-2000-NA-CT CHEST-{index + 1:05d}"
    series_dir = study_dir / f"{3000000 + index}.000000-NA-{index + 10:05d}"
    dicom.write_ct_series(
        series_dir, ct.hu, ct.spacing, ct.origin, pid, study, series, encoding=ENCODINGS[index % len(ENCODINGS)]
    )
    if index == 0:  # a chest radiograph in the same study: Modality DX, to be skipped by CT preparation
        projection = (ct.hu.astype(np.float32) + 1024).clip(0).mean(axis=1)  # (Z, X)
        image = (projection / projection.max() * 4095).astype(np.uint16)
        dicom.write_radiograph(study_dir / "1.000000-NA-XRAY" / "1-1.dcm", image, pid, study, dicom.uid_from(series, "dx"))
    return entry


def _covid_pair(args: tuple[np.random.SeedSequence, int, bool]) -> list[np.ndarray]:
    """Two (Y, X) HU slices of one synthetic patient, with ground-glass lesions when ``positive``."""
    seed, size, positive = args
    rng = np.random.default_rng(seed)
    slices: list[np.ndarray] = []
    while len(slices) < 2:
        # a new patient when this one shows no lesion in 20 tries (its lesion field may miss the lung)
        slices.clear()
        phantom = ChestPhantom(rng, size, lesions=positive)
        scanner = Scanner(rng, size)
        for _ in range(20):
            t = rng.uniform(0.15, 0.85)
            hu, tissue, _ = scanner.acquire(phantom, t * phantom.chest_len)
            lung = np.isin(tissue, LUNG_TISSUES).sum()
            pneumonia = np.isin(tissue, [Tissue.GROUND_GLASS, Tissue.CONSOLIDATION]).sum()
            if lung > 0.02 * size**2 and (not positive or pneumonia > 0.05 * lung):
                slices.append(hu)
                if len(slices) == 2:
                    break
    return slices


def _organ_patches(args: tuple[np.random.SeedSequence, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Patches (N, 28, 28) uint8 and labels (N,) from a few slices of one synthetic patient."""
    seed, size, per_class = args
    rng = np.random.default_rng(seed)
    phantom = ChestPhantom(rng, size, lesions=False)
    scanner = Scanner(rng, size)
    images, labels = [], []
    counts = np.zeros(len(ORGAN_CLASSES), int)
    # two low slices show the liver, two mid-low ones the heart, the rest anywhere in the chest
    for t in [-0.06, -0.02, 0.15, 0.25, *rng.uniform(0.05, 0.9, size=4)]:
        hu, tissue, structures = scanner.acquire(phantom, t * phantom.chest_len)
        masks = dict(structures)
        masks["lung"] = tissue == Tissue.LUNG
        masks["pulmonary_vessel"] = (tissue == Tissue.VESSEL) & ~structures["aorta"]
        masks["muscle"] = tissue == Tissue.MUSCLE
        masks["fat"] = tissue == Tissue.FAT
        masks["liver"] = tissue == Tissue.LIVER
        for label, name in enumerate(ORGAN_CLASSES):
            rows, cols = np.nonzero(masks[name])
            for i in rng.integers(len(rows), size=min(3, per_class - counts[label])) if len(rows) else []:
                centre = np.array([rows[i], cols[i]]) + rng.integers(-3, 4, size=2)
                half = int(rng.uniform(0.09, 0.15) * size)
                padded = np.pad(hu, half, constant_values=-1024)
                crop = padded[centre[0] : centre[0] + 2 * half, centre[1] : centre[1] + 2 * half].astype(np.float32)
                patch = ndimage.zoom(crop, 28 / crop.shape[0], order=1)[:28, :28]
                lo, hi = ORGAN_WINDOW
                images.append(np.clip((patch - lo) / (hi - lo) * 255, 0, 255).round().astype(np.uint8))
                labels.append(label)
                counts[label] += 1
    return np.asarray(images, np.uint8).reshape(-1, 28, 28), np.asarray(labels, np.int64)


def _split(n: int, fractions: tuple[float, float], rng: np.random.Generator) -> list[str]:
    """Assign ``n`` items to train/val/test with the given val and test fractions, at least one in each."""
    n_val = max(1, round(fractions[0] * n))
    n_test = max(1, round(fractions[1] * n))
    names = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    return [names[i] for i in rng.permutation(n)]


def make_demo_data(
    out: str | os.PathLike,
    seed: int = 0,
    patients: int = 112,
    size: int = 128,
    slices: int = 48,
    covid_images: int = 746,
    organ_patches: int = 770,
    dicom_patients: int = 6,
    workers: int | None = None,
) -> Path:
    """Write the demo collection to ``out`` (see the module docstring) and return its path.

    Args:
        seed: everything is derived from it; the same seed and sizes give identical files.
        patients: number of pre-training CT scans (NIfTI): the unlabelled pool, ``patients x slices`` slices
            (5,376 by default; the 4,320 of its training split are over ten times the 424 labelled
            training images), findings present but unlabelled.
        size: in-plane matrix of every image (pixels); the organ patches are always 28 x 28.
        slices: axial slices per pre-training scan.
        covid_images: images in the binary set (two per synthetic patient, half of the patients positive), split
            by patient like the public COVID-CT set (425 / 118 / 203 of 746).
        organ_patches: patches in the organ set, balanced over the 11 classes, its patients split 60/10/30.
        dicom_patients: the first scans also written as DICOM series (for ``prepare-dicom``).
        workers: processes used; all cores by default.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).touch()  # until demo.json is written: a killed run's folder is known as ours
    root = np.random.SeedSequence(seed)
    ss_patients, ss_covid, ss_organ, ss_split = root.spawn(4)
    # one stream per part, so that the size of one part never changes the splits of another
    pool_rng, covid_rng, organ_rng = (np.random.default_rng(s) for s in ss_split.spawn(3))
    n_pairs = max(2, covid_images // 2)
    n_organ_sources = max(3, int(np.ceil(organ_patches / 40)))  # patients: at least one per split
    per_class = 2 * int(np.ceil(organ_patches / len(ORGAN_CLASSES) / n_organ_sources))
    with worker_pool(workers) as pool:
        volumes = pool.map(_patient, [(out, s, i, size, slices, i < dicom_patients)
                                      for i, s in enumerate(ss_patients.spawn(patients))])
        positive = covid_rng.permutation(np.arange(n_pairs) % 2 == 1)
        pairs = pool.map(_covid_pair, [(s, size, bool(p)) for s, p in zip(ss_covid.spawn(n_pairs), positive)])
        # organ patches are cut from scans of at least 256 px, then shrunk to 28 x 28 (as MedMNIST's from CT)
        organs = pool.map(_organ_patches, [(s, max(size, 256), per_class) for s in ss_organ.spawn(n_organ_sources)])
        volumes, pairs, organs = list(volumes), list(pairs), list(organs)

    # the pool's datalist, split by patient: pre-training reads "training" (images only); segmentation trains on
    # labelled "training" patients, selects on "validation" and reports on "test", which pre-training never sees
    n_held = max(min(2, len(volumes) - 1), round(0.2 * len(volumes)))  # a validation and a test patient at least
    held = pool_rng.permutation(len(volumes))[:n_held] if len(volumes) > 1 else []
    split = {int(i): "validation" if k < (len(held) + 1) // 2 else "test" for k, i in enumerate(held)}
    write_json(
        out / "datalist.json",
        {
            "labels": dict(enumerate(ORGAN_LABELS)),
            **{key: [v for i, v in enumerate(volumes) if split.get(i, "training") == key]
               for key in ("training", "validation", "test")},
        },
    )

    # COVID-CT layout: Images-processed/CT_<class>/*.png and Data-split/<class>/<split>CT_<class>.txt
    covid = out / "covid_ct"
    lists: dict[tuple[str, str], list[str]] = {(c, s): [] for c in COVID_CLASSES for s in ("train", "val", "test")}
    for j, (pair, split, pos) in enumerate(zip(pairs, _split(n_pairs, COVID_SPLIT, covid_rng), positive)):
        cls = COVID_CLASSES[int(pos)]
        for k, hu in enumerate(pair):
            name = f"demo_{j:04d}_{k}.png"
            _png16(covid / "Images-processed" / f"CT_{cls}" / name, hu)
            lists[cls, split].append(name)
    for (cls, split), names in lists.items():
        with atomic_path(covid / "Data-split" / cls / f"{split}CT_{cls}.txt") as tmp:
            tmp.write_text("".join(f"{n}\n" for n in names))

    # MedMNIST layout: one npz with train/val/test images (N, 28, 28) uint8, labels (N, 1) and the synthetic
    # patient of each patch (N,); split by patient, so that no patient's neighbouring patches are in two splits
    images = np.concatenate([o[0] for o in organs])
    labels = np.concatenate([o[1] for o in organs])
    patch_patients = np.concatenate([np.full(len(o[1]), i) for i, o in enumerate(organs)])
    per_label = organ_patches // len(ORGAN_CLASSES)
    keep = np.concatenate([organ_rng.permutation(np.nonzero(labels == c)[0])[:per_label]
                           for c in range(len(ORGAN_CLASSES))])
    keep = organ_rng.permutation(keep)
    patient_split = np.array(_split(len(organs), (0.1, 0.3), organ_rng))
    splits = patient_split[patch_patients[keep]]
    arrays = {}
    for split in ("train", "val", "test"):
        idx = keep[splits == split]
        arrays[f"{split}_images"] = images[idx]
        arrays[f"{split}_labels"] = labels[idx, None]
        arrays[f"{split}_patients"] = patch_patients[idx]
    with atomic_path(out / "organ_mnist.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    (out / "README.md").write_text(
        f"# medssl-monai demo data (seed {seed}, generator version {DEMO_VERSION})\n\nGenerated by "
        f"`medssl-monai demo-data`; see medssl_monai/data/demo.py.\n\n{LABELS}"
    )
    # written last: a complete collection, and what made it
    write_json(out / "demo.json", {"version": DEMO_VERSION, "seed": seed, "patients": patients, "size": size,
                                   "slices": slices, "covid_images": covid_images, "organ_patches": organ_patches,
                                   "dicom_patients": dicom_patients})
    (out / INCOMPLETE).unlink()
    return out


def demo_data_version(out: str | os.PathLike) -> tuple[int, int] | None:
    """(version that made the collection in ``out``, this generator's version), or None when ``out`` holds no
    complete collection (its ``demo.json`` is written last)."""
    marker = Path(out) / "demo.json"
    if not marker.is_file():
        return None
    return json.loads(marker.read_text()).get("version"), DEMO_VERSION


def ensure_demo_data(out: str | os.PathLike, **sizes) -> Path:
    """``out`` as :func:`make_demo_data` would write it now with ``sizes``: kept when its ``demo.json`` says so,
    else removed and generated again (missing, half-written, or made by another generator version). A folder
    with files but neither ``demo.json`` nor the mark of an interrupted generation is not a demo collection and
    is never removed (``FileExistsError``)."""
    out = Path(out)
    marker = out / "demo.json"
    found = json.loads(marker.read_text()) if marker.is_file() else {}
    defaults = {k: p.default for k, p in inspect.signature(make_demo_data).parameters.items() if k != "out"}
    wanted = {k: v for k, v in {**defaults, **sizes}.items() if k != "workers"}
    if found.get("version") == DEMO_VERSION and all(found.get(k) == v for k, v in wanted.items()):
        return out
    if out.exists() and not (marker.is_file() or (out / INCOMPLETE).is_file()) and any(out.iterdir()):
        raise FileExistsError(f"{out} holds files but no demo collection (no demo.json): not replacing it; give "
                              "an empty or new folder")
    state = "missing" if not out.exists() else f"of generator version {found.get('version')} or other sizes"
    logger.info(f"demo data {state}: generating version {DEMO_VERSION} in {out} (about a minute on 2 cores)")
    shutil.rmtree(out, ignore_errors=True)
    return make_demo_data(out, **sizes)
