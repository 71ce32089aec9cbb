"""Does ``ichseg finetune`` recover what a new scanner costs? A site made from CT-ICH patients.

``python -m ichseg.experiments.finetune_check --data ../shared/ct-ich --work runs/finetune
--results results/finetune`` exports ``--patients`` development patients as an nnU-Net
folder in HU and passes every volume through a "new scanner" (:func:`new_scanner_hu`: a
contrast stretch about brain grey, a sharper kernel and more quantum noise: the stress
test's harmful perturbations, in HU). ``ichseg finetune`` adapts the model on part of that
site and scores its held-out patients before and after. The same held-out patients are
also scored by the base model on their original, unperturbed JPGs: what the new scanner
cost is that score minus "before", and what fine-tuning recovered is "after" minus "before".

The shipped model was trained on all 66 development patients, so every absolute figure
here is on patients its members saw (the clean one most of all); the comparison that this
measures is the cost and the recovery, on the same patients, by the same pipeline.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.files import atomic_write_text

log = logging.getLogger(__name__)

STRETCH = 1.3  # the stress test's strong contrast (×1.3 about brain grey)
ABOUT_HU = 40.0  # brain-window grey 128
SHARP_AMOUNT = 1.0  # unsharp mask, sigma 1 px
NOISE_HU = 6.0  # Gaussian, about twice CT-ICH's brain noise


def new_scanner_hu(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(slices, rows, columns) HU as another scanner would show them (module docstring)."""
    import cv2

    out = ABOUT_HU + STRETCH * (hu.astype(np.float32) - ABOUT_HU)
    for k in range(len(out)):
        blur = cv2.GaussianBlur(out[k], (0, 0), 1.0)
        out[k] = out[k] + SHARP_AMOUNT * (out[k] - blur)
    out += rng.normal(0.0, NOISE_HU, out.shape).astype(np.float32)
    return np.clip(out, -1024, 3071)


def make_site(data: Path, site: Path, patients: list[str], seed: int = 0) -> Path:
    """The perturbed nnU-Net folder of ``patients`` (kept if already made)."""
    import nibabel as nib

    from ichseg.data.export_nnunet import export_nnunet

    if (site / "dataset.json").exists() and (site / "perturbed.json").exists():
        return site
    export_nnunet(data, site, patients)
    rng = np.random.default_rng(seed)
    for f in sorted((site / "imagesTr").glob("*_0000.nii.gz")):
        img = nib.load(str(f))
        hu = np.asarray(img.get_fdata(dtype=np.float32)).transpose(2, 1, 0)
        out = new_scanner_hu(hu, rng).transpose(2, 1, 0)
        hdr = img.header.copy()
        hdr.set_data_dtype(np.int16)
        new = nib.Nifti1Image(np.round(out).astype(np.int16), img.affine, hdr)
        new.header.set_slope_inter(1.0, 0.0)
        tmp = f.with_name(f".{f.name}.tmp.nii.gz")
        nib.save(new, str(tmp))
        tmp.replace(f)
    how = {"stretch": STRETCH, "about_hu": ABOUT_HU, "sharp_amount": SHARP_AMOUNT, "noise_hu": NOISE_HU, "seed": seed}
    atomic_write_text(site / "perturbed.json", json.dumps(how, indent=1) + "\n")
    return site


def run(data: Path, work: Path, results: Path, n_patients: int, model: Path | None = None, **ft_kw: Any) -> dict[str, Any]:
    from ichseg.data.ctich import build_index
    from ichseg.data.splits import select, split_patients
    from ichseg.evaluate.report import ensure_caches, evaluate_records
    from ichseg.experiments.finetune import FinetuneConfig, finetune, held_out_scores
    from ichseg.infer.pipeline import load_bundle
    from ichseg.infer.shipped import default_model_dir

    model = Path(model) if model is not None else default_model_dir()
    records = build_index(data).records
    # the site: a stratified share of the development patients
    pick = split_patients(records, n_patients / len({r.patient_id for r in records}), seed=7)["val"]
    site = make_site(data, work / "site", pick)
    ft = FinetuneConfig(**ft_kw)
    result = finetune(model, site, work / "model", ft, work_dir=work / "finetune-work")
    held = result["held_out_patients"]
    base = load_bundle(model)
    clean = ensure_caches(base, select(records, held), work / "clean-cache")
    result["held_out"]["clean_jpg_base_model"] = held_out_scores(evaluate_records(base, clean, work / "clean-cache").metrics)
    result["site"] = {"patients": pick, "perturbation": json.loads((site / "perturbed.json").read_text())}
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / "finetune_check.json", json.dumps(result, indent=1) + "\n")
    return result


def markdown(r: dict[str, Any]) -> str:
    h = r["held_out"]
    rows = [("base model, original JPGs", h["clean_jpg_base_model"]), ("base model, new scanner", h["before"]),
            ("fine-tuned, new scanner", h["after"])]  # fmt: skip
    keys = list(h["before"])
    lines = ["| held-out patients | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for name, v in rows:
        lines.append(f"| {name} | " + " | ".join("n/a" if v[k] is None else f"{v[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="CT-ICH JPG layout")
    p.add_argument("--work", type=Path, default=Path("runs/finetune"))
    p.add_argument("--results", type=Path, default=Path("results/finetune"))
    p.add_argument("--patients", type=int, default=36, help="how many development patients make the site")
    p.add_argument("--model", type=Path, default=None, help="base bundle (default: the shipped model)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--samples-per-epoch", type=int, default=256)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    r = run(a.data, a.work, a.results, a.patients, a.model, epochs=a.epochs, samples_per_epoch=a.samples_per_epoch)
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
