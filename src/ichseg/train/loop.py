"""The training loop, short enough to read in one sitting.

One function trains either stage: the U-Net on masks (monitor: validation Dice) or the
classifier on slice labels (monitor: validation ROC AUC). Data arrive as in-memory uint8
arrays, which for CT-ICH at CPU resolutions fit easily in RAM and avoid loader overhead.

Why it is long: the loop, its precision handling (bf16 autocast, channels-last) and its
resumable state are one piece of control flow; split, the resume logic would be read apart
from the loop it restores.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc
from torch import nn

from ichseg.config import ClassifierConfig, TrainConfig, UNetConfig, to_dict
from ichseg.credits import DATASET_CREDIT
from ichseg.files import atomic_write
from ichseg.hardware import describe, resolve_precision
from ichseg.models import build_model, count_parameters
from ichseg.models.weights import save_model
from ichseg.train.augment import augment_batch, build_augmenter, crop_batch
from ichseg.train.checkpoint import load_resume, save_resume
from ichseg.train.losses import SegmentationLoss
from ichseg.train.sampling import epoch_indices

log = logging.getLogger(__name__)
HISTORY_FIELDS = ("epoch", "train_loss", "train_score", "val_loss", "val_score", "seconds")


@dataclass
class Arrays:
    """A split held in memory: images uint8 (N, C, S, S), masks bool (N, S, S), labels (N,)
    (hemorrhage, for sampling and monitoring) and classifier targets (N, heads)."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    targets: np.ndarray | None = None

    def classifier_targets(self) -> np.ndarray:
        return self.targets if self.targets is not None else self.labels[:, None]

    def take(self, keep: np.ndarray) -> Arrays:
        """The rows ``keep`` (indices) of every array: one place that knows the fields, so a
        subset never drops the classifier targets."""
        targets = None if self.targets is None else self.targets[keep]
        return Arrays(self.images[keep], self.masks[keep], self.labels[keep], targets)


@dataclass
class TrainResult:
    best_score: float
    best_epoch: int
    epochs_run: int
    seconds: float
    history: list[dict[str, float]]
    stopped_early: bool


