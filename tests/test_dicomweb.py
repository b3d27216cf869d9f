"""prepare-dicom from a real PACS: Orthanc with its DICOMweb plugin, started on free localhost ports.

Orthanc comes from the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (``.ci/run`` installs them when
missing). The server asks for HTTP basic authentication; series are uploaded through its REST API.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests

from conftest import assert_ended, descendants
from medssl_monai.cli import main
from medssl_monai.data.prepare import PrepareError, prepare_dicom

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "radiology", "not-a-real-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """An Orthanc server in ``folder`` on free ports of 127.0.0.1, with basic authentication."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("Orthanc")
        if binary is None or not PLUGIN.is_file():
            pytest.fail("Orthanc with its DICOMweb plugin is not installed: apt-get install orthanc orthanc-dicomweb "
                        "(.ci/run installs them)")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (folder / "db").mkdir(parents=True)
        config = {"Name": "medssl-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
                  "HttpPort": self.port, "DicomPort": _free_port(), "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "Plugins": [str(PLUGIN)],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "w+")
        self.process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.url}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            self.log.seek(0)
            assert self.process.poll() is None, f"Orthanc stopped:\n{self.log.read()[-2000:]}"
            assert time.monotonic() < deadline, f"Orthanc did not answer within 60 s:\n{self.log.read()[-2000:]}"
            time.sleep(0.2)

    def upload(self, files) -> None:
        for f in files:
            requests.post(f"{self.url}/instances", data=Path(f).read_bytes(), auth=(USER, PASSWORD),
                          timeout=30).raise_for_status()

    def clear(self) -> None:
        for patient in requests.get(f"{self.url}/patients", auth=(USER, PASSWORD), timeout=30).json():
            requests.delete(f"{self.url}/patients/{patient}", auth=(USER, PASSWORD), timeout=30).raise_for_status()

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("MEDSSL_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDSSL_DICOMWEB_PASSWORD", PASSWORD)


IDENTIFIERS = {"PatientName": "DOE^JANE", "PatientID": "MRN77341", "PatientBirthDate": "19510807",
               "AccessionNumber": "ACC99117", "InstitutionName": "SAINT ELSEWHERE"}


@pytest.fixture
def identified(demo_dir, tmp_path):
    """The demo's CT series (and its DX image) with a patient's identifiers written into every file."""
    root = tmp_path / "identified"
    for k, f in enumerate(sorted(Path(demo_dir, "dicom").rglob("*.dcm"))):
        ds = pydicom.dcmread(f)
        for tag, value in IDENTIFIERS.items():
            setattr(ds, tag, value)
        ds.PatientID = f"{IDENTIFIERS['PatientID']}-{f.relative_to(demo_dir).parts[1]}"
        target = root / f.relative_to(demo_dir / "dicom")
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)
    return root


def _volumes(folder: Path) -> list[tuple]:
    return sorted((v.shape, v.tobytes()) for p in folder.rglob("*.nii.gz") if "private" not in p.parts
                  for v in [np.asarray(nib.load(p).dataobj)])


def _series(root: Path) -> list[list[Path]]:
    return [sorted(d.glob("*.dcm")) for d in sorted({p.parent for p in root.rglob("*.dcm")})
            if pydicom.dcmread(next(d.glob("*.dcm")), stop_before_pixels=True).Modality == "CT"]


def _leaks(top: Path) -> list[str]:
    """Files under ``top`` (or ``top`` itself) outside private/ whose name or bytes hold an identifier."""
    values = [v.encode() for v in IDENTIFIERS.values()]
    found = []
    for path in [top] if top.is_file() else top.rglob("*"):
        if "private" in path.relative_to(top).parts:
            continue
        if any(v.decode() in path.name for v in values) or path.is_file() and any(v in path.read_bytes()
                                                                                   for v in values):
            found.append(str(path))
    return found


def test_pacs_route_equals_folder_route_and_names_no_patient(orthanc, credentials, identified, tmp_path):
    orthanc.clear()
    orthanc.upload(sorted(identified.rglob("*.dcm")))
    pacs = prepare_dicom(f"{orthanc.url}/dicom-web", tmp_path / "pacs", workers=2, progress=False)
    folder = prepare_dicom(identified, tmp_path / "folder", workers=2, progress=False)
    assert len(pacs.converted) == len(folder.converted) == 3 and pacs.megabytes_fetched > 0
    assert _volumes(tmp_path / "pacs") == _volumes(tmp_path / "folder")  # voxel for voxel
    assert _leaks(tmp_path / "pacs") == [] and _leaks(tmp_path / "folder") == []
    datalist = json.loads((tmp_path / "pacs" / "datalist.json").read_text())
    assert len(datalist["training"]) == 2 and len(datalist["validation"]) == 1  # split by (pseudonymised) patient
    assert not (tmp_path / "pacs" / "private" / "fetch").exists()  # fetched DICOM removed once converted
    # a second run fetches nothing
    again = prepare_dicom(f"{orthanc.url}/dicom-web", tmp_path / "pacs", workers=2, progress=False)
    assert again.converted == [] and len(again.already_done) == 3 and again.megabytes_fetched == 0


