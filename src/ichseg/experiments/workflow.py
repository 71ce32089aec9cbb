"""The explicit stages (index → preprocess → split → train → bundle), each leaving files
in the work folder so any stage can be rerun or inspected on its own."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichseg.config import ClassifierConfig, PipelineConfig, RunConfig, UNetConfig, load_json, save_json, to_dict
from ichseg.data.cache import SliceCache
from ichseg.data.ctich import IndexResult, SliceRecord, write_disagreements, write_index
from ichseg.data.datasets import index_dataset
from ichseg.data.normalize import normalize_for
from ichseg.data.splits import load_split, save_split, select, split_patients
from ichseg.files import sha256_text
from ichseg.train.loop import Arrays, TrainResult, train_model

log = logging.getLogger(__name__)


def git_commit() -> str:
    """The source commit, recorded beside weights so a result can be traced to code."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def index_stage(data_dir: Path, work_dir: Path, *, skip_bad: bool = False, expected_size_px: int | None = 650) -> IndexResult:
    """Write ``index.csv``, ``label_disagreements.csv`` and ``dataset.json`` (the layout and,
    for labelled volumes, the label mapping: :mod:`ichseg.data.volumes`) into ``work_dir``."""
    result = index_dataset(data_dir, expected_size_px=expected_size_px, skip_bad=skip_bad)
    write_index(result.records, Path(work_dir) / "index.csv")
    save_json(result.meta, Path(work_dir) / "dataset.json")
    write_disagreements(result.disagreements, Path(work_dir) / "label_disagreements.csv")
    return result


@dataclass
class Prepared:
    records: list[SliceRecord]
    split: dict[str, list[str]]
    work_dir: Path
    config: RunConfig
    data_checksum: str
    cache_root: Path


def cache_for(cache_root: Path, config: RunConfig, size_px: int) -> SliceCache:
    """The cache at one resolution, with the run's interpolation and mask threshold."""
    return SliceCache.at_size(Path(cache_root), config.preprocess, size_px)


def prepare(
    data_dir: Path,
    work_dir: Path,
    config: RunConfig,
    *,
    skip_bad: bool = False,
    progress: bool = True,
    expected_size_px: int | None = 650,
    split: dict[str, list[str]] | None = None,
    cache_root: Path | None = None,
) -> Prepared:
    """Index, preprocess at every resolution the run needs, and split by patient.

    ``split`` overrides the config's 80/20 split (cross-validation folds pass theirs);
    ``cache_root`` lets several work folders share one preprocessing cache.
    """
    work_dir = Path(work_dir)
    cache_root = Path(cache_root) if cache_root is not None else work_dir / "cache"
    work_dir.mkdir(parents=True, exist_ok=True)
    result = index_stage(data_dir, work_dir, skip_bad=skip_bad, expected_size_px=expected_size_px)
    records = result.records
    nets = [config.unet] + ([config.classifier] if "classifier" in config.stages else [])
    windows = tuple(sorted({w for n in nets for w in n.windows}))
    sizes = sorted({n.input_size_px for n in nets} | {config.pipeline.eval_size_px})
    for size in sizes:
        records = cache_for(cache_root, config, size).build(records, windows, skip_bad=skip_bad, progress=progress)
    manifest = load_json(cache_for(cache_root, config, sizes[0]).manifest_path)["files"]
    checksum = sha256_text(
        "".join(f"{k}={manifest[k]['sha256']};" for k in sorted(manifest) if k.split("/")[0] in {r.patient_id for r in records})
    )
    split_path = work_dir / "split.json"
    if split is None:
        split = split_patients(records, config.val_fraction, config.split_seed)
    elif set(split["train"]) & set(split["val"]):
        raise ValueError("split has patients in both train and val")
    if split_path.exists() and load_split(split_path) != split:
        log.warning("%s differs from the split this config gives; rewriting it", split_path)
    save_split(split, split_path, seed=config.split_seed, val_fraction=config.val_fraction)
    save_json(to_dict(config), work_dir / "config.json")
    log.info(
        "%d slices, %d patients (%d train / %d val)",
        len(records),
        len({r.patient_id for r in records}),
        len(split["train"]),
        len(split["val"]),
    )
    return Prepared(records, split, work_dir, config, checksum, cache_root)


