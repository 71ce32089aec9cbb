"""Clinical answers out of a predicted mask: lesion volumes (``lesions``), a self-contained
HTML report for a clinician (``html``) and its PDF rendering (``pdf``).

The modules take plain numpy arrays and spacings, not the readers' volume objects, so they
can be used on any mask whose voxel spacing is known.
"""

from ichseg.report.lesions import SUBTYPES, Lesion, lesions, total_volume_ml, volume_ml

__all__ = ["SUBTYPES", "Lesion", "lesions", "total_volume_ml", "volume_ml"]