def test_a_series_that_gained_instances_is_fetched_again(orthanc, credentials, identified, tmp_path):
    orthanc.clear()
    series = _series(identified)
    orthanc.upload([f for s in series for f in s[:-3]])  # the last 3 slices of every series arrive later
    first = prepare_dicom(f"{orthanc.url}/dicom-web", tmp_path / "pacs", workers=1, progress=False)
    assert len(first.converted) == 3 and first.slices == 3 * (len(series[0]) - 3)
    orthanc.upload(series[1][-3:])
    second = prepare_dicom(f"{orthanc.url}/dicom-web", tmp_path / "pacs", workers=1, progress=False)
    assert len(second.converted) == 1 and len(second.already_done) == 2 and second.slices == len(series[1])
    grown = [v for v in _volumes(tmp_path / "pacs") if v[0][2] == len(series[1])]
    prepare_dicom(identified, tmp_path / "folder", workers=1, progress=False)
    assert len(grown) == 1 and grown[0] in _volumes(tmp_path / "folder")


def test_a_killed_run_leaves_no_worker_and_continues_without_fetching_finished_series_again(orthanc, identified,
                                                                                          tmp_path):
    orthanc.clear()
    orthanc.upload(sorted(identified.rglob("*.dcm")))
    out = tmp_path / "pacs"
    cmd = [sys.executable, "-m", "medssl_monai.cli", "prepare-dicom", "--src", f"{orthanc.url}/dicom-web", "--out",
           str(out), "--workers", "1", "--no-progress"]
    env = dict(os.environ, MEDSSL_DICOMWEB_USER=USER, MEDSSL_DICOMWEB_PASSWORD=PASSWORD)
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "private" / "fetched.json").exists():  # written once the first series is converted
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    workers = descendants(process.pid)
    assert workers, "prepare-dicom converts in worker processes"
    process.send_signal(signal.SIGKILL)  # the parent alone, as the out-of-memory killer would
    process.wait()
    assert_ended(workers)  # none left blocked on its pool's pipe, holding memory
    finished = len(json.loads((out / "private" / "fetched.json").read_text()))
    assert 1 <= finished < 3
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"({3 - finished} converted, {finished} already done)" in result.stdout
    assert len(list((out / "images").rglob("*.nii.gz"))) == 3


def test_a_series_that_fails_the_checks_is_reported_and_the_others_go_on(orthanc, credentials, identified,
                                                                          tmp_path):
    orthanc.clear()
    series = _series(identified)
    orthanc.upload([f for k, s in enumerate(series) for f in s if not (k == 0 and f.name == "1-005.dcm")])
    report = prepare_dicom(f"{orthanc.url}/dicom-web", tmp_path / "pacs", workers=2, progress=False)
    assert len(report.converted) == 2
    (skipped,) = report.skipped
    assert "inconsistent slice spacing" in skipped["reason"]
    uid = pydicom.dcmread(series[0][0], stop_before_pixels=True).SeriesInstanceUID
    shared = json.loads((tmp_path / "pacs" / "prepare_report.json").read_text())["skipped"]
    assert shared == [{"pseudonym": skipped["pseudonym"], "reason": skipped["reason"]}]  # no UID, no path
    private = json.loads((tmp_path / "pacs" / "private" / "prepare_report.json").read_text())["skipped"]
    assert private[0]["series"] == uid


def test_unreachable_or_refusing_servers_are_clear_errors(orthanc, tmp_path, monkeypatch, capsys):
    orthanc.clear()
    down = f"http://127.0.0.1:{_free_port()}/dicom-web"
    assert main(["prepare-dicom", "--src", down, "--out", str(tmp_path / "a"), "--no-progress"]) == 1
    assert "cannot reach the DICOMweb server" in capsys.readouterr().err
    with pytest.raises(PrepareError, match=r"refused the series search \(HTTP 401\).*MEDSSL_DICOMWEB_USER"):
        prepare_dicom(f"{orthanc.url}/dicom-web", tmp_path / "b", progress=False)
    monkeypatch.setenv("MEDSSL_DICOMWEB_TOKEN", "an-expired-token")  # Orthanc knows no bearer tokens: refused
    with pytest.raises(PrepareError, match=r"HTTP 401"):
        prepare_dicom(f"{orthanc.url}/dicom-web", tmp_path / "c", progress=False)
    monkeypatch.delenv("MEDSSL_DICOMWEB_TOKEN")
    monkeypatch.setenv("MEDSSL_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDSSL_DICOMWEB_PASSWORD", PASSWORD)
    with pytest.raises(PrepareError, match="lists no CT series matching the filters"):
        prepare_dicom(f"{orthanc.url}/dicom-web", tmp_path / "d", progress=False, study_dates="19000101-19000102")
    wrong_root = orthanc.url.replace("http://", f"http://{USER}:{PASSWORD}@") + "/not-dicom-web"
    with pytest.raises(PrepareError, match=r"answered the series search with HTTP 404") as error:
        prepare_dicom(wrong_root, tmp_path / "e", progress=False, patients=["MRN77341-X"])
    assert PASSWORD not in str(error.value) and "MRN77341" not in str(error.value)  # no credentials, no filter


