"""Dataset layouts, slice index, preprocessing cache, splits and synthetic data."""
