"""Inference: load a model bundle, run the two stages, write masks, overlays and tables."""
