"""Preprocessing as in the paper (resize, /255, binarised masks) with an on-disk cache.

Each cache folder is named by a hash of the preprocessing parameters, and each file inside
is recorded in ``manifest.json`` with the SHA-256 of its source, so a rerun reuses what is
there and a changed source or parameter rebuilds only what changed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ichseg.config import PreprocessConfig
from ichseg.data.context import with_context
from ichseg.data.ctich import MASK_ON_LEVEL, DatasetError, SliceRecord
from ichseg.files import atomic_write_png, atomic_write_text, sha256_file, sha256_text

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the meaning of cached files changes
_INTERP = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR}


def read_grey_u8(path: Path) -> np.ndarray:
    """Decode an image file as 8-bit greyscale (H, W); errors name the file."""
    try:
        if Path(path).stat().st_size == 0:
            raise DatasetError(f"{path}: empty file")
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("L"))
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from exc


def resize_image_u8(image: np.ndarray, size_px: int, interpolation: str = "area") -> np.ndarray:
    """Resize a greyscale uint8 image to size_px × size_px (area averaging avoids aliasing when shrinking)."""
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, got {interpolation!r}")
    if image.shape[:2] == (size_px, size_px):
        return image
    return cv2.resize(image, (size_px, size_px), interpolation=_INTERP[interpolation])


def resize_mask(mask: np.ndarray, size_px: int, threshold: float = 0.5) -> np.ndarray:
    """Resize a mask (bool, or uint8 grey levels) bilinearly, then binarise: the paper's order.

    uint8 input is first binarised at ``MASK_ON_LEVEL`` so JPEG ringing is not blood.
    """
    m = mask >= MASK_ON_LEVEL if mask.dtype == np.uint8 else mask.astype(bool)
    if m.shape == (size_px, size_px):
        return m
    small = cv2.resize(m.astype(np.float32), (size_px, size_px), interpolation=cv2.INTER_LINEAR)
    return small >= threshold


class SliceCache:
    """Preprocessed slices for one parameter set, under ``root/<size>px-<hash>/``."""

    def __init__(self, root: Path, config: PreprocessConfig) -> None:
        self.config = config
        key = sha256_text(json.dumps({"format": CACHE_FORMAT, **asdict(config)}, sort_keys=True))[:12]
        self.dir = Path(root) / f"{config.size_px}px-{key}"
        self.manifest_path = self.dir / "manifest.json"

    def _load_manifest(self) -> dict[str, dict[str, str]]:
        if not self.manifest_path.exists():
            return {}
        try:
            return json.loads(self.manifest_path.read_text())["files"]
        except (json.JSONDecodeError, KeyError):
            log.warning("%s: unreadable manifest, rebuilding the cache", self.manifest_path)
            return {}

    def _save_manifest(self, files: dict[str, dict[str, str]]) -> None:
        body = {"format": CACHE_FORMAT, "config": asdict(self.config), "files": files}
        atomic_write_text(self.manifest_path, json.dumps(body, indent=1, sort_keys=True))

    @staticmethod
    def _entries(rec: SliceRecord, windows: Sequence[str]) -> list[tuple[str, str, str]]:
        """(cache key, source path, kind) for every file a slice needs."""
        out = []
        for w in windows:
            src = rec.image_path if w == "brain" else rec.bone_path
            if src:
                out.append((f"{rec.patient_id}/{rec.slice}_{w}", src, "image"))
        out.append((f"{rec.patient_id}/{rec.slice}_mask", rec.mask_path, "mask"))
        return out

    def build(
        self,
        records: Sequence[SliceRecord],
        windows: Iterable[str] = ("brain",),
        *,
        skip_bad: bool = False,
        workers: int = 2,
        progress: bool = False,
    ) -> list[SliceRecord]:
        """Make sure every record's files are cached; returns the records that are usable.

        Files whose source checksum matches the manifest are reused untouched.
        """
        windows = tuple(windows)
        manifest = self._load_manifest()
        cfg = self.config
        jobs = [(rec, e) for rec in records for e in self._entries(rec, windows)]

        def work(item: tuple[SliceRecord, tuple[str, str, str]]) -> tuple[str, dict[str, str] | None, str | None]:
            _, (key, src, kind) = item
            out = self.dir / f"{key}.png"
            try:
                digest = sha256_file(Path(src)) if src else "empty"
                known = manifest.get(key)
                if known and known["sha256"] == digest and out.exists():
                    return key, known, None
                if kind == "image":
                    arr = resize_image_u8(read_grey_u8(Path(src)), cfg.size_px, cfg.image_interpolation)
                elif src:
                    arr = resize_mask(read_grey_u8(Path(src)), cfg.size_px, cfg.mask_threshold).astype(np.uint8) * 255
                else:
                    arr = np.zeros((cfg.size_px, cfg.size_px), np.uint8)
                atomic_write_png(out, arr)
                return key, {"sha256": digest, "source": src}, None
            except (DatasetError, OSError) as exc:
                return key, None, str(exc)

        bad: dict[tuple[str, int], str] = {}
        done = 0
        rebuilt = 0
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc=f"preprocess {cfg.size_px}px", unit="file")
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for (rec, _), (key, entry, err) in zip(jobs, pool.map(work, jobs), strict=True):
                if err is not None:
                    bad[(rec.patient_id, rec.slice)] = err
                else:
                    if manifest.get(key) is not entry:
                        rebuilt += 1
                    manifest[key] = entry  # type: ignore[assignment]
                done += 1
                if bar is not None:
                    bar.update(1)
                if done % 500 == 0:
                    self._save_manifest(manifest)
        if bar is not None:
            bar.close()
        self._save_manifest(manifest)
        log.info("cache %s: %d files, %d (re)built", self.dir, len(jobs), rebuilt)
        if bad and not skip_bad:
            msgs = "\n  ".join(list(bad.values())[:50])
            raise DatasetError(f"{len(bad)} slice(s) could not be preprocessed (use --skip-bad to leave them out):\n  {msgs}")
        for err in bad.values():
            log.warning("skipping: %s", err)
        return [r for r in records if (r.patient_id, r.slice) not in bad]

    @classmethod
    def at_size(cls, root: Path, preprocess: PreprocessConfig, size_px: int) -> SliceCache:
        """The cache for ``preprocess`` with its size replaced: each stage reads its own size."""
        return cls(root, dataclasses.replace(preprocess, size_px=size_px))

    def load(
        self, records: Sequence[SliceRecord], windows: Sequence[str] = ("brain",), context_slices: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cached arrays for ``records``: images uint8 (N, C, S, S) and masks bool (N, S, S).

        Kept as uint8 (4× smaller than float) and scaled to [0, 1] per batch. A window with
        no source slice (one bone slice is missing in CT-ICH) is filled with zeros. With
        ``context_slices`` each slice is stacked with its neighbours among ``records``
        (see :func:`ichseg.data.context.with_context`).
        """
        s = self.config.size_px
        images = np.zeros((len(records), len(windows), s, s), np.uint8)
        masks = np.zeros((len(records), s, s), bool)
        for i, rec in enumerate(records):
            for c, w in enumerate(windows):
                path = self.dir / f"{rec.patient_id}/{rec.slice}_{w}.png"
                if path.exists():
                    images[i, c] = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
                elif w == "bone" and not rec.bone_path:
                    log.warning("patient %s slice %d: no %s window, using zeros", rec.patient_id, rec.slice, w)
                else:
                    raise DatasetError(f"{path}: not in the cache (run preprocessing first)")
            mpath = self.dir / f"{rec.patient_id}/{rec.slice}_mask.png"
            m = cv2.imread(str(mpath), cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise DatasetError(f"{mpath}: not in the cache (run preprocessing first)")
            masks[i] = m > 127
        return with_context(images, [(r.patient_id, r.slice) for r in records], context_slices), masks
