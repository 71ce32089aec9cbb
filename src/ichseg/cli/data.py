"""``ichseg index`` and ``ichseg convert``: what a dataset folder holds, and a CT-ICH patient
as the DICOM series or NIfTI volume a hospital would send."""

from __future__ import annotations

import argparse
from pathlib import Path

from ichseg.cli.options import add_common


def cmd_index(args: argparse.Namespace) -> int:
    from ichseg.experiments.workflow import index_stage

    res = index_stage(args.data, args.out, skip_bad=args.skip_bad, expected_size_px=args.image_size or None)
    pos = sum(r.hemorrhage for r in res.records)
    print(
        f"{len(res.records)} slices, {len({r.patient_id for r in res.records})} patients, {pos} with hemorrhage "
        f"-> {Path(args.out) / 'index.csv'}"
    )
    if res.disagreements:
        print(f"{len(res.disagreements)} mask/No_Hemorrhage disagreement(s) -> {Path(args.out) / 'label_disagreements.csv'}:")
        for d in res.disagreements:
            print(f"  patient {d.patient_id} slice {d.slice}: {d.detail}")
    else:
        print("mask-derived labels agree with No_Hemorrhage on every slice")
    if res.skipped:
        print(f"{len(res.skipped)} slice(s) skipped (--skip-bad)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ichseg.data.convert import convert_patient_detailed, summary_lines

    if args.to == "nnunet":
        from ichseg.data.export_nnunet import export_nnunet

        patients = args.patients.split(",") if args.patients else None
        body = export_nnunet(Path(args.patient), Path(args.out), patients)
        print(f"{body['numTraining']} patients -> {Path(args.out)} (imagesTr/, labelsTr/, dataset.json; nnU-Net v2 layout)")
        return 0
    result = convert_patient_detailed(Path(args.patient), args.to, Path(args.out))
    print("\n".join(summary_lines(result)))
    return 0


def register(sub) -> None:
    """Add this group's subcommands to the parser."""
    s = sub.add_parser("index", help="scan a CT-ICH folder into index.csv", allow_abbrev=False)
    add_common(s)
    s.add_argument("--out", type=Path, required=True, help="folder for index.csv and label_disagreements.csv")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser(
        "convert",
        help="a CT-ICH patient folder (brain and bone JPGs) as a synthetic DICOM series or NIfTI volume in HU, or a "
        "CT-ICH folder as an nnU-Net dataset",
        allow_abbrev=False,
    )
    s.add_argument(
        "patient",
        type=Path,
        help="Patients_CT/<ID> (brain/ and bone/ JPGs; *_HGE_Seg.jpg masks become mask.nii.gz); with --to nnunet the "
        "CT-ICH folder holding Patients_CT/ and its CSVs",
    )
    s.add_argument("--to", choices=("dicom", "nifti", "nnunet"), required=True)
    s.add_argument("--patients", default=None, help="with --to nnunet: comma-separated patient numbers (default: all)")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=cmd_convert)
