"""Culling a shoot: bursts and near-duplicates, the best frame of each, ratings in XMP sidecars, and a
head learned from the photographer's own ratings. See ``cull.py`` for the pipeline."""
