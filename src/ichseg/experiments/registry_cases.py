"""The real CT series that registry packages ship, and how to fetch them (registries only).

Each :class:`Case` names a file or folder inside a pinned package: a PyPI source distribution
(``pip download --no-binary``; the wheels leave the data out) or a Debian package
(``apt-get download``, unpacked with ``dpkg-deb``). :func:`fetch` puts every case under
``dest/<name>`` as ``ichseg predict`` takes it: a DICOM series folder or one NIfTI file. A
case stored in a format ``predict`` does not read (InVesalius' ``.inv3`` project) is
converted to NIfTI here, with the orientation its file states; nothing of it is copied into
the repository, and each keeps its package's licence.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One real series inside a registry package."""

    name: str
    package: str  # pinned
    version: str
    member: str  # path inside the package (below an sdist's top folder): a series folder or one file
    licence: str
    what: str  # what a reader sees in it (no label exists)
    head: bool  # a head CT the model should answer on (False: it must be refused)
    registry: str = "pypi"  # or "debian"


CASES = (
    Case(
        "rsna-head-contrast", "rsna-anonymizer", "19.0.10",
        "tests/controller/assets/test_dcm_files/CT_Head_With_Contrast", "Apache-2.0",
        "axial head CT with IV contrast, a 5-year-old, 34 slices of 5 mm, Philips Brilliance 64, "
        "lossy JPEG 2000; no bleed visible",
        True,
    ),
    Case(
        "dicom2stl-head", "dicom2stl", "0.5.0", "examples/Data/ct_head.nii.gz", "MIT",
        "adult head CT as NIfTI, neck to vertex, 95 slices of 2.5 mm at 1.01 mm pixels (resampled); "
        "unlabelled: no focal bleed visible, a thin bright rim along the inner table on both sides",
        True,
    ),
    Case(
        "dicom2stl-example", "dicom2stl", "0.5.0", "examples/Data/ct_example.nii.gz", "MIT",
        "adult head CT as NIfTI, 26 slices of 4 mm at 1.25 mm pixels, a hypodense temporal lesion; "
        "no hyperdense bleed visible",
        True,
    ),
    Case(
        "invesalius-cranium", "invesalius-examples", "3.1.99998-4",
        "usr/share/doc/invesalius-examples/examples/Cranium.inv3", "GPL-2 (Debian copyright file)",
        "non-contrast adult head CT in HU (InVesalius sample \"ProMED CT 0051\"; no DICOM header, scanner "
        "unknown), skull base to vertex, 108 slices of 1.5 mm at 0.957 mm pixels (256² matrix); an older "
        "adult's atrophic brain, no hyperdense collection visible",
        True, "debian",
    ),
    Case(
        "totalsegmentator-abdomen", "totalsegmentator", "2.18.0", "tests/reference_files/example_ct_dicom",
        "Apache-2.0", "upper-abdomen CT (liver, spleen), 20 slices, Siemens, blank UIDs", False,
    ),
)  # fmt: skip


def inv3_to_nifti(src: Path, dst: Path) -> Path:
    """An InVesalius 3 project (a gzip tar holding ``main.plist`` and the raw volume it names)
    as a NIfTI volume in HU. The plist gives the array's file, dtype, (slices, rows, columns)
    shape and (column, row, slice) spacing in mm; InVesalius stores the first slice lowest
    (skull base), rows running towards the face and columns towards the patient's left (as
    DICOM's axial images do), which the affine states so that the reader reorients it."""
    import plistlib

    import nibabel as nib

    with tarfile.open(src, "r:gz") as tar:
        by_name = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        if "main.plist" not in by_name:
            raise ValueError(f"{src}: no main.plist (not an InVesalius 3 project)")
        main = plistlib.loads(tar.extractfile(by_name["main.plist"]).read())  # type: ignore[union-attr]
        matrix = main["matrix"]
        raw = tar.extractfile(by_name[matrix["filename"]]).read()  # type: ignore[union-attr]
    shape = tuple(int(n) for n in matrix["shape"])
    if len(shape) != 3:
        raise ValueError(f"{src}: a {len(shape)}-D matrix, not a volume")
    zyx = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"])).reshape(shape)
    sx, sy, sz = (float(v) for v in main["spacing"])
    # voxel (column, row, slice) -> RAS: columns towards the left (-x), rows towards the face (+y), slices up (+z)
    affine = np.diag([-sx, sy, sz, 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)).astype(np.int16), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp.nii.gz")
    nib.save(img, str(tmp))
    tmp.replace(dst)
    return dst


def _download(dest: Path, case: Case) -> Path:
    """The package file of ``case`` in ``dest`` (downloaded once)."""
    if case.registry == "debian":
        debs = dest / "deb"
        debs.mkdir(parents=True, exist_ok=True)
        found = list(debs.glob(f"{case.package}_{case.version}_*.deb"))
        if not found:
            subprocess.run(["apt-get", "download", "-q", f"{case.package}={case.version}"], cwd=debs, check=True)
            found = list(debs.glob(f"{case.package}_{case.version}_*.deb"))
        return found[0]
    sdists = dest / "sdist"
    sdists.mkdir(parents=True, exist_ok=True)
    pattern = f"{case.package.replace('-', '?')}-{case.version}.tar.gz"
    if not any(sdists.glob(pattern)):
        env = {**os.environ, "PIP_CONSTRAINT": ""}  # a machine-wide constraints file must not veto old pins
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q"]
        subprocess.run([*pip, f"{case.package}=={case.version}", "-d", str(sdists)], check=True, env=env)
    (archive,) = sdists.glob(pattern)
    return archive


def _extract(archive: Path, case: Case, tmp: Path) -> Path:
    """Unpack ``case.member`` of ``archive`` under ``tmp``; returns where it lies."""
    if case.registry == "debian":
        subprocess.run(["dpkg-deb", "-x", str(archive), str(tmp)], check=True)
        src = tmp / case.member
        if not src.exists():
            raise FileNotFoundError(f"{archive}: no {case.member}")
        return src
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        prefix = f"{top}/{case.member}"
        members = [m for m in tar.getmembers() if m.isfile() and (m.name == prefix or m.name.startswith(prefix + "/"))]
        if not members:
            raise FileNotFoundError(f"{archive}: no {case.member}")
        tar.extractall(tmp, members=members, filter="data")
    return tmp / prefix


def fetch(dest: Path) -> Path:
    """Download each case's package into ``dest`` and put every case at ``dest/<case name>``
    (kept if already there; a half-made one is never left under that name). A Debian case
    is left out, with a warning, on a machine without apt-get and dpkg-deb."""
    dest = Path(dest)
    for case in CASES:
        target = dest / case.name
        if target.exists():
            continue
        if case.registry == "debian" and not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
            log.warning("%s: needs apt-get and dpkg-deb (a Debian machine); not fetched", case.name)
            continue
        archive = _download(dest, case)
        tmp = dest / f".{case.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        src = _extract(archive, case, tmp)
        made = tmp / "case"
        if src.is_dir():
            src.rename(made)
        else:
            made.mkdir()
            if src.suffix == ".inv3":
                inv3_to_nifti(src, made / f"{src.stem.lower()}.nii.gz")
            else:
                src.rename(made / src.name)
        made.rename(target)
        shutil.rmtree(tmp)
    return dest


def case_input(dest: Path, case: Case) -> Path:
    """What ``ichseg predict`` is given: the series folder, or the NIfTI file."""
    folder = Path(dest) / case.name
    files = list(folder.glob("*.nii.gz"))
    return files[0] if len(files) == 1 and len(list(folder.iterdir())) == 1 else folder
