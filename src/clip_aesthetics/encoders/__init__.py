"""Encoders: backbones (open_clip, timm), their weights, the fine-tuned tower, prompts and text embeddings."""
