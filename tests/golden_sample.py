"""What ``ichseg predict`` says about the packaged sample study (CT-ICH patient 049) with the
shipped model on PyTorch at float32: the reference that a refactor must reproduce.

``python tests/golden_sample.py`` rewrites ``tests/golden/sample-predict.json``; do that only
when the shipped model itself changes (the file records the U-Net's SHA-256, and the test
says so when they differ)."""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parent / "golden" / "sample-predict.json"


def sample_outputs(out_dir: Path) -> dict[str, Any]:
    """Run the CLI's predict on the sample into ``out_dir``; the parts of its answer that do
    not depend on where or when it ran."""
    from ichseg.cli import main
    from ichseg.files import sha256_file
    from ichseg.hardware import cpu_kind
    from ichseg.infer.shipped import PACKAGED_MODEL
    from ichseg.sample import sample_study_dir

    study = sample_study_dir()
    # the 16-filter network by name: at float32 the default would be the lite one
    cmd = ["-q", "predict", str(study), "--out", str(out_dir), "--model", str(PACKAGED_MODEL)]
    rc = main([*cmd, "--runtime", "torch", "--precision", "fp32"])
    assert rc == 0
    summary = json.loads((out_dir / "summary.json").read_text())
    preds = json.loads((out_dir / "predictions.json").read_text())
    masks = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out_dir / "masks").glob("*.png"))}
    keep = ("hemorrhage", "scan_probability", "total_volume_ml", "lesions", "positive_slices", "review_slices", "operating_point")
    return {
        "unet_sha256": sha256_file(PACKAGED_MODEL / "unet.safetensors"),
        "cpu_kind": cpu_kind(),
        "summary": {k: summary.get(k) for k in keep},
        "slices": [{k: v for k, v in s.items() if not k.endswith("_path")} for s in preds["slices_detail"]],
        "mask_sha256": masks,
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        body = sample_outputs(Path(tmp) / "out")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    print(f"{GOLDEN}: {len(body['slices'])} slices, {len(body['mask_sha256'])} masks", file=sys.stderr)
