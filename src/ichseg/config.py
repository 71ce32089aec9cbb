"""All tunable settings in one typed place.

Configs are plain frozen dataclasses so they can be written as JSON beside every run and
every set of weights, and read back by inference without importing training code.

Why it is long: every setting of every stage, each dataclass beside the presets built from
it, so that one file answers "what ran"; the presets are data, not logic.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

WINDOWS = ("brain", "bone")
ALL_HEADS = ("hemorrhage", "intraventricular", "intraparenchymal", "subarachnoid", "epidural", "subdural", "fracture")


@dataclass(frozen=True)
class PreprocessConfig:
    """How source JPGs become model inputs (the paper: 650 → 512, /255, binarised masks)."""

    size_px: int = 512
    mask_threshold: float = 0.5  # on the [0, 1] resized mask; JPEG masks are not binary
    image_interpolation: str = "area"  # "area" or "bilinear"


@dataclass(frozen=True)
class UNetConfig:
    """The segmenter. Defaults are the paper's (1×512×512, 32/64/128/256 filters)."""

    input_size_px: int = 512
    base_filters: int = 32
    depth: int = 4
    windows: tuple[str, ...] = ("brain",)
    context_slices: int = 0  # neighbours on each side stacked as channels (2.5D)
    batch_norm: bool = False  # the paper has none
    output_prior: float | None = None  # initial blood probability of the output layer (None: bias 0)
    # Slice-level heads on the bottleneck (e.g. ALL_HEADS, hemorrhage first): one pass
    # gives the mask and the slice/subtype probabilities, so no separate classifier has
    # to agree with the mask before blood is reported.
    heads: tuple[str, ...] = ()
    # Per-study intensity normalisation of the brain window ("none" or "parenchyma"):
    # the study's brain-window grey levels are shifted so the median of its intracranial
    # parenchyma lands on ``normalize_reference`` (see ichseg.data.normalize). A scanner
    # whose calibration reads tissue brighter then looks like the training data.
    normalize: str = "none"
    normalize_reference: float = 122.0  # the median level of the 66 CT-ICH development patients at 192 px

    @property
    def in_channels(self) -> int:
        return len(self.windows) * (2 * self.context_slices + 1)


@dataclass(frozen=True)
class ClassifierConfig:
    """The stage-1 slice classifier: a small conv net, cheap enough to run on every slice."""

    input_size_px: int = 256
    base_filters: int = 16
    blocks: int = 5
    convs_per_block: int = 1  # 2 makes a VGG-style block: twice the depth for a few more ms per slice
    windows: tuple[str, ...] = ("brain",)
    context_slices: int = 0
    # Outputs, hemorrhage first; the others (subtypes, fracture) are extra heads whose
    # probabilities are reported, e.g. ("hemorrhage", "subdural", ..., "fracture").
    heads: tuple[str, ...] = ("hemorrhage",)

    @property
    def in_channels(self) -> int:
        return len(self.windows) * (2 * self.context_slices + 1)