def load_arrays(
    prep: Prepared,
    part: str,
    size_px: int,
    windows: tuple[str, ...],
    context_slices: int = 0,
    heads: tuple[str, ...] = ("hemorrhage",),
    model_config: UNetConfig | ClassifierConfig | None = None,
) -> Arrays:
    """One split part at one resolution, in memory, with 2.5D neighbours and the
    classifier's targets (one column per head, read from the index); normalised per study
    as ``model_config`` asks."""
    recs = select(prep.records, prep.split[part])
    images, masks = cache_for(prep.cache_root, prep.config, size_px).load(recs, windows, context_slices)
    if model_config is not None:
        images = normalize_for(model_config, images, [r.patient_id for r in recs])
    labels = np.array([r.hemorrhage for r in recs], np.int64)
    targets = np.array([[getattr(r, h) for h in heads] for r in recs], np.float32).reshape(len(recs), len(heads))
    return Arrays(images, masks, labels, targets)


def subset_negatives(data: Arrays, max_negatives: int, seed: int) -> Arrays:
    """Every positive slice plus a fixed random ``max_negatives`` of the negatives."""
    neg = np.flatnonzero(data.labels == 0)
    if len(neg) <= max_negatives:
        return data
    keep = np.sort(
        np.concatenate([np.flatnonzero(data.labels != 0), np.random.default_rng(seed).choice(neg, max_negatives, replace=False)])
    )
    return data.take(keep)


def train_stage(
    prep: Prepared, which: str, *, resume: bool = False, progress: bool = True, max_steps: int | None = None
) -> TrainResult:
    """Train ``which`` ("unet" or "classifier") into ``work_dir/train/<which>/``."""
    cfg = prep.config
    model_cfg, train_cfg = (cfg.unet, cfg.train_unet) if which == "unet" else (cfg.classifier, cfg.train_classifier)
    size, windows = model_cfg.input_size_px, tuple(model_cfg.windows)
    heads = tuple(getattr(model_cfg, "heads", ("hemorrhage",)))
    train = load_arrays(prep, "train", size, windows, model_cfg.context_slices, heads, model_cfg)
    val = load_arrays(prep, "val", size, windows, model_cfg.context_slices, heads, model_cfg)
    if train_cfg.val_max_negatives:
        val = subset_negatives(val, train_cfg.val_max_negatives, train_cfg.seed)
    meta = {
        "git_commit": git_commit(),
        "seed": train_cfg.seed,
        "data_checksum": prep.data_checksum,
        "train_patients": prep.split["train"],
        "val_patients": prep.split["val"],
        "preprocess": to_dict(dataclasses.replace(cfg.preprocess, size_px=size)),
    }
    return train_model(
        model_cfg,
        train_cfg,
        train,
        val,
        prep.work_dir / "train" / which,
        meta=meta,
        resume=resume,
        progress=progress,
        max_steps=max_steps,
    )


def gate_threshold(probs: np.ndarray, labels: np.ndarray, sensitivity: float) -> float:
    """The highest classifier threshold whose recall on (probs, labels) is ≥ ``sensitivity``.

    A gate exists to skip obviously normal slices, not to decide: it should let nearly
    every bleed through to the U-Net, which makes the call.
    """
    pos = np.sort(np.asarray(probs)[np.asarray(labels).astype(bool)])
    if not len(pos):
        raise ValueError("no positive slices to calibrate the gate on")
    allowed_misses = int(np.floor((1 - sensitivity) * len(pos) + 1e-9))
    return float(pos[allowed_misses])


