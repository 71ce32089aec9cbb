"""ichseg: intracranial hemorrhage detection and segmentation on head CT.

Stage 1 classifies each slice, stage 2 (a U-Net) outlines the blood on the slices stage 1
flags, following Hssayeni et al. (2020) on the PhysioNet CT-ICH dataset.
"""

__version__ = "0.1.0"
