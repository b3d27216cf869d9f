"""The synthetic phantom: HU of every tissue, determinism, geometry, and scan parameters."""

import numpy as np
import pytest
from scipy import ndimage

from medssl_monai.data.synthetic import (
    LUNG_TISSUES, ORGAN_LABELS, SCANNER_FLOOR_HU, TISSUE_HU, ChestPhantom, Tissue, generate_patient,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_free_hu_of_every_tissue_is_in_its_range(seed):
    phantom = ChestPhantom(np.random.default_rng(seed), 96, lesions=True)
    seen = set()
    for t in np.linspace(-0.05, 1.0, 12):
        hu, tissue, _ = phantom.render(t * phantom.chest_len)
        for label in np.unique(tissue):
            lo, hi = TISSUE_HU[Tissue(label)]
            values = hu[tissue == label]
            assert values.min() >= lo and values.max() <= hi, (Tissue(label).name, values.min(), values.max())
            seen.add(Tissue(label))
    # the anatomy is all there
    for needed in (Tissue.AIR, Tissue.FAT, Tissue.MUSCLE, Tissue.LUNG, Tissue.VESSEL, Tissue.HEART, Tissue.CORTICAL_BONE,
                   Tissue.MARROW, Tissue.TABLE, Tissue.LIVER, Tissue.AIRWAY, Tissue.GROUND_GLASS):
        assert needed in seen, needed.name


def test_reference_tissue_values_match_real_ct():
    assert TISSUE_HU[Tissue.AIR] == (-1000, -1000)
    assert TISSUE_HU[Tissue.LUNG] == (-900, -700)
    assert -120 <= np.mean(TISSUE_HU[Tissue.FAT]) <= -80
    assert TISSUE_HU[Tissue.CORTICAL_BONE][1] <= 1500 and TISSUE_HU[Tissue.MARROW][0] >= 300


def test_scan_is_deterministic_and_noisy_values_stay_near_tissue_means():
    a = generate_patient(5, size=64, n_slices=6)
    b = generate_patient(5, size=64, n_slices=6)
    assert np.array_equal(a.hu, b.hu) and a.spacing == b.spacing and a.origin == b.origin
    assert not np.array_equal(a.hu, generate_patient(6, size=64, n_slices=6).hu)
    assert a.hu.dtype == np.int16 and a.hu.shape == (6, 64, 64)
    assert 1.0 <= a.spacing[0] <= 3.0 and a.spacing[1] == a.spacing[2]
    assert 317 <= a.spacing[1] * 64 <= 400  # a chest field of view in mm, whatever the matrix
    assert a.hu.min() >= SCANNER_FLOOR_HU
    # away from its borders the lung keeps its HU under noise and blur
    ct = generate_patient(5, size=128, n_slices=4)
    lung = ndimage.binary_erosion(ct.tissue == Tissue.LUNG, structure=np.ones((1, 5, 5)))
    assert lung.sum() > 100
    assert -900 <= np.median(ct.hu[lung]) <= -700
    outside = a.tissue == Tissue.OUTSIDE_FOV
    assert np.all(a.hu[outside] == SCANNER_FLOOR_HU)


def test_lesions_only_when_asked():
    with_l = generate_patient(3, size=96, n_slices=12, lesions=True)
    without = generate_patient(3, size=96, n_slices=12, lesions=False)
    assert (without.tissue == Tissue.GROUND_GLASS).sum() == 0
    assert with_l.has_lesions and not without.has_lesions
    assert (without.tissue == Tissue.CONSOLIDATION).sum() == 0


def _base_slice(seed, lesions):
    phantom = ChestPhantom(np.random.default_rng(seed), 96, lesions=lesions)
    return phantom, phantom.render(0.25 * phantom.chest_len)[1]  # (Y, X) tissue of a slice near the bases


def test_pneumonia_only_in_the_positive_class_and_atelectasis_in_both():
    """Atelectasis is a dense posterior band that is not the target: it must occur whatever the label."""
    for lesions in (False, True):
        slices = [_base_slice(seed, lesions) for seed in range(16)]
        assert any((tissue == Tissue.ATELECTASIS).any() for _, tissue in slices), lesions
        pneumonia = [np.isin(tissue, [Tissue.GROUND_GLASS, Tissue.CONSOLIDATION]).any() for _, tissue in slices]
        assert any(pneumonia) if lesions else not any(pneumonia)
    consolidated = [tissue for phantom, tissue in (_base_slice(s, True) for s in range(16)) if phantom.consolidation]
    assert any((tissue == Tissue.CONSOLIDATION).any() for tissue in consolidated)


def test_organ_labels_cover_each_structure_on_the_hu_grid():
    """Every organ appears somewhere in a chest scan, each label sits on its own tissue's HU, and left is x > 0."""
    ct = generate_patient(11, size=64, n_slices=160)  # the whole chest and more, diaphragm to apex
    assert ct.labels.shape == ct.hu.shape and ct.labels.dtype == np.uint8
    assert set(np.unique(ct.labels)) == set(range(len(ORGAN_LABELS)))
    assert np.array_equal(ct.labels, generate_patient(11, size=64, n_slices=160).labels)  # deterministic
    tissue_of = {"lung_left": LUNG_TISSUES, "lung_right": LUNG_TISSUES, "liver": (Tissue.LIVER,),
                 "heart": (Tissue.HEART,), "aorta": (Tissue.VESSEL,), "airway": (Tissue.AIRWAY,),
                 "rib": (Tissue.CORTICAL_BONE, Tissue.MARROW), "sternum": (Tissue.CORTICAL_BONE,),
                 "spine": (Tissue.CORTICAL_BONE, Tissue.MARROW, Tissue.DISC)}
    for value, name in enumerate(ORGAN_LABELS[1:], start=1):
        assert np.isin(ct.tissue[ct.labels == value], tissue_of[name]).all(), name
    # nothing that is not anatomy carries a label; all parenchyma does
    assert not ct.labels[np.isin(ct.tissue, [Tissue.AIR, Tissue.OUTSIDE_FOV, Tissue.TABLE, Tissue.FAT])].any()
    assert np.isin(ct.labels[ct.tissue == Tissue.LUNG], [1, 2]).all()
    columns = np.broadcast_to(np.arange(64), ct.labels.shape)  # column index = x; x > 0 right of centre
    assert columns[ct.labels == 1].min() >= 32 > columns[ct.labels == 2].max()
    # the HU volume under each label is its tissue's (labels and image not flipped or shifted)
    assert np.median(ct.hu[ct.labels == 1]) < -400 and np.median(ct.hu[ct.labels == 2]) < -400  # 64 px: blurred
    assert 20 <= np.median(ct.hu[ct.labels == 4]) <= 80 and np.median(ct.hu[ct.labels == 7]) >= 150
