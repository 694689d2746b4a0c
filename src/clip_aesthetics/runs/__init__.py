"""Runs over many images: streaming resumable scoring, scoring from stored embeddings, evaluation, reports."""
