"""The ``medssl-monai`` command: data preparation and project utilities, one subcommand each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _demo_data(args: argparse.Namespace) -> int:
    from medssl_monai.bundle import demo_root
    from medssl_monai.data.demo import ensure_demo_data

    sizes = ("patients", "size", "slices", "covid_images", "organ_patches", "dicom_patients")
    given = {k: getattr(args, k) for k in sizes if getattr(args, k) is not None}
    out = ensure_demo_data(args.out or demo_root(), seed=args.seed, workers=args.workers, **given)
    print(f"demo data in {out} (kept when it was already made with these settings by this generator version)")
    return 0


def _prepare_dicom(args: argparse.Namespace) -> int:
    from medssl_monai.data.prepare import DATALIST_NAME, REPORT_NAME, PrepareError, prepare_dicom

    try:
        report = prepare_dicom(
            args.src, args.out, on_error=args.on_error, val_fraction=args.val_fraction, seed=args.seed,
            workers=args.workers, progress=not args.no_progress, keep_patient_ids=args.keep_patient_ids,
            study_dates=args.study_dates, studies=args.studies, patients=args.patients,
        )
    except PrepareError as err:
        print(f"error: {err}\n(outputs written before this error are complete; re-run to continue)", file=sys.stderr)
        return 1
    out = Path(args.out)
    print(report.summary(out))
    print(f"datalist: {out / DATALIST_NAME}; report: {out / REPORT_NAME}")
    if report.pseudonymised:
        print(f"pseudonyms: the key and the pseudonym -> patient table are in {out / 'private'}: never share it")
    return 0


def _compose_configs(args: argparse.Namespace) -> int:
    from medssl_monai.bundle import composed_pretrain_configs

    stale = [path for path, text in composed_pretrain_configs().items()
             if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path}", file=sys.stderr)
        print(f"{len(stale)} composed config(s) differ from medssl_monai/bundle/templates/pretrain")
        return 1 if stale else 0
    for path, text in composed_pretrain_configs().items():
        if path in stale:
            path.write_text(text)
    print(f"{len(stale)} config(s) rewritten from medssl_monai/bundle/templates/pretrain")
    return 0


def _export_encoder(args: argparse.Namespace) -> int:
    from medssl_monai.checkpoints import export_encoder

    channels = args.in_channels or (3 if args.layout == "torchvision" else None)  # stock torchvision: 3
    out = export_encoder(args.checkpoint, args.out, layout=args.layout, in_channels=channels)
    stem = f"{channels}-channel" if channels else "the trained"
    print(f"encoder ({args.layout} layout, {stem} stem) written to {out}")
    return 0


def _inspect_checkpoint(args: argparse.Namespace) -> int:
    from medssl_monai.networks.pretrained import detect_backbone

    try:
        arch, channels, weights = detect_backbone(args.checkpoint, args.format, args.trust_checkpoint)
    except ValueError as err:
        print(f"cannot initialise a backbone: {err}", file=sys.stderr)
        return 1
    kind = "safetensors" if Path(args.checkpoint).suffix == ".safetensors" else "PyTorch"
    if weights.format == "torchvision" and channels == 3:
        use = f"loads as is into a stock torchvision.models.{arch}() (strict=False: only fc missing)"
    elif channels == 1:
        use = f"a stock torchvision {arch} needs a 3-channel stem (encoder.pt); ct_classification reads it"
    else:
        use = "ct_classification reads it (--pretrained_checkpoint)"
    print(f"file: {args.checkpoint} ({kind})\nformat: {weights.format}\nbackbone: {arch} with a {channels}-channel "
          f"stem\nbackbone tensors matched: {len(weights.state)} of {len(weights.state)} (all; fc excluded)\n"
          f"use: {use}")
    return 0


def _pack_bundle(args: argparse.Namespace) -> int:
    from medssl_monai.bundle import pack_bundle

    print(f"bundle {args.name} packed into {pack_bundle(args.name, args.out, args.bundle_root)}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from medssl_monai.bundle import demo_root
    from medssl_monai.data.demo import ensure_demo_data
    from medssl_monai.study import Study, StudyError, load_study_config

    config = load_study_config(args.config, args.preset)
    demo = demo_root().resolve()
    if not args.plan and any(Path(d).resolve().is_relative_to(demo) for d in config.data_dirs):
        print(f"the study reads the demo data: making sure {demo} is current (medssl-monai demo-data)")
        ensure_demo_data(demo)
    if args.plan:
        lines = Study(config, args.out).plan()
        print("\n".join(lines) + f"\n{len(lines)} bundle runs planned in {args.out}; nothing was run")
        return 0
    try:
        Study(config, args.out).run()
    except StudyError as err:
        print(f"error: {err}\n(finished runs are kept; run the same command again to continue)", file=sys.stderr)
        return 1
    print(f"study written to {args.out}: results.csv, summary.md, auc_vs_fraction.png, difference_vs_scratch.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medssl-monai", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="generate the synthetic chest-CT demo collection (the bundles' default data)")
    p.add_argument("--out", default=None, help="output folder (default: data/demo of the checkout, where the bundles "
                   "look for it)")
    p.add_argument("--seed", type=int, default=0)
    for name, text in (("patients", "pre-training CT scans"), ("size", "in-plane matrix size in pixels"),
                       ("slices", "axial slices per scan"), ("covid-images", "images in the binary COVID-CT-like set"),
                       ("organ-patches", "28x28 patches in the OrganSMNIST-like set"),
                       ("dicom-patients", "scans also written as DICOM")):
        p.add_argument(f"--{name}", type=int, default=None, help=f"{text} (default: make_demo_data's)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("prepare-dicom", help="CT series of a DICOM tree or a DICOMweb PACS to HU NIfTI and a "
                                             "datalist, pseudonymised")
    p.add_argument("--src", required=True, help="root of the DICOM tree, or a DICOMweb URL (http(s)://.../dicom-web; "
                                                "credentials from MEDSSL_DICOMWEB_USER and MEDSSL_DICOMWEB_PASSWORD, "
                                                "or MEDSSL_DICOMWEB_TOKEN)")
    p.add_argument("--out", required=True, help="output folder for images/, datalist.json and the report")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of patients in the validation list")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--keep-patient-ids", action="store_true",
                   help="name outputs by PatientID and UIDs, not by keyed pseudonyms (for data already anonymous)")
    p.add_argument("--study-dates", default=None, metavar="YYYYMMDD-YYYYMMDD",
                   help="DICOMweb: only studies of this date range (either end may be left open)")
    p.add_argument("--studies", nargs="+", default=None, metavar="UID", help="DICOMweb: only these StudyInstanceUIDs")
    p.add_argument("--patients", nargs="+", default=None, metavar="ID", help="DICOMweb: only these PatientIDs")
    p.set_defaults(func=_prepare_dicom)

    p = sub.add_parser("export-encoder", help="write the backbone of a training checkpoint as a plain encoder file")
    p.add_argument("checkpoint", help="a checkpoint_<iteration>.pt from a pre-training bundle")
    p.add_argument("--out", required=True, help="output file")
    # checkpoints.LAYOUTS, spelled out so that --help needs no torch (tests/test_layout.py keeps them equal)
    p.add_argument("--layout", choices=("torchvision", "spark", "moco", "byol", "swav"), default="torchvision",
                   help="torchvision: plain state_dict; spark, moco, byol, swav: the reference study's release "
                   "layouts ({'module': sd}; {'state_dict': sd} with prefixes encoder_q., online_network.encoder., "
                   "model.)")
    p.add_argument("--in-channels", type=int, choices=(1, 3), default=None,
                   help="stem input channels (default: 3 for the torchvision layout, as stock networks have; the "
                   "trained stem for the release layouts); 1 <-> 3 conversions preserve the function of grey input")
    p.set_defaults(func=_export_encoder)

    p = sub.add_parser("inspect-checkpoint", help="say which pre-trained format and backbone a checkpoint holds")
    p.add_argument("checkpoint", help="an encoder, a training checkpoint or a published SparK/MoCo/BYOL/SwAV file")
    p.add_argument("--format", default="auto", help="auto, medssl, torchvision, spark, moco, byol or swav")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full unpickling (Lightning .ckpt files); only for files from a trusted source")
    p.set_defaults(func=_inspect_checkpoint)

    p = sub.add_parser("pack-bundle", help="zip a trained bundle (configs, docs, licence, models/model.pt)")
    p.add_argument("name", help="bundle name, e.g. ct_classification")
    p.add_argument("--out", required=True, help="output .zip")
    p.add_argument("--bundle-root", default=None, help="the bundle folder (default: bundles/NAME)")
    p.set_defaults(func=_pack_bundle)

    p = sub.add_parser("compose-configs", help="write the four pre-training bundles' configs from their shared "
                       "source, medssl_monai/bundle/templates/pretrain")
    p.add_argument("--check", action="store_true", help="only report configs that differ from their source")
    p.set_defaults(func=_compose_configs)

    p = sub.add_parser("study", help="the label-fraction study: pre-train, fine-tune per fraction and seed, compare")
    p.add_argument("--config", default=None, help="a study YAML (fields override its preset; see studies/)")
    p.add_argument("--preset", default=None, choices=("smoke", "demo", "demo_3d", "paper"),
                   help="smoke (tests, < 3 min), demo (embedded data, about an hour on 2 cores), demo_3d (its 3D "
                        "arm: volume patches, organ segmentation), paper (GPU)")
    p.add_argument("--out", required=True, help="study folder; the same command continues a stopped study")
    p.add_argument("--plan", action="store_true", help="print every bundle run (bundle, folder, ids) and exit")
    p.set_defaults(func=_study)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
