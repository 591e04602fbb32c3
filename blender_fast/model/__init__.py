"""Model files: checkpoint layouts, tokenization, the ONNX export and its attention rewrite, the cache."""