def to_tensor(images_u8: np.ndarray, channels_last: bool) -> torch.Tensor:
    """uint8 → float in [0, 1] (the paper's /255)."""
    x = torch.from_numpy(images_u8).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def hflip_batch(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip a random half of the batch left-right (the head is roughly symmetric); the
    generator is seeded by (seed, epoch, step) so a resumed run flips the same slices."""
    flip = rng.random(len(images)) < 0.5
    if not flip.any():
        return images, masks
    images, masks = images.copy(), masks.copy()
    images[flip] = images[flip][..., ::-1]
    masks[flip] = masks[flip][..., ::-1]
    return images, masks


def dice_sums(logits: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """(intersection, predicted, true) pixel counts at probability 0.5 (logit 0)."""
    pred = logits > 0
    truth = masks.bool()
    return np.array([(pred & truth).sum().item(), pred.sum().item(), truth.sum().item()], float)


def dice_from_sums(s: np.ndarray) -> float:
    """Global Dice from summed counts; 1.0 when nothing is predicted or true."""
    denom = s[1] + s[2]
    return float(2 * s[0] / denom) if denom else 1.0


def head_targets(slice_targets: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Slice-head targets (B, heads) for what the network was shown: a crop of a slice
    with blood that holds none of it is a normal image, so every head is 0 there; a crop
    with blood keeps the slice's flags (hemorrhage first, then its subtypes)."""
    has_blood = masks.reshape(len(masks), -1).any(1).astype(np.float32)
    out = slice_targets.astype(np.float32) * has_blood[:, None]
    out[:, 0] = has_blood
    return out


def seg_logits(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The mask logits of a U-Net's output (the first of two when it has slice heads)."""
    return out[0] if isinstance(out, tuple) else out


def resolve_device(name: str) -> torch.device:
    """``TrainConfig.device`` as a torch device; asking for a GPU torch cannot see is an
    error, not a silent fall-back to hours of CPU training."""
    if name == "cpu":
        return torch.device("cpu")
    if name in ("cuda", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if name == "cuda":
            raise ValueError(f"device 'cuda': this torch ({torch.__version__}) sees no GPU; use 'cpu' or 'auto'")
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r} (cpu, cuda or auto)")


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision == "bf16"``, else a no-op. Convolutions
    and matrix products run in bf16; the loss, the optimizer state and the weights stay
    float32 (autocast keeps reductions and losses in float32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_precision(config: TrainConfig, device: torch.device) -> tuple[str, str]:
    """The precision the training steps run at, and why (GPUs: bf16 when asked and
    supported; CPUs: :func:`ichseg.hardware.resolve_precision`)."""
    if device.type == "cuda":
        if config.precision in ("bf16", "auto") and torch.cuda.is_bf16_supported():
            return "bf16", "GPU with bf16"
        return "fp32", "float32 on the GPU"
    return resolve_precision(config.precision, "torch")


@torch.no_grad()
def validate(
    model: nn.Module,
    data: Arrays,
    segmenter: bool,
    loss_fn: nn.Module,
    channels_last: bool,
    batch: int = 16,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> tuple[float, float]:
    """(mean loss, score): global Dice for the U-Net, ROC AUC for the classifier; both NaN
    with no validation slices (fixed-length training on every patient)."""
    if not len(data.images):
        return float("nan"), float("nan")
    model.eval()
    losses, sums, scores = [], np.zeros(3), []
    for i in range(0, len(data.images), batch):
        x = to_tensor(data.images[i : i + batch], channels_last).to(device or "cpu")
        with autocast_for(precision, x.device):
            out = model(x)
        out = tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()
        if segmenter:
            y = torch.from_numpy(data.masks[i : i + batch]).unsqueeze(1).float().to(x.device)
            sums += dice_sums(seg_logits(out), y)
            if isinstance(out, tuple):  # U-Net with slice heads: their targets too
                y = (y, torch.from_numpy(data.classifier_targets()[i : i + batch]).float().to(x.device))
        else:
            y = torch.from_numpy(data.classifier_targets()[i : i + batch]).float().to(out.device)
            scores.append(torch.sigmoid(out[:, 0]).cpu())
        losses.append(loss_fn(out, y).item() * len(x))
    model.train()
    loss = float(np.sum(losses) / max(len(data.images), 1))
    if segmenter:
        return loss, dice_from_sums(sums)
    y_all = torch.from_numpy(data.labels).float()
    if y_all.min() == y_all.max():
        return loss, float("nan")
    return loss, float(compute_roc_auc(torch.cat(scores), y_all))


def set_train_mode(model: nn.Module, freeze_batchnorm: bool = False) -> None:
    """``model.train()``, with every batch-norm layer back in eval mode when
    ``freeze_batchnorm`` (TrainConfig.freeze_batchnorm: a fine-tune keeps the base model's
    normalisation; its affine weights still train)."""
    model.train()
    if freeze_batchnorm:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def train_model(
    model_config: UNetConfig | ClassifierConfig,
    config: TrainConfig,
    train: Arrays,
    val: Arrays,
    out_dir: Path,
    *,
    meta: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train with early stopping; writes ``best``/``last`` checkpoints, ``history.csv`` and a
    resumable state into ``out_dir``. ``init_state``: start from these weights (a
    fine-tune) instead of a fresh initialisation; a resumed run's checkpoint wins over it.

    ``max_steps`` stops after that many optimizer steps counted over the whole run, as a
    kill would (tests use it to prove that ``resume`` continues exactly).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Denormal gradients slow CPU backward passes ~5×; this only reaches torch's worker
    # threads if they do not exist yet, which is why the CLI also sets it at start-up.
    torch.set_flush_denormal(True)
    segmenter = isinstance(model_config, UNetConfig)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = build_model(model_config)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device)  # before the optimizer, so its state lives there too
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    log.info("%s: %s parameters", type(model).__name__, f"{count_parameters(model):,}")
    rank, world = _world()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = (
        SegmentationLoss(config.head_loss_weight, config.lesion_max_weight, config.lesion_area_px, config.lesion_thickness_px)
        if segmenter
        else nn.BCEWithLogitsLoss()
    )
    heads = bool(getattr(model_config, "heads", ())) and segmenter
    aug = build_augmenter(config, tuple(getattr(model_config, "windows", ())))
    n_samples = config.samples_per_epoch or len(train.images)
    steps_per_epoch = -(-n_samples // config.batch_size)
    precision, why = training_precision(config, device)
    log.info("training at %s (%s)", precision, why)
    meta = {
        **(meta or {}),
        "train_config": to_dict(config),
        "dataset_credit": DATASET_CREDIT,
        "train_hardware": describe(precision, why),
    }

    state: dict[str, Any] = {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "history": [],
        "best_score": -1.0,
        "best_epoch": -1,
        "since_best": 0,
        "run_sums": [0.0, 0.0, 0.0, 0.0],
        "seconds": 0.0,
    }
    if resume:
        state = load_resume(out_dir, model, optimizer) or state
    core = model  # the bare network: what is validated and saved
    if world > 1:
        if any(0 < b < world for b in (config.batch_size, n_samples % config.batch_size)):
            raise ValueError(f"every batch needs at least {world} slices to split over {world} processes")
        from torch.nn.parallel import DistributedDataParallel

        # averages gradients over processes (gloo on CPUs, NCCL on GPUs); same start weights
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    stopped_early = state.get("stopped_early", False)
    set_train_mode(core, config.freeze_batchnorm)
    t_start = time.perf_counter() - state["seconds"]

    while state["epoch"] < config.epochs and not stopped_early:
        epoch = state["epoch"]
        order = epoch_indices(train.labels, n_samples, config.positive_fraction, config.seed, epoch)
        t_epoch = time.perf_counter()
        bar = None
        if progress and rank == 0:
            from tqdm import tqdm

            bar = tqdm(
                total=steps_per_epoch,
                initial=state["step_in_epoch"],
                desc=f"{'unet' if segmenter else 'classifier'} epoch {epoch + 1}/{config.epochs}",
                leave=False,
            )
        # run_sums = [loss·n, n, then Dice sums (I, P+T) or accuracy sums]
        for step in range(state["step_in_epoch"], steps_per_epoch):
            idx = np.sort(order[step * config.batch_size : (step + 1) * config.batch_size])
            images, masks = train.images[idx], train.masks[idx]
            if segmenter and config.crop_px:
                images, masks = crop_batch(images, masks, config.crop_px, np.random.default_rng([config.seed, epoch, step, 1]))
            if config.hflip:
                images, masks = hflip_batch(images, masks, np.random.default_rng([config.seed, epoch, step]))
            if aug is not None:
                floats, masks = augment_batch(aug, images.astype(np.float32) / 255, masks, [config.seed, epoch, step])
                x = torch.from_numpy(floats)
                x = x.contiguous(memory_format=torch.channels_last) if config.channels_last else x
            else:
                x = to_tensor(images, config.channels_last)
            if segmenter:
                y = torch.from_numpy(masks).unsqueeze(1).float()
            else:
                y = torch.from_numpy(train.classifier_targets()[idx]).float()
            yh = torch.from_numpy(head_targets(train.classifier_targets()[idx], masks)).float() if heads else None
            if world > 1:  # every process prepares the whole batch (same augmentation), trains on its share
                share = np.array_split(np.arange(len(idx)), world)[rank]
                x, y, idx = x[share], y[share], idx[share]
                yh = yh[share] if yh is not None else None
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast_for(precision, device):
                out = model(x)
            out = tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()
            loss = loss_fn(out, (y, yh.to(device)) if heads else y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(config, state["global_step"], config.epochs * steps_per_epoch)
            optimizer.step()
            if segmenter:
                s = dice_sums(seg_logits(out).detach(), y)
                step_sums = [loss.item() * len(idx), len(idx), s[0], s[1] + s[2]]
            else:
                correct = float(((out.detach()[:, 0] > 0).float() == y[:, 0]).sum())
                step_sums = [loss.item() * len(idx), len(idx), correct, len(idx)]
            rs = state["run_sums"]
            for k, v in enumerate(_all_sum(step_sums, world, device)):
                rs[k] += v
            running = (2 * rs[2] / rs[3] if segmenter else rs[2] / rs[3]) if rs[3] else 1.0
            state["step_in_epoch"] = step + 1
            state["global_step"] += 1
            # a fold resumed on another kind of CPU may change precision: count both
            steps_at = state.setdefault("steps_by_precision", {})
            steps_at[precision] = steps_at.get(precision, 0) + 1
            if bar is not None:
                bar.set_postfix(loss=f"{rs[0] / rs[1]:.4f}", **{"dice" if segmenter else "acc": f"{running:.3f}"})
                bar.update(1)
            if max_steps is not None and state["global_step"] >= max_steps:
                state["seconds"] = time.perf_counter() - t_start
                if rank == 0:
                    save_resume(out_dir, core, optimizer, state)
                _barrier(world)
                if bar is not None:
                    bar.close()
                log.info("stopping after %d steps (max_steps)", max_steps)
                return TrainResult(state["best_score"], state["best_epoch"], epoch, state["seconds"], state["history"], False)
            if config.resume_every_steps and state["global_step"] % config.resume_every_steps == 0:
                state["seconds"] = time.perf_counter() - t_start
                if rank == 0:
                    save_resume(out_dir, core, optimizer, state)
        if bar is not None:
            bar.close()

        rs = state["run_sums"]
        # process 0 validates and tells the others, so all take the same early-stopping path
        val_loss, val_score = _broadcast(
            validate(core, val, segmenter, loss_fn, config.channels_last, device=device, precision=precision)
            if rank == 0
            else (0.0, 0.0),
            world,
            device,
        )
        set_train_mode(core, config.freeze_batchnorm)  # validate() leaves every layer in train mode
        row = {
            "epoch": epoch + 1,
            "train_loss": rs[0] / max(rs[1], 1),
            "train_score": float(2 * rs[2] / rs[3] if segmenter else rs[2] / rs[3]) if rs[3] else 1.0,
            "val_loss": val_loss,
            "val_score": val_score,
            "seconds": time.perf_counter() - t_epoch,
        }
        state["history"].append(row)
        log.info(
            "epoch %d: train loss %.4f score %.4f | val loss %.4f score %.4f | %.0fs",
            row["epoch"],
            row["train_loss"],
            row["train_score"],
            val_loss,
            val_score,
            row["seconds"],
        )
        epoch_meta = {**meta, "epoch": epoch + 1, "val_score": val_score}
        if np.isnan(val_score) or val_score > state["best_score"]:
            state["best_score"], state["best_epoch"], state["since_best"] = (
                (0.0 if np.isnan(val_score) else val_score),
                epoch + 1,
                0,
            )
            if rank == 0:
                save_model(core, model_config, out_dir / "best", epoch_meta)
        else:
            state["since_best"] += 1
        if rank == 0:
            save_model(core, model_config, out_dir / "last", epoch_meta)
            write_history(state["history"], out_dir / "history.csv")
        state.update(epoch=epoch + 1, step_in_epoch=0, run_sums=[0.0, 0.0, 0.0, 0.0])
        if state["since_best"] >= config.patience and state["epoch"] >= config.min_epochs:
            stopped_early = True
            log.info("early stop: no better validation score for %d epochs", config.patience)
        state["stopped_early"] = stopped_early
        state["seconds"] = time.perf_counter() - t_start
        if rank == 0:
            save_resume(out_dir, core, optimizer, state)
        _barrier(world)

    return TrainResult(
        state["best_score"], state["best_epoch"], state["epoch"], state["seconds"], state["history"], stopped_early
    )


def _world() -> tuple[int, int]:
    """(rank, world size) of a torch.distributed run (e.g. under torchrun), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: list[float], world: int, device: torch.device) -> list[float]:
    """Sum over processes; the tensor sits on the training device, as NCCL requires."""
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _broadcast(values: tuple[float, float], world: int, device: torch.device) -> tuple[float, float]:
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t[0]), float(t[1])


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def learning_rate_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) under ``config.lr_schedule``."""
    if config.lr_schedule == "constant":
        return config.learning_rate
    if config.lr_schedule == "cosine":
        return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r} (constant or cosine)")


def write_history(history: list[dict[str, float]], path: Path) -> None:
    """Per-epoch history as CSV (rewritten whole each epoch, atomically)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS, lineterminator="\n")
            w.writeheader()
            w.writerows(history)

    atomic_write(path, write)


def read_history(path: Path) -> list[dict[str, float]]:
    """Load ``history.csv`` as floats."""
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
