"""Synthetic head-CT data in the exact on-disk layout of the PhysioNet CT-ICH data set.

Why this exists: the real data set needs a credentialed download, so demos, CI and
unit tests would otherwise have nothing to run on.  This module draws a small,
deterministic stand-in that the rest of ``ichseg`` can read with the very same
loader it uses for the real data:

* ``Patients_CT/<ID>/brain/<n>.jpg`` - brain-window slice (8-bit greyscale JPEG)
* ``Patients_CT/<ID>/brain/<n>_HGE_Seg.jpg`` - lesion mask, only for bleeding slices
* ``Patients_CT/<ID>/bone/<n>.jpg`` - bone-window version of the same slice
* ``hemorrhage_diagnosis.csv`` - one row per slice (UTF-8 with BOM, like the original)
* ``patient_demographics.csv`` - one row per patient (with the original's odd header)

Every slice is first built as a map of Hounsfield units (HU) and then windowed twice,
exactly as a scanner console would.  That keeps the brain and bone windows
consistent with each other for free: blood (~70 HU) is bright in the brain window and
nearly invisible in the bone window, while the skull saturates the brain window and
shows its structure in the bone window.  Lesions are hyperdense and drawn with sizes
similar to the real masks, so a small U-Net learns them within minutes on a CPU.

Everything is drawn with OpenCV polygon fills on whole images (no per-pixel Python
loops), so the default configuration is written in a few seconds.

The package: :mod:`.anatomy` (densities, configuration, the drawing of one head and its
bleeds) ← :mod:`.render` (one slice in HU, windowed twice) ← :mod:`.dataset` (a whole data
set in the CT-ICH layout).
"""

from ichseg.data.synthetic.anatomy import (
    BONE_WINDOW,
    BRAIN_WINDOW,
    DEMOGRAPHICS_HEADER,
    DIAGNOSIS_HEADER,
    EPIDURAL,
    INTRAPARENCHYMAL,
    INTRAVENTRICULAR,
    SUBARACHNOID,
    SUBDURAL,
    SUBTYPES,
    Bleed,
    HeadGeometry,
    SyntheticConfig,
)
from ichseg.data.synthetic.dataset import generate_dataset
from ichseg.data.synthetic.render import make_lesion_slice, random_head, render_slice, write_lesion_study

__all__ = [
    "BONE_WINDOW",
    "BRAIN_WINDOW",
    "DEMOGRAPHICS_HEADER",
    "DIAGNOSIS_HEADER",
    "EPIDURAL",
    "INTRAPARENCHYMAL",
    "INTRAVENTRICULAR",
    "SUBARACHNOID",
    "SUBDURAL",
    "SUBTYPES",
    "Bleed",
    "HeadGeometry",
    "SyntheticConfig",
    "generate_dataset",
    "make_lesion_slice",
    "random_head",
    "render_slice",
    "write_lesion_study",
]
