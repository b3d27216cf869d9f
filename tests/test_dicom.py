"""DICOM ingestion: round trip to HU, series selection, and every bad-input case with its report."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom import uid as uids

from medssl_monai.cli import main
from medssl_monai.data import dicom
from medssl_monai.data.prepare import PrepareError, prepare_dicom
from medssl_monai.data.synthetic import generate_patient


def _series_dirs(demo_dir):
    return sorted(p.parent for p in Path(demo_dir, "dicom").rglob("1-001.dcm"))


def _reasons(report):
    return {Path(s["path"]).name: s["reason"] for s in report.skipped}


def test_round_trip_equals_generator_volume(demo_dir, tmp_path):
    report = prepare_dicom(demo_dir / "dicom", tmp_path, workers=2, progress=False)
    assert len(report.converted) == 3 and report.slices == 24
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    entries = datalist["training"] + datalist["validation"]
    assert len(entries) == 3 and len(datalist["validation"]) == 1  # patient-level split
    table = json.loads((tmp_path / "private" / "pseudonyms.json").read_text())  # pseudonym -> identifier
    for entry in entries:
        assert entry["patient"].startswith("P") and table[entry["patient"]]["kind"] == "patient"
        ours = nib.load(tmp_path / entry["image"])
        truth = nib.load(demo_dir / "nifti" / f"{table[entry['patient']]['value']}.nii.gz")
        assert np.array_equal(ours.get_fdata(), truth.get_fdata())  # three stored-value encodings, exact HU
        np.testing.assert_allclose(ours.affine, truth.affine, atol=1e-3)
        assert nib.aff2axcodes(ours.affine) == ("L", "P", "S")


def test_non_ct_series_is_skipped_by_modality(demo_dir, tmp_path):
    report = prepare_dicom(demo_dir / "dicom", tmp_path, workers=1, progress=False)
    skipped = [s for s in report.skipped if "not CT" in s["reason"]]
    assert len(skipped) == 1 and "modality DX" in skipped[0]["reason"] and "XRAY" in skipped[0]["path"]


def test_monai_pydicom_reader_reads_series_as_ct(demo_dir):
    from monai.transforms import LoadImage

    for series in _series_dirs(demo_dir):
        if "XRAY" in str(series):
            continue
        assert pydicom.dcmread(series / "1-001.dcm").Modality == "CT"
        image = LoadImage(image_only=True, reader="PydicomReader")(str(series))  # (X, Y, Z) in HU
        ours, affine = dicom.series_to_hu(sorted(series.glob("*.dcm")))
        ours = ours.transpose(2, 1, 0)
        np.testing.assert_allclose(image.affine.numpy(), affine, atol=1e-3)
        # identical in the field of view; outside it MONAI keeps the padding values (-2000, -3024) that we floor
        in_field = ours > -1024
        assert in_field.mean() > 0.5
        assert np.array_equal(np.asarray(image)[in_field], ours[in_field])


def test_rerun_skips_series_already_done(demo_dir, tmp_path):
    prepare_dicom(demo_dir / "dicom", tmp_path, workers=1, progress=False)
    again = prepare_dicom(demo_dir / "dicom", tmp_path, workers=1, progress=False)
    assert again.converted == [] and len(again.already_done) == 3
    assert len(json.loads((tmp_path / "datalist.json").read_text())["training"]) == 2


@pytest.fixture
def broken_tree(demo_dir, tmp_path):
    """A copy of the demo tree with one damaged series per case; returns (root, case -> series folder)."""
    root = tmp_path / "src"
    shutil.copytree(demo_dir / "dicom", root)
    series = sorted(p.parent for p in root.rglob("1-001.dcm") if "XRAY" not in str(p))
    return root, series


def test_each_bad_input_is_reported_with_path_and_reason(broken_tree, tmp_path):
    root, (truncated, gap, missing) = broken_tree
    # a truncated slice
    f = truncated / "1-004.dcm"
    f.write_bytes(f.read_bytes()[:2000])
    # a missing slice: inconsistent spacing
    (gap / "1-005.dcm").unlink()
    # a missing tag
    ds = pydicom.dcmread(missing / "1-002.dcm")
    del ds.ImagePositionPatient
    ds.save_as(missing / "1-002.dcm")
    # a non-DICOM file
    (root / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    report = prepare_dicom(root, out, workers=2, progress=False)
    reasons = _reasons(report)
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "1-004.dcm" in reasons and ("truncated" in reasons["1-004.dcm"] or "cannot be decoded" in reasons["1-004.dcm"])
    assert "inconsistent slice spacing" in reasons["1-006.dcm"]
    assert "missing required tag(s) ImagePositionPatient" in reasons["1-002.dcm"]
    assert report.converted == []
    saved = json.loads((out / "prepare_report.json").read_text())
    assert len(saved["skipped"]) == len(report.skipped) == 5  # 4 problems + the DX series


def _undecodable_syntax():
    from pydicom.pixels import get_decoder

    for syntax in (uids.JPEGLSLossless, uids.HTJ2KLossless, uids.JPEGLosslessSV1):
        if not get_decoder(syntax).is_available:
            return syntax
    pytest.skip("every candidate compressed transfer syntax has a decoder installed here")


def test_compressed_without_decoder_is_reported(broken_tree, tmp_path):
    root, series = broken_tree
    syntax = _undecodable_syntax()
    for f in sorted(series[0].glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\x00\x00" * 8])
        ds["PixelData"].VR = "OB"
        ds.save_as(f)
    report = prepare_dicom(root, tmp_path / "out", workers=1, progress=False)
    (reason,) = [s["reason"] for s in report.skipped if "compressed" in s["reason"]]
    assert syntax.name in reason and "no decoder" in reason
    assert len(report.converted) == 2


def test_several_series_in_one_folder_are_separated(tmp_path):
    folder = tmp_path / "src" / "P1" / "mixed"
    for i in range(2):
        ct = generate_patient(10 + i, size=32, n_slices=4)
        paths = dicom.write_ct_series(folder, ct.hu, ct.spacing, ct.origin, "P1", dicom.uid_from("s"),
                                      dicom.uid_from("series", i), series_number=i + 1)
        for p in paths:  # same file names would collide: prefix by series
            p.rename(p.with_name(f"s{i}-{p.name}"))
    report = prepare_dicom(tmp_path / "src", tmp_path / "out", workers=1, progress=False)
    assert len(report.converted) == 2 and report.slices == 8 and report.skipped == []


def test_on_error_fail_stops_with_path_and_keeps_complete_outputs(broken_tree, tmp_path, capsys):
    root, series = broken_tree
    (series[2] / "1-003.dcm").unlink()
    out = tmp_path / "out"
    rc = main(["prepare-dicom", "--src", str(root), "--out", str(out), "--on-error", "fail", "--workers", "1",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "error:" in err
    written = list(out.rglob("*.nii.gz"))
    for f in written:  # every written volume is complete
        assert nib.load(f).get_fdata().shape[2] == 8
    assert not list(out.rglob(".*tmp*"))


def test_hu_conversion_applies_slope_intercept_and_padding(tmp_path):
    ct = generate_patient(1, size=32, n_slices=3)
    paths = dicom.write_ct_series(tmp_path, ct.hu, ct.spacing, ct.origin, "P", dicom.uid_from("a"), dicom.uid_from("b"),
                                  encoding="padded")
    for p in paths:  # store half-values with slope 2 (even HU only)
        ds = pydicom.dcmread(p)
        stored = ds.pixel_array.astype(np.int32)
        pad = stored == -2000
        ds.PixelData = np.where(pad, -2000, (stored - 1024) // 2).astype(np.int16).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = "2", "0"
        ds.save_as(p)
    hu, _ = dicom.series_to_hu(paths)
    expected = np.where(ct.hu <= -1024, -1024, (ct.hu.astype(np.int32) // 2) * 2)
    assert np.array_equal(hu, expected)


def test_cli_wrong_path_is_a_clear_error(tmp_path, capsys):
    assert main(["prepare-dicom", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_outputs_are_pseudonymised_unless_ids_are_kept(demo_dir, tmp_path):
    """File names, datalist and report name no PatientID or UID; the key and table stay in private/."""
    prepare_dicom(demo_dir / "dicom", tmp_path / "pseudo", workers=1, progress=False)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in Path(demo_dir, "dicom").rglob("*.dcm")]
    identifiers = {v for h in headers for v in (h.PatientID, h.StudyInstanceUID, h.SeriesInstanceUID)}
    shared = [p for p in (tmp_path / "pseudo").rglob("*") if "private" not in p.relative_to(tmp_path).parts]
    for path in shared:
        assert not any(i in str(path.relative_to(tmp_path)) for i in identifiers), path
        if path.is_file():
            data = path.read_bytes()
            assert not any(i.encode() in data for i in identifiers), path
    private = tmp_path / "pseudo" / "private"
    assert (private / "pseudonym_key").stat().st_mode & 0o077 == 0  # readable by its owner only
    table = json.loads((private / "pseudonyms.json").read_text())
    assert {v["value"] for v in table.values() if v["kind"] == "patient"} == {h.PatientID for h in headers}
    # the same folder keeps its pseudonyms: a second run finds every series done
    assert len(prepare_dicom(demo_dir / "dicom", tmp_path / "pseudo", workers=1, progress=False).already_done) == 3

    prepare_dicom(demo_dir / "dicom", tmp_path / "kept", workers=1, progress=False, keep_patient_ids=True)
    datalist = json.loads((tmp_path / "kept" / "datalist.json").read_text())
    assert {e["patient"] for e in datalist["training"] + datalist["validation"]} == {h.PatientID for h in headers
                                                                                     if h.Modality == "CT"}
    assert not (tmp_path / "kept" / "private").exists()
