"""Hospital services: the DICOM node a PACS pushes studies to, and the work queue on disk
that it (and the REST service) share. Same layer as inference, which they run."""
