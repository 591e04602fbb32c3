"""Runtimes that run the pair model (ONNX Runtime, OpenVINO, torch), auto-selection and the agreement gate."""
