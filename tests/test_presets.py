"""The named configurations: each builds, and the variants differ from their parent only
where they say (so a comparison between them measures that one change)."""

from __future__ import annotations

import dataclasses

import pytest

from ichseg.config import PRESETS, preset, to_dict
from ichseg.experiments.folds import training_part


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds(name: str) -> None:
    assert to_dict(preset(name))


@pytest.mark.parametrize(("parent_name", "name"), [("robust-384", "robust-384-tta"), ("robust-384-lite", "robust-384-lite-tta")])
def test_the_tta_variant_trains_exactly_what_its_parent_trains(parent_name: str, name: str) -> None:
    parent, tta = preset(parent_name), preset(name)
    assert training_part(parent) == training_part(tta)  # its members are the parent's networks
    assert tta.pipeline.tta_flip and not parent.pipeline.tta_flip
    assert dataclasses.replace(tta.pipeline, tta_flip=False) == parent.pipeline


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [("robust-384-small", "lesion_max_weight", 6.0), ("robust-384-long", "epochs", 72), ("robust-384-rim", "skull_rim", 0.3)],
)
def test_training_variants_change_one_setting(name: str, field: str, value: object) -> None:
    parent, child = preset("robust-384"), preset(name)
    assert getattr(child.train_unet, field) == value
    assert dataclasses.replace(child.train_unet, **{field: getattr(parent.train_unet, field)}) == parent.train_unet
    assert child.unet == parent.unet and child.pipeline == parent.pipeline


def test_the_lite_variant_only_narrows_the_network() -> None:
    parent, lite = preset("robust-384"), preset("robust-384-lite")
    assert lite.unet.base_filters == 8 < parent.unet.base_filters
    assert dataclasses.replace(lite.unet, base_filters=parent.unet.base_filters) == parent.unet
    assert lite.train_unet == parent.train_unet and lite.pipeline == parent.pipeline