@dataclass(frozen=True)
class TrainConfig:
    """The paper's protocol: BCE + Dice, Adam 1e-4, batch 8, ≤ 40 epochs, early stopping."""

    epochs: int = 40
    batch_size: int = 8
    learning_rate: float = 1e-4
    patience: int = 8  # epochs without a better validation score before stopping
    positive_fraction: float = 0.5  # share of positive slices drawn per epoch (oversampling)
    samples_per_epoch: int = 0  # 0 = as many as there are training slices
    seed: int = 0
    channels_last: bool = True  # faster convolutions on x86 CPUs
    resume_every_steps: int = 20  # how often a resumable state is written mid-epoch
    hflip: bool = False  # random left-right flips (the paper used no augmentation)
    affine: bool = False  # random rotation, scaling and shift (MONAI RandAffine)
    intensity: bool = False  # random contrast, brightness and noise
    # nnU-Net-style intensity and resolution augmentation on top of ``intensity``:
    # brightness ±0.1, contrast ×0.75–1.25 about the mean, gamma 0.7–1.5, noise, blur,
    # simulated low resolution (ichseg.train.augment)
    strong_intensity: bool = False
    # Scanner augmentation (ichseg.train.scanner_aug): what a hospital scanner's images
    # differ by from CT-ICH's video-exported JPGs: JPEG/video compression at several
    # qualities, sharp reconstruction kernels, the correlated noise of thin slices
    scanner: bool = False
    # With ``scanner``: the probability of a bright rim along the inner table of the skull
    # (ichseg.data.scanner.skull_rim_float), which other scanners show and CT-ICH barely does
    skull_rim: float = 0.0
    # Arithmetic of the training steps: "fp32"; "bf16" (autocast, with channels-last: 2.6-5.6x
    # faster on CPUs with AMX); or "auto" (bf16 where the CPU has native bf16 and a
    # child-process probe passes, else fp32; see ichseg.hardware). What ran is recorded.
    precision: str = "fp32"
    head_loss_weight: float = 0.5  # weight of the slice heads' BCE beside the mask's Dice+CE
    min_epochs: int = 0  # early stopping cannot end a run before this many epochs
    # Small/thin-bleed weighting of the mask's cross-entropy (ichseg.train.lesion_weights):
    # a blood component smaller than lesion_area_px or thinner than lesion_thickness_px (on
    # the network's grid) weighs max(sqrt(area ratio), thickness ratio), at most
    # lesion_max_weight; 0 (or 1) = off, the paper's plain BCE + Dice
    lesion_max_weight: float = 0.0
    lesion_area_px: float = 400.0
    lesion_thickness_px: float = 8.0
    # U-Net only: train on random crops of this size (0 = whole slices) taken from the
    # input_size_px images, centred near blood on positive slices (as nnU-Net's foreground
    # oversampling), so a high input resolution costs what a small one does per step.
    crop_px: int = 0
    # "constant", or "cosine": the learning rate decays from learning_rate to 0 over
    # all epochs (a pure function of the step, so resuming needs no scheduler state)
    lr_schedule: str = "constant"
    # Validate on every positive slice plus at most this many negatives (0 = all slices):
    # keeps per-epoch validation cheap at high resolution.
    val_max_negatives: int = 0
    # Where the networks train: "cpu"; "cuda" (the process's current GPU: under torchrun
    # the CLI gives each process the GPU of its LOCAL_RANK); or "auto" (cuda when this
    # torch build sees a GPU, else cpu). Results on a GPU differ from CPU ones by float
    # rounding, not by method.
    device: str = "cpu"
    # Fine-tuning: batch-norm layers stay in eval mode while the weights train, so the
    # normalisation each layer applies is the base model's (its statistics came from many
    # patients' augmented crops; a site's few dozen would replace them; ichseg finetune)
    freeze_batchnorm: bool = False


