"""What each figure in ``metrics.json`` and ``metrics.md`` means, the slice verdicts read off
the rule that actually ran (a two-stage gate, one network, or a fold ensemble), so the
definitions cannot drift from the code that computed the numbers."""

from __future__ import annotations

from typing import Any

from ichseg.config import PipelineConfig

#: What every metric means; the slice verdicts come from :func:`definitions`, which reads
#: them off the rule that ran.
DEFINITIONS = {
    "slice_metrics": "recall = TP/(TP+FN), precision = TP/(TP+FP), specificity = TN/(TN+FP); null when the denominator is 0",
    "pixel_metrics": "at 512x512; dice_global = 2*sum(I)/(sum(P)+sum(T)), iou_global = sum(I)/(sum(P)+sum(T)-sum(I)) over "
    "all evaluated slices; dice_mean_positive = mean per-slice Dice over slices with blood in truth",
    "empty_ground_truth_policy": "per-slice Dice is 1.0 when truth and prediction are both empty, 0.0 when only the "
    "prediction has blood (MONAI ignore_empty=False); it matters only for dice_mean_all",
    "pipeline_mask": "the U-Net mask on slices the pipeline calls positive, empty elsewhere",
    "subtype_auc": "per-slice ROC AUC of each subtype head against that flag in hemorrhage_diagnosis.csv; null when "
    "the model has no such head or the evaluated slices hold only one class",
}


def definitions(cfg: PipelineConfig, *, two_stage: bool, members: int = 1) -> dict[str, Any]:
    """The metric definitions with the slice verdicts spelled out for the rule ``cfg``
    describes (two-stage: a classifier gates the U-Net; else one network, or a fold
    ensemble of ``members`` averaged, whose slice head takes part as ``verdict_rule`` says)."""
    area = f"has >= {cfg.min_area_px} px at 512x512 after blobs smaller than that are removed"
    inside = " inside the intracranial mask" if cfg.intracranial else ""
    if two_stage:
        verdicts = {
            "pipeline": f"classifier probability >= {cfg.classifier_threshold:g} AND the U-Net mask (probability >= "
            f"{cfg.mask_threshold:g}{inside}) {area}; the classifier gates the U-Net",
            "unet_only": f"the U-Net mask on every slice {area} (no classifier)",
            "classifier": f"classifier probability >= {cfg.classifier_threshold:g}",
        }
    else:
        net = f"a fold ensemble of {members} U-Nets (probabilities averaged)" if members > 1 else "one U-Net"
        thr = f"probability >= {cfg.mask_threshold:g}"
        if cfg.verdict_rule == "outlined" and cfg.head_threshold is not None and cfg.head_mask_threshold is not None:
            thr += f" (>= {cfg.head_mask_threshold:g} on slices whose hemorrhage head is >= {cfg.head_threshold:g})"
        if cfg.head_veto_below is not None and cfg.head_veto_min_area_px is not None:
            area += (
                f", and >= {cfg.head_veto_min_area_px} px on slices whose hemorrhage head is < {cfg.head_veto_below:g} "
                "(the head's veto on small blobs)"
            )
        mask = f"the mask of {net} on every slice ({thr}{inside}) {area}"
        if cfg.verdict_rule == "fused" and cfg.head_threshold is not None:
            pipe = f"{mask}, OR its hemorrhage head >= {cfg.head_threshold:g} (verdict rule 'fused')"
        else:
            pipe = f"{mask} (verdict rule '{cfg.verdict_rule}': a slice is positive only where blood is outlined)"
        verdicts = {
            "pipeline": pipe,
            "unet_only": f"{mask} (the head plays no part)",
            "classifier": f"the network's hemorrhage head >= {cfg.head_threshold or 0.5:g}",
        }
    return {"slice_verdicts": verdicts, **DEFINITIONS}
