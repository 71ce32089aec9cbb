"""experiments.finetune_check's command line: every schedule option reaches the run (a
``--learning-rate`` that was parsed and then dropped once ran a whole check at 1e-4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ichseg.experiments import finetune_check


def test_every_schedule_option_reaches_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_run(data, work, results, n_patients, model=None, *, variants, **ft_kw):
        seen.update(ft_kw, variants=variants, n_patients=n_patients)
        return {"held_out": {"before": {"dice_global": 0.5}}, "held_out_patients": ["049"]}

    monkeypatch.setattr(finetune_check, "run", fake_run)
    argv = ["--data", str(tmp_path), "--epochs", "16", "--samples-per-epoch", "128", "--learning-rate", "3e-4"]
    assert finetune_check.main([*argv, "--variants", "rehearsal", "--patients", "20"]) == 0
    assert seen == {"epochs": 16, "samples_per_epoch": 128, "learning_rate": 3e-4, "variants": ("rehearsal",), "n_patients": 20}
    # and each is a field of the schedule it builds
    from ichseg.experiments.finetune import FinetuneConfig

    FinetuneConfig(**{k: seen[k] for k in ("epochs", "samples_per_epoch", "learning_rate")})