@dataclass(frozen=True)
class PipelineConfig:
    """How the two stages combine into a slice verdict and a mask."""

    classifier_threshold: float = 0.5
    # If set, the bundle step replaces classifier_threshold by the highest threshold that
    # keeps this share of the validation patients' hemorrhage slices through the gate.
    gate_sensitivity: float | None = None
    mask_threshold: float = 0.5  # on the U-Net probability, after upsampling to 512
    min_area_px: int = 20  # at 512×512; smaller predicted masks count as empty
    eval_size_px: int = 512
    # If set, the bundle step chooses mask_threshold and min_area_px on the validation
    # patients (see ichseg.evaluate.operating_point) instead of using the values above.
    tune_operating_point: bool = False
    operating_policy: str = "f2_dice"  # how tuning picks the point (ichseg.evaluate.operating_point.POLICIES)
    tta_flip: bool = False  # average the U-Net's output over the slice and its left-right mirror
    # "slice": a slice's whole mask is emptied when its area is below min_area_px (the
    # older rule); "component": each connected blob below min_area_px is removed on its
    # own (ichseg.infer.postprocess)
    speck_removal: str = "slice"
    intracranial: bool = False  # keep only blood inside the skull (mask from the bone window)
    # verdict fusion for a U-Net with slice heads: a slice is also positive when its
    # hemorrhage head is at least this (None: the mask alone decides)
    head_threshold: float | None = None
    # How a slice is called positive: "fused" (a blob survives, or the head alone reaches
    # head_threshold), or "outlined" (only a surviving blob: the verdict never contradicts
    # what is drawn). Under "outlined" the head helps the outline instead: on slices where
    # it reaches head_threshold the mask threshold drops to head_mask_threshold, and a
    # flagged slice that still has no blob is reported for review, not as positive.
    verdict_rule: str = "fused"
    head_mask_threshold: float | None = None
    # The head's veto on small blobs: on slices whose hemorrhage head is below
    # head_veto_below, a blob needs at least head_veto_min_area_px (px at 512×512) to stay
    # (None: no veto). Most false alarms on normal heads are small blobs on slices the head
    # doubts, while small true bleeds mostly sit on slices it flags (ichseg.evaluate.oof_grid).
    head_veto_below: float | None = None
    head_veto_min_area_px: int | None = None
    # fold ensembles: the first member screens every slice and the others join only where
    # it sees blood probability or a hemorrhage head of at least this (None: all members on
    # every slice). Elsewhere the first member's output stands for the ensemble's: a slice
    # it is that sure of cannot reach the mask threshold on the average unless the other
    # members are far more sure of blood than it is.
    screen_threshold: float | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything one `ichseg run` needs, saved as ``config.json`` in its output folder."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    train_unet: TrainConfig = field(default_factory=TrainConfig)
    train_classifier: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15, patience=5))
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    val_fraction: float = 0.2
    split_seed: int = 0
    # Which networks the run trains: ("classifier", "unet"), or ("unet",) for a U-Net
    # whose own heads give the slice verdict (no separate classifier).
    stages: tuple[str, ...] = ("classifier", "unet")
    # Cross-validation: early stopping and calibration on an inner validation split of
    # each fold's training patients (True), or fixed-length training on all of them with
    # the operating point chosen afterwards on the pooled out-of-fold predictions (False,
    # nnU-Net's way, and what a fold ensemble needs).
    cv_inner_validation: bool = True


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass → JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass, rejecting unknown keys so typos are not ignored."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    hints = _resolved_types(cls)
    for name, value in data.items():
        ftype = hints[name]
        if dataclasses.is_dataclass(ftype):
            kwargs[name] = from_dict(ftype, value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _resolved_types(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def save_json(data: dict[str, Any], path: Path) -> None:
    """Atomic JSON write: a crash never leaves a half-written config behind."""
    from ichseg.files import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def load_json(path: Path) -> dict[str, Any]:
    """Read JSON with an error that names the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read JSON ({exc})") from exc


def preset(name: str) -> RunConfig:
    """Named configurations.

    - ``paper``: the paper's exact networks at 512×512 (about 3.5 s per slice per training
      step on 2 CPU cores: for a GPU, or for a few epochs).
    - ``paper-cpu``: the paper's protocol (no batch-norm, lr 1e-4, no augmentation for the
      U-Net) with a cheaper U-Net: 192×192 input, 16 base filters.
    - ``cpu``: the default on 2 CPU cores: the same cheaper U-Net with batch-norm, lr 1e-3
      and flip/affine/intensity augmentation, which generalises where ``paper-cpu``
      memorises; the classifier also predicts the subtypes and fracture.
    - ``fast``: for cross-validation sweeps: 128×128 inputs, 400 slices per epoch, about
      6 minutes per fold.
    - ``fast-ctx``: ``fast`` with brain and bone windows and one neighbouring slice on
      each side as input channels (2.5D).
    - ``hires``: ``fast-ctx`` with a 256×256 U-Net trained on 128×128 crops, an operating
      point tuned on validation patients, and flip test-time augmentation.
    - ``hires-long``: ``hires`` with 22 U-Net epochs under a cosine learning-rate decay and
      a classifier of two convolutions per block.
    - ``hires-xl``: ``hires-long`` with twice the U-Net samples per epoch (800): the
      shipped model underfits its own training data, so more training is the next lever.
    - ``robust``: the fold-ensemble member: a 192×192 U-Net (16 filters, 6 channels)
      with slice and subtype heads on its bottleneck, per-study parenchyma normalisation,
      strong intensity/resolution augmentation, whole slices (every pixel of a normal
      slice is a negative), fixed cosine schedule, no classifier, no early stopping.
    - ``robust-crop``: ``robust`` trained on 128×128 crops of its 192×192 slices, centred
      near blood on slices with blood (four times the blood pixels per step of whole
      slices, on which ``robust`` under-segmented large bleeds), with slice-head targets
      taken from each crop; 24 epochs of 800 crops, half with blood.
    - ``robust-384``: ``robust-crop`` at twice the resolution where thin bleeds live: a
      384×384 U-Net (a 650-px frame shrunk 1.7×, not 3.4×, so a 2-3 mm epidural crescent
      is 4-6 pixels wide) trained on 256×256 crops, 36 epochs of 800 crops, with the
      scanner augmentation, at bf16 where the CPU has it (``precision="auto"``).
    - ``robust-384-rim``: ``robust-384`` whose scanner augmentation also draws, on 30 % of
      the crops, a bright rim along the inner table of the skull (5-30 HU, not blood), as
      a real scanner head from outside CT-ICH showed and the shipped model outlined.
    - ``robust-384-long``: ``robust-384`` trained twice as long (72 epochs of 800 crops,
      the same cosine decay stretched over them): at epoch 36 the training-crop Dice was
      still rising and the released network fits its own training patients at Dice 0.79
      with one bleeding patient uncalled, so the schedule, not the data, is the next lever.
    - ``robust-384-small``: ``robust-384`` whose mask cross-entropy weighs each blood
      component smaller than 400 px or thinner than 8 px (on the 384-px grid, where a 2-3 mm
      crescent is 4-6 px wide) by up to 6×, so the small and thin bleeds it misses pull on
      the loss as a large one does (ichseg.train.lesion_weights).
    - ``robust-384-tta``: ``robust-384``'s networks, trained the same way, scored and shipped
      with flip test-time augmentation (each slice and its left-right mirror averaged):
      twice the U-Net's inference cost for fewer isolated false-positive blobs.
    - ``robust-384-lite``: ``robust-384`` with 8 base filters instead of 16: a quarter of the
      network's arithmetic (3.3 instead of 13 GFLOP per slice), for CPUs without bf16, where
      the 16-filter network takes 4.8 s in process, 5.6 s as a whole process, per 30-slice study
      at float32 (AVX2-only EPYC) against the 3 s whole-process target; trained by the same recipe, so its folds say what the
      speed costs in accuracy.
    - ``robust-384-lite-tta``: ``robust-384-lite``'s networks, scored and shipped with flip
      test-time augmentation: what ``robust-384-tta`` measures for the 16-filter network, for
      the one float32 CPUs run (a quarter of the arithmetic, so twice of it still costs half
      of one full network).
    - ``demo``: the embedded synthetic demo, sized to finish in minutes.
    """
    if name == "robust-384-tta":
        r = preset("robust-384")
        return dataclasses.replace(r, pipeline=dataclasses.replace(r.pipeline, tta_flip=True))
    if name == "robust-384-lite-tta":
        r = preset("robust-384-lite")
        return dataclasses.replace(r, pipeline=dataclasses.replace(r.pipeline, tta_flip=True))
    if name == "robust-384-lite":
        r = preset("robust-384")
        return dataclasses.replace(r, unet=dataclasses.replace(r.unet, base_filters=8))
    if name == "robust-384-small":
        r = preset("robust-384")
        return dataclasses.replace(r, train_unet=dataclasses.replace(r.train_unet, lesion_max_weight=6.0))
    if name == "robust-384-long":
        r = preset("robust-384")
        return dataclasses.replace(r, train_unet=dataclasses.replace(r.train_unet, epochs=72))
    if name == "robust-384-rim":
        r = preset("robust-384")
        return dataclasses.replace(r, train_unet=dataclasses.replace(r.train_unet, skull_rim=0.3))
    if name == "robust-384":
        r = preset("robust-crop")
        return dataclasses.replace(
            r,
            unet=dataclasses.replace(r.unet, input_size_px=384),
            train_unet=dataclasses.replace(r.train_unet, crop_px=256, epochs=36, scanner=True, precision="auto"),
        )
    if name == "robust-crop":
        r = preset("robust")
        return dataclasses.replace(
            r,
            train_unet=dataclasses.replace(r.train_unet, crop_px=128, epochs=24, samples_per_epoch=800, positive_fraction=0.5),
        )
    if name == "robust":
        return RunConfig(
            unet=UNetConfig(
                input_size_px=192,
                base_filters=16,
                batch_norm=True,
                output_prior=0.01,
                windows=("bone", "brain"),
                context_slices=1,
                heads=ALL_HEADS,
                normalize="parenchyma",
            ),
            classifier=ClassifierConfig(input_size_px=128, windows=("bone", "brain"), context_slices=1, heads=ALL_HEADS),
            train_unet=TrainConfig(
                epochs=20,
                patience=1000,
                samples_per_epoch=640,
                positive_fraction=0.4,
                learning_rate=1e-3,
                lr_schedule="cosine",
                hflip=True,
                affine=True,
                intensity=True,
                strong_intensity=True,
            ),
            pipeline=PipelineConfig(
                mask_threshold=0.5, min_area_px=20, speck_removal="component", intracranial=True, screen_threshold=0.1
            ),
            stages=("unet",),
            cv_inner_validation=False,
        )
    if name == "paper":
        return RunConfig()
    if name == "paper-cpu":
        return RunConfig(
            unet=UNetConfig(input_size_px=192, base_filters=16),
            classifier=ClassifierConfig(input_size_px=192, base_filters=16),
            train_unet=TrainConfig(epochs=40, patience=8, samples_per_epoch=800),
            train_classifier=TrainConfig(epochs=20, patience=5, samples_per_epoch=800, hflip=True),
        )
    if name == "cpu":
        return RunConfig(
            unet=UNetConfig(input_size_px=192, base_filters=16, batch_norm=True),
            classifier=ClassifierConfig(input_size_px=192, base_filters=16, heads=ALL_HEADS),
            train_unet=TrainConfig(
                epochs=30,
                patience=8,
                min_epochs=10,
                samples_per_epoch=800,
                learning_rate=1e-3,
                hflip=True,
                affine=True,
                intensity=True,
            ),
            train_classifier=TrainConfig(
                epochs=20, patience=6, samples_per_epoch=800, learning_rate=1e-3, hflip=True, affine=True, intensity=True
            ),
            pipeline=PipelineConfig(gate_sensitivity=0.97),
        )
    if name == "fast":
        # For cross-validation sweeps: about 6 minutes per fold on 2 CPU cores.
        aug = {"learning_rate": 1e-3, "hflip": True, "affine": True, "intensity": True, "samples_per_epoch": 400}
        return RunConfig(
            unet=UNetConfig(input_size_px=128, base_filters=16, batch_norm=True, output_prior=0.01),
            classifier=ClassifierConfig(input_size_px=128, base_filters=16, heads=ALL_HEADS),
            train_unet=TrainConfig(epochs=15, patience=5, min_epochs=8, **aug),
            train_classifier=TrainConfig(epochs=12, patience=4, min_epochs=6, **aug),
            pipeline=PipelineConfig(gate_sensitivity=0.97),
        )
    if name == "hires-xl":
        h = preset("hires-long")
        return dataclasses.replace(h, train_unet=dataclasses.replace(h.train_unet, samples_per_epoch=800))
    if name == "hires-long":
        # hires with a U-Net trained longer (its validation Dice was still rising at
        # epoch 15) with a cosine learning-rate decay, and a VGG-style classifier.
        h = preset("hires")
        return dataclasses.replace(
            h,
            classifier=dataclasses.replace(h.classifier, convs_per_block=2),
            train_unet=dataclasses.replace(h.train_unet, epochs=22, patience=6, min_epochs=12, lr_schedule="cosine"),
        )
    if name in ("fast-ctx", "hires"):
        # fast + both windows and one neighbour on each side (2.5D): 6 input channels.
        base = preset("fast")
        ctx = {"windows": ("bone", "brain"), "context_slices": 1}
        cfg = dataclasses.replace(
            base,
            unet=dataclasses.replace(base.unet, **ctx),
            classifier=dataclasses.replace(base.classifier, **ctx),
        )
        if name == "fast-ctx":
            return cfg
        # hires: the U-Net sees 256×256 slices but trains on 128×128 crops (same cost per
        # step as fast), validates on positives plus 96 negatives; the operating point is
        # tuned on the inner validation patients and the U-Net uses flip TTA.
        return dataclasses.replace(
            cfg,
            unet=dataclasses.replace(cfg.unet, input_size_px=256),
            train_unet=dataclasses.replace(cfg.train_unet, crop_px=128, val_max_negatives=96),
            pipeline=dataclasses.replace(cfg.pipeline, tune_operating_point=True, tta_flip=True),
        )
    if name == "demo":
        # Minutes on 2 cores: small inputs, batch-norm and lr 1e-3 so the U-Net learns
        # within a few hundred steps (the paper's lr 1e-4 without batch-norm needs thousands).
        return RunConfig(
            unet=UNetConfig(input_size_px=128, base_filters=16, batch_norm=True, output_prior=0.01),
            classifier=ClassifierConfig(input_size_px=128, base_filters=8),
            train_unet=TrainConfig(epochs=12, patience=4, min_epochs=6, samples_per_epoch=256, learning_rate=1e-3, hflip=True),
            train_classifier=TrainConfig(
                epochs=30, patience=5, min_epochs=15, samples_per_epoch=256, learning_rate=1e-3, hflip=True
            ),
            pipeline=PipelineConfig(gate_sensitivity=0.97),
        )
    raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")


PRESETS = (
    "paper",
    "paper-cpu",
    "cpu",
    "fast",
    "fast-ctx",
    "hires",
    "hires-long",
    "hires-xl",
    "robust",
    "robust-crop",
    "robust-384",
    "robust-384-rim",
    "robust-384-long",
    "robust-384-small",
    "robust-384-tta",
    "robust-384-lite",
    "robust-384-lite-tta",
    "demo",
)


def model_stem(path_stem: Path) -> Path:
    """``runs/x/unet``, ``runs/x/unet.json`` and ``runs/x/unet.safetensors`` all name one model."""
    path_stem = Path(path_stem)
    return path_stem.with_suffix("") if path_stem.suffix in (".json", ".safetensors") else path_stem


def load_model_config(path_stem: Path) -> tuple[UNetConfig | ClassifierConfig, dict[str, Any]]:
    """The config and metadata of a model's ``<stem>.json``, without its weights: all that
    the graph runtimes need, and readable without PyTorch."""
    path_stem = model_stem(path_stem)
    meta = load_json(path_stem.with_suffix(".json"))
    kind = meta.get("kind")
    cls = {"unet": UNetConfig, "classifier": ClassifierConfig}.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"{path_stem.with_suffix('.json')}: unknown model kind {kind!r}")
    return from_dict(cls, meta["config"]), meta
