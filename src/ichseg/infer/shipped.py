"""Where the shipped model lives inside the installed package, and which files make a bundle.

Inference needs it (``predict`` without ``--model``) and must not import the experiments
that make the bundle (they pull in training and PyTorch), so it lives here;
:mod:`ichseg.experiments.release` writes it.
"""

from __future__ import annotations

from pathlib import Path

#: Where the shipped bundle lives inside the installed package.
PACKAGED_MODEL = Path(__file__).resolve().parents[1] / "weights" / "default"
BUNDLE_FILES = ("unet.safetensors", "unet.json", "pipeline.json")  # plus classifier.* in a two-stage bundle
CLASSIFIER_FILES = ("classifier.safetensors", "classifier.json")


def default_model_dir() -> Path:
    """The shipped bundle, with a clear error when a source checkout lacks it."""
    if not all((PACKAGED_MODEL / n).exists() for n in BUNDLE_FILES):
        raise FileNotFoundError(f"{PACKAGED_MODEL}: the shipped model is missing; pass --model PATH")
    return PACKAGED_MODEL
