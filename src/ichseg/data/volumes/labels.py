"""From a label volume's values to the hemorrhage mask and the subtype flags.

ichseg's network outlines blood (one mask) and has slice heads for CT-ICH's five subtypes.
A binary label is the mask. A multi-class label (BHSD's and MBH-Seg's EDH/IPH/IVH/SAH/SDH,
INSTANCE's single "hemorrhage") is mapped by the class names of its ``dataset.json``: each
name is matched to a subtype, to hemorrhage without a subtype, to background, or to
"ignore" (not blood, e.g. perihematomal edema: counted as background). A name matched by
none is an error, so no class is silently trained as blood or as brain. The mapping goes
into the run's ``dataset.json`` beside the index, so a reader of the results knows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ichseg.data.ctich import SUBTYPES
from ichseg.errors import DatasetError

HEMORRHAGE = "hemorrhage"
BACKGROUND = "background"
IGNORE = "ignore"
TARGETS = (*SUBTYPES, HEMORRHAGE, BACKGROUND, IGNORE)

# whole-word (after lower-casing and splitting on non-letters) names of each target
_NAMES = {
    "epidural": ("epidural", "edh", "extradural"),
    "subdural": ("subdural", "sdh"),
    "subarachnoid": ("subarachnoid", "sah"),
    "intraventricular": ("intraventricular", "ivh"),
    "intraparenchymal": ("intraparenchymal", "iph", "intracerebral", "parenchymal"),
    HEMORRHAGE: (
        "hemorrhage",
        "haemorrhage",
        "ich",
        "bleed",
        "bleeding",
        "blood",
        "hematoma",
        "haematoma",
        "hge",
        "lesion",
        "foreground",
    ),
    BACKGROUND: ("background", "bg", "brain", "normal"),
    IGNORE: ("edema", "oedema", "phe", "perihematomal", "calcification", "ignore", "other"),
}


def target_of(name: str) -> str | None:
    """The target a class name means (:data:`TARGETS`), or None when it is not recognised.
    A subtype wins over the generic words ("subdural hematoma" is subdural)."""
    words = set(re.split(r"[^a-z]+", name.lower()))
    for target in (*SUBTYPES, IGNORE, HEMORRHAGE, BACKGROUND):
        if words & set(_NAMES[target]):
            return target
    return None


@dataclass(frozen=True)
class LabelMap:
    """Label value → target. ``binary`` maps are for layouts without class names: any two
    values {0, v} are background and blood; a third value is an error."""

    values: dict[int, str] = field(default_factory=dict)
    binary: bool = False
    source: str = ""

    def describe(self) -> dict[str, Any]:
        """What the run's ``dataset.json`` records."""
        if self.binary:
            return {"kind": "binary", "rule": "0 = background, any other single value = hemorrhage", "source": self.source}
        return {"kind": "classes", "values": {str(k): v for k, v in sorted(self.values.items())}, "source": self.source}

    def blood_values(self) -> dict[str, list[int]]:
        """Per subtype and for hemorrhage overall, the label values that are that blood."""
        out = {s: [v for v, t in self.values.items() if t == s] for s in SUBTYPES}
        out[HEMORRHAGE] = [v for v, t in self.values.items() if t in (*SUBTYPES, HEMORRHAGE)]
        return out


def binary_map(source: str) -> LabelMap:
    return LabelMap(binary=True, source=source)


def map_from_dataset_json(meta: dict[str, Any], source: str) -> LabelMap:
    """The map of an nnU-Net v2 (``{"name": value}``) or Decathlon (``{"value": "name"}``)
    ``labels`` entry. nnU-Net region labels (a list of values for one name) are refused."""
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f"{source}: no 'labels' in dataset.json")
    pairs: list[tuple[str, int]] = []
    for k, v in labels.items():
        if isinstance(v, list | tuple):
            raise DatasetError(f"{source}: label {k!r} is a region {v} (nnU-Net regions are not supported): one value per name")
        if str(k).lstrip("-").isdigit():  # Decathlon: "1": "hemorrhage"
            pairs.append((str(v), int(k)))
        else:
            try:
                pairs.append((str(k), int(v)))
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"{source}: label {k!r} has value {v!r}, not an integer") from exc
    values: dict[int, str] = {}
    unknown = []
    for name, value in pairs:
        target = BACKGROUND if value == 0 else target_of(name)
        if target is None:
            unknown.append(f"{name!r} (value {value})")
        else:
            values[value] = target
    if unknown:
        raise DatasetError(
            f"{source}: label name(s) {', '.join(unknown)} match no hemorrhage subtype, hemorrhage, background or ignore "
            f"class; rename them in dataset.json (e.g. 'EDH', 'subdural', 'hemorrhage', 'edema')"
        )
    if not any(t in (*SUBTYPES, HEMORRHAGE) for t in values.values()):
        raise DatasetError(f"{source}: no label means blood ({values})")
    return LabelMap(values=values, source=source)


def check_values(label: np.ndarray, label_map: LabelMap, path: str) -> LabelMap:
    """The label's values must be what the map expects: a binary label has at most two
    values, one of them 0; a class label only declared values. Returns the map to use for
    this file (a binary map with its blood value fixed)."""
    values = np.unique(label)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise DatasetError(f"{path}: label values are not whole numbers ({values[:6].tolist()} ...)")
    ints = [int(v) for v in values]
    if label_map.binary:
        blood = [v for v in ints if v != 0]
        if len(blood) > 1 or (ints and min(ints) < 0):
            raise DatasetError(f"{path}: a non-binary label (values {ints[:8]}) where a binary mask (0 and one value) is due")
        return LabelMap(values={0: BACKGROUND, **({blood[0]: HEMORRHAGE} if blood else {})}, source=label_map.source)
    undeclared = sorted(set(ints) - set(label_map.values) - {0})
    if undeclared:
        declared = label_map.describe()["values"]
        raise DatasetError(f"{path}: label value(s) {undeclared} are not declared in dataset.json ({declared})")
    return label_map


def slab_truth(labels: np.ndarray, label_map: LabelMap) -> tuple[np.ndarray, dict[str, int]]:
    """The blood mask and subtype flags of one slab from its slices' labels (S, H, W).

    A pixel is blood where at least half of the slab's slices are (the slab's HU is their
    average, so a bleed on one of four thin slices is mostly averaged away in the image
    too); a subtype is flagged where any of its pixels lies in that mask."""
    vals = label_map.blood_values()
    blood = np.isin(labels, vals[HEMORRHAGE])
    mask = blood.mean(axis=0) >= 0.5
    flags = {s: int(bool(vals[s]) and bool((np.isin(labels, vals[s]).any(axis=0) & mask).any())) for s in SUBTYPES}
    return mask, flags
