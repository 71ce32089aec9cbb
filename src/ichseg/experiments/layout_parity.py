"""Does the NIfTI reader train what the JPG reader trains? A short proxy cross-validation on
both layouts of the same CT-ICH patients, beside the seed-to-seed noise of the JPG one.

``python -m ichseg.experiments.layout_parity --data ../shared/ct-ich --work runs/parity
--results results/parity`` exports the patients as an nnU-Net folder (``ichseg convert
--to nnunet``), then runs the same proxy configuration's 5-fold CV (same folds, fold seed 0)
three times: on the JPGs with training seed 0, on the nnU-Net folder with seed 0, and on
the JPGs with seed 1. Layout parity holds when the JPG/nnU-Net difference is no larger than
the seed 0/seed 1 difference. Each run is scored at its own pooled out-of-fold point and at
one common point (the JPG seed-0 run's), which takes the choice of point out of the
comparison. Every run resumes from its fold JSONs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ichseg.config import preset, save_json, to_dict
from ichseg.files import atomic_write_text

log = logging.getLogger(__name__)

KEYS = ("recall", "precision", "dice_global", "iou_global", "scan_sensitivity", "scan_specificity")


def proxy_config(seed: int):
    """``robust`` shrunk to minutes: 128 px, 4 epochs of 400 slices, float32 (the same
    arithmetic on either CPU kind)."""
    r = preset("robust")
    return dataclasses.replace(
        r,
        unet=dataclasses.replace(r.unet, input_size_px=128),
        train_unet=dataclasses.replace(r.train_unet, epochs=4, samples_per_epoch=400, seed=seed, precision="fp32"),
    )


def run(data: Path, work: Path, results: Path, folds: int = 5, image_size_px: int = 650) -> dict[str, Any]:
    from ichseg.data.export_nnunet import export_nnunet
    from ichseg.evaluate.oof import metrics_at, point_rule
    from ichseg.experiments.ensemble import run_member_fold, summarize_members
    from ichseg.experiments.folds import fold_values, load_member_folds

    nn = work / "nnunet-data"
    if not (nn / "dataset.json").exists():
        export_nnunet(data, nn)
    runs = {"jpg-seed0": (data, 0, "jpg"), "nnunet-seed0": (nn, 0, "nnunet"), "jpg-seed1": (data, 1, "jpg")}
    for name, (src, seed, layout) in runs.items():
        cfg = proxy_config(seed)
        save_json(to_dict(cfg), work / f"{name}.json")
        for fold in range(folds):  # as `ichseg cv --config work/NAME.json`: a fold whose JSON exists is kept
            if not (results / name / f"fold{fold}.json").exists():
                run_member_fold(src, work / f"cv-{layout}", cfg, name, fold, folds, results, progress=False,
                                expected_size_px=image_size_px)  # fmt: skip
    summaries = {name: summarize_members(results / name, veto=False) for name in runs}
    common = summaries["jpg-seed0"]["operating_point"]
    body: dict[str, Any] = {"runs": {}, "common_point": common, "config": to_dict(proxy_config(0))}
    for name, s in summaries.items():
        pooled = [r for f in load_member_folds(results / name) for r in f["rows"]]
        body["runs"][name] = {
            "own_point": {**fold_values(s["pooled"]), "point": point_rule(s["operating_point"])[:3]},
            "common_point": fold_values(metrics_at(pooled, *point_rule(common))),
            "fold_mean": {k: v["mean"] for k, v in s["ablations"]["shipped rule"]["stats"].items()},
            "slices": s["slices"],
            "patients": s["patients"],
        }
    atomic_write_text(results / "parity.json", json.dumps(body, indent=1) + "\n")
    return body


def markdown(body: dict[str, Any]) -> str:
    lines = [
        "| run | scored at | " + " | ".join(KEYS) + " |",
        "|" + "---|" * (len(KEYS) + 2),
    ]
    for name, r in body["runs"].items():
        for where in ("own_point", "common_point"):
            v = r[where]
            lines.append(f"| {name} | {where.replace('_', ' ')} | " + " | ".join(
                "n/a" if v.get(k) is None else f"{v[k]:.3f}" for k in KEYS) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="CT-ICH JPG layout")
    p.add_argument("--work", type=Path, default=Path("runs/parity"))
    p.add_argument("--results", type=Path, default=Path("results/parity"))
    p.add_argument("--folds", type=int, default=5)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    body = run(a.data, a.work, a.results, a.folds)
    print(markdown(body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
