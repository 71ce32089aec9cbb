"""File formats: DICOM (series, Enhanced multi-frame, SEG, SR), NIfTI, the volume type they
share and the HU windows that turn a volume into the 8-bit slices the networks read.

Formats sit above the ground modules (``ichseg.files``, ``ichseg.config``, ``ichseg.errors``,
``ichseg.credits``) and below everything that knows a dataset, a network or a report."""
