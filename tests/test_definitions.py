"""metrics.json/metrics.md say what the rule that ran does, with its numbers."""

from __future__ import annotations

from ichseg.config import PipelineConfig
from ichseg.evaluate.definitions import definitions


def test_two_stage_rule_names_the_gate_and_its_threshold() -> None:
    d = definitions(PipelineConfig(classifier_threshold=0.37, mask_threshold=0.5, min_area_px=20), two_stage=True)
    pipe = d["slice_verdicts"]["pipeline"]
    assert "classifier probability >= 0.37" in pipe and "gates the U-Net" in pipe and ">= 20 px" in pipe
    assert d["slice_verdicts"]["classifier"] == "classifier probability >= 0.37"


def test_single_network_rules_differ_as_their_verdicts_do() -> None:
    common = {"mask_threshold": 0.4, "min_area_px": 10, "head_threshold": 0.8, "head_mask_threshold": 0.3}
    outlined = definitions(PipelineConfig(verdict_rule="outlined", **common), two_stage=False, members=5)["slice_verdicts"]
    fused = definitions(PipelineConfig(verdict_rule="fused", **common), two_stage=False, members=1)["slice_verdicts"]
    assert "fold ensemble of 5 U-Nets" in outlined["pipeline"] and "one U-Net" in fused["pipeline"]
    assert ">= 0.3 on slices whose hemorrhage head is >= 0.8" in outlined["pipeline"] and "OR" not in outlined["pipeline"]
    assert "OR its hemorrhage head >= 0.8" in fused["pipeline"] and "gates" not in fused["pipeline"]
    assert outlined["classifier"] == "the network's hemorrhage head >= 0.8"
