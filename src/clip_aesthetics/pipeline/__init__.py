"""The image pipeline: safe decoding of every format, preprocessing, batches (CPU workers or nvJPEG)."""
