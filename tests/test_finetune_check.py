"""experiments.finetune_check's command line: every schedule option reaches the run (a
``--learning-rate`` that was parsed and then dropped once ran a whole check at 1e-4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ichseg.experiments import finetune_check


def test_every_schedule_option_reaches_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_run(data, work, results, n_patients, model=None, *, variants, folds=(), cv_results=None, cv_work=None, **ft_kw):
        seen.update(ft_kw, variants=variants, n_patients=n_patients, folds=folds)
        return {"held_out": {"before": {"dice_global": 0.5}}, "held_out_patients": ["049"]}

    monkeypatch.setattr(finetune_check, "run", fake_run)
    argv = ["--data", str(tmp_path), "--epochs", "16", "--samples-per-epoch", "128", "--learning-rate", "3e-4"]
    assert finetune_check.main([*argv, "--variants", "rehearsal", "--patients", "20"]) == 0
    assert seen == {
        "epochs": 16, "samples_per_epoch": 128, "learning_rate": 3e-4, "variants": ("rehearsal",), "n_patients": 20, "folds": (),
    }  # fmt: skip
    assert finetune_check.main([*argv, "--fold", "1", "--fold", "0", "--cv", str(tmp_path)]) == 0
    assert seen["folds"] == (1, 0)
    # and each is a field of the schedule it builds
    from ichseg.experiments.finetune import FinetuneConfig

    FinetuneConfig(**{k: seen[k] for k in ("epochs", "samples_per_epoch", "learning_rate")})


def test_variants_name_what_moves() -> None:
    from ichseg.experiments.finetune import FinetuneConfig

    ft = FinetuneConfig()
    assert finetune_check._variant(ft, "rehearsal-frozen-bn").freeze_batchnorm
    assert not finetune_check._variant(ft, "rehearsal").freeze_batchnorm
    assert finetune_check._variant(ft, "batchnorm").adapt == "batchnorm"
    with pytest.raises(ValueError, match="unknown variant"):
        finetune_check._variant(ft, "frozen")
    # "-rechosen": the same training, the mask threshold chosen again afterwards
    r = finetune_check._variant(ft, "rehearsal-frozen-bn-rechosen")
    assert r.rechoose_threshold and r.freeze_batchnorm
    assert not finetune_check._variant(ft, "rehearsal").rechoose_threshold
    with pytest.raises(ValueError, match="unknown variant"):
        finetune_check._variant(ft, "batchnorm-rechosen")  # no weight moves, no new probabilities to choose on
    assert finetune_check.label("after_rehearsal-rechosen") == (
        "fine-tuned with rehearsal, mask threshold re-chosen on the fine-tuning half, new scanner"
    )
    assert finetune_check.label("after_rehearsal-rechosen_base_point") == "fine-tuned with rehearsal, the base point, new scanner"


def test_frozen_batchnorm_keeps_the_statistics_while_weights_train(tmp_path: Path) -> None:
    """TrainConfig.freeze_batchnorm: the running statistics after a fine-tune are the base
    model's, bit for bit, while the convolutions moved; without it both move."""
    import numpy as np
    import torch

    from ichseg.config import TrainConfig, UNetConfig
    from ichseg.models import build_model
    from ichseg.models.weights import load_model
    from ichseg.train.loop import Arrays, train_model

    rng = np.random.default_rng(0)
    images = (rng.random((8, 1, 32, 32)) * 255).astype(np.uint8)
    masks = np.zeros((8, 32, 32), bool)
    masks[::2, 10:16, 10:20] = True
    data = Arrays(images, masks, masks.reshape(8, -1).any(1).astype(np.int64))
    cfg = UNetConfig(input_size_px=32, base_filters=4, depth=2, batch_norm=True)
    torch.manual_seed(0)
    start = {k: v.clone() for k, v in build_model(cfg).state_dict().items()}
    stats = [k for k in start if k.endswith("running_mean") or k.endswith("running_var")]
    weights = [k for k, v in start.items() if v.dtype.is_floating_point and k not in stats and start[k].dim() == 4]
    assert stats and weights
    for freeze in (True, False):
        tc = TrainConfig(epochs=2, batch_size=4, samples_per_epoch=8, learning_rate=1e-3, freeze_batchnorm=freeze)
        out = tmp_path / str(freeze)
        train_model(cfg, tc, data, data, out, progress=False, init_state=start)  # validates each epoch, too
        after = load_model(out / "last")[0].state_dict()
        same_stats = all(torch.equal(after[k], start[k]) for k in stats)
        assert same_stats is freeze
        assert not all(torch.allclose(after[k], start[k]) for k in weights)
