"""Inference around a trained model: tiling, test-time augmentation, ONNX export and runtime, speed-ups."""
