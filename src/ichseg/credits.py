"""The credits the licences ask for, in one place that networks, data, reports and results
all import (a network must not need the dataset reader to name its training data)."""

#: The credit the CC BY 4.0 licence asks for, written beside every model and result made
#: from CT-ICH (weights sidecars, metrics, reports).
DATASET_CREDIT = (
    "Trained on CT-ICH: Hssayeni, M. (2019). Computed Tomography Images for Intracranial "
    "Hemorrhage Detection and Segmentation (version 1.0.0). PhysioNet. doi:10.13026/w8q8-ky94. "
    "CC BY 4.0. Paper: Hssayeni, M. D., Croock, M. S., Salman, A. D., Al-khafaji, H. F., Yahya, Z. A., "
    "Ghoraani, B. (2020). Intracranial Hemorrhage Segmentation Using a Deep Convolutional Model. Data, 5(1), 14."
)