def test_search_filters_by_patient_and_study_date(orthanc, credentials, identified, tmp_path):
    orthanc.clear()
    orthanc.upload(sorted(identified.rglob("*.dcm")))
    first = pydicom.dcmread(_series(identified)[0][0], stop_before_pixels=True)
    one = prepare_dicom(f"{orthanc.url}/dicom-web", tmp_path / "one", progress=False, patients=[first.PatientID])
    assert len(one.converted) == 1
    dated = prepare_dicom(f"{orthanc.url}/dicom-web", tmp_path / "dated", progress=False,
                          study_dates=f"{first.StudyDate}-")
    assert len(dated.converted) == 3


def test_nothing_shared_downstream_names_the_patient(orthanc, credentials, identified, demo_dir, tmp_path):
    """From the PACS to what is shared: prepare, a tiny SparK pre-training on the result, a tiny fine-tuning
    from its encoder, pack-bundle and a tiny study; no file written outside DIR/private/ holds an identifier."""
    orthanc.clear()
    orthanc.upload(sorted(identified.rglob("*.dcm")))
    prepared = tmp_path / "prepared"
    assert main(["prepare-dicom", "--src", f"{orthanc.url}/dicom-web", "--out", str(prepared), "--no-progress"]) == 0
    root = Path(__file__).resolve().parents[1]
    tiny = ["--max_epochs", "1", "--backbone", "resnet18", "--image_size", "64", "--batch_size", "4",
            "--num_workers", "0"]
    pretrain = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file",
         str(root / "bundles" / "spark_pretrain" / "configs" / "train.json"), "--dataset_dir", str(prepared),
         "--ckpt_dir", str(tmp_path / "spark"), "--log_dir", str(tmp_path / "spark_logs"), *tiny],
        cwd=root, capture_output=True, text=True, timeout=900)
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    bundle = tmp_path / "bundle"
    shutil.copytree(root / "bundles" / "ct_classification", bundle, ignore=shutil.ignore_patterns("models", "logs",
                                                                                                   "eval"))
    finetune = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.json"),
         "--bundle_root", str(bundle), "--dataset_dir", str(demo_dir / "covid_ct"), "--pretrained_checkpoint",
         str(tmp_path / "spark" / "encoder.pt"), "--n_bootstrap", "20", *tiny],
        cwd=root, capture_output=True, text=True, timeout=900)
    assert finetune.returncode == 0, finetune.stderr[-3000:]
    assert main(["pack-bundle", "ct_classification", "--out", str(tmp_path / "shared.zip"), "--bundle-root",
                 str(bundle)]) == 0
    (tmp_path / "logs.txt").write_text(pretrain.stdout + pretrain.stderr + finetune.stdout + finetune.stderr)
    # a study pre-training on the prepared data: its CSVs, summaries and run records
    from medssl_monai.study import Study, load_study_config

    (tmp_path / "study.yaml").write_text(json.dumps({
        "preset": "smoke", "methods": ["spark"], "fractions": [1.0], "seeds": [0], "protocols": ["knn"],
        "tasks": {"covid": {"dataset_dir": str(demo_dir / "covid_ct"), "class_names": ["NonCOVID", "COVID"],
                            "window": "lung", "encoding": "hu16", "layout": "class_folders",
                            "patient_pattern": "demo_(\\d+)_"}},
        "pretrain": {"dataset_dir": str(prepared)}, "finetune": {"overrides": {"batch_size": 8, "num_workers": 0}}}))
    Study(load_study_config(tmp_path / "study.yaml"), tmp_path / "study").run(progress=False)
    assert (tmp_path / "study" / "results.csv").is_file()
    assert (tmp_path / "spark" / "encoder.pt").is_file() and list((tmp_path / "spark").glob("checkpoint_*.pt"))
    assert list((tmp_path / "spark_logs").rglob("events.out.tfevents*")) and (bundle / "eval" / "metrics.json").is_file()
    assert _leaks(identified)  # the search finds what is there
    assert [leak for path in tmp_path.iterdir() if path != identified for leak in _leaks(path)] == []