def bundle_stage(work_dir: Path, config: RunConfig, checkpoint: str = "best", prep: Prepared | None = None) -> Path:
    """Gather the chosen checkpoints and the pipeline settings into ``work_dir/model/``,
    the folder that ``ichseg predict`` and ``ichseg evaluate`` load.

    With ``config.pipeline.gate_sensitivity`` set, the classifier threshold is calibrated
    on the validation part of ``prep`` and stored in ``pipeline.json``.
    """
    work_dir = Path(work_dir)
    out = work_dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    for which in ("classifier", "unet"):
        for ext in (".safetensors", ".json"):
            src = work_dir / "train" / which / f"{checkpoint}{ext}"
            if not src.exists():
                raise FileNotFoundError(f"{src}: no {which} checkpoint (train it first)")
            tmp = out / f".{which}{ext}.tmp"
            shutil.copyfile(src, tmp)
            tmp.replace(out / f"{which}{ext}")
    pipeline = config.pipeline
    extra: dict[str, object] = {}
    if pipeline.gate_sensitivity is not None or pipeline.tune_operating_point:
        if prep is None or not prep.split["val"]:
            raise ValueError("calibrating the gate or the operating point needs validation patients (pass prep)")
        from ichseg.infer.pipeline import classify
        from ichseg.models.weights import load_model

        model, ccfg, _ = load_model(out / "classifier")
        val = load_arrays(prep, "val", ccfg.input_size_px, tuple(ccfg.windows), ccfg.context_slices)
        probs = classify(model, val.images)[:, 0]
        calibration: dict[str, object] = {"on": "validation patients", "patients": prep.split["val"]}
        if pipeline.gate_sensitivity is not None:
            threshold = gate_threshold(probs, val.labels, pipeline.gate_sensitivity)
            pipeline = dataclasses.replace(pipeline, classifier_threshold=threshold)
            calibration.update(
                classifier_threshold=threshold, gate_sensitivity=pipeline.gate_sensitivity, positive_slices=int(val.labels.sum())
            )
            log.info(
                "gate threshold %.4f keeps %.0f%% of %d validation bleeds",
                threshold,
                100 * pipeline.gate_sensitivity,
                int(val.labels.sum()),
            )
        if pipeline.tune_operating_point:
            pipeline, rows = tune_operating_point(prep, out, pipeline, probs >= pipeline.classifier_threshold)
            calibration.update(mask_threshold=pipeline.mask_threshold, min_area_px=pipeline.min_area_px, grid=rows)
        extra["calibration"] = calibration
    save_json({"pipeline": to_dict(pipeline), "preprocess": to_dict(config.preprocess), **extra}, out / "pipeline.json")
    return out


def tune_operating_point(
    prep: Prepared, model_dir: Path, pipeline: PipelineConfig, gate_pass: np.ndarray, chunk: int = 32
) -> tuple[PipelineConfig, list[dict[str, object]]]:
    """Choose mask threshold and minimum area on the validation patients (see
    :mod:`ichseg.evaluate.operating_point`), with the U-Net run as at inference (TTA included)."""
    from ichseg.evaluate.operating_point import choose_operating_point, threshold_stats, with_operating_point
    from ichseg.infer.pipeline import segment
    from ichseg.models.weights import load_model

    unet, ucfg, _ = load_model(Path(model_dir) / "unet")
    x = load_arrays(prep, "val", ucfg.input_size_px, tuple(ucfg.windows), ucfg.context_slices)
    truth = load_arrays(prep, "val", pipeline.eval_size_px, ())
    chunks = (
        (segment(unet, x.images[i : i + chunk], pipeline.eval_size_px, tta_flip=pipeline.tta_flip), truth.masks[i : i + chunk])
        for i in range(0, len(x.images), chunk)
    )
    th, area, rows = choose_operating_point(threshold_stats(chunks), gate_pass, x.labels, policy=pipeline.operating_policy)
    log.info("operating point: mask threshold %.2f, min area %d px (on %d validation slices)", th, area, len(x.images))
    return with_operating_point(pipeline, th, area), rows


def training_summary(work_dir: Path) -> dict[str, dict[str, object]]:
    """Per stage: wall-clock training seconds (summed over resumed sessions), epochs, best epoch."""
    out: dict[str, dict[str, object]] = {}
    for which in ("classifier", "unet"):
        path = Path(work_dir) / "train" / which / "resume.json"
        if path.exists():
            st = load_json(path)
            out[which] = {
                "seconds": round(float(st["seconds"]), 1),
                "epochs_run": st["epoch"],
                "best_epoch": st["best_epoch"],
                "best_val_score": round(float(st["best_score"]), 4),
                "val_score": "Dice" if which == "unet" else "ROC AUC",
                "stopped_early": bool(st.get("stopped_early", False)),
                "steps_by_precision": st.get("steps_by_precision", {}),
            }
    return out


def hardware() -> dict[str, object]:
    """What the numbers were measured on (CPU model and kind, threads, versions)."""
    import torch

    from ichseg.hardware import describe

    return {**describe(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "gpu": torch.cuda.is_available()}
