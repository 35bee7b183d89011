"""Export of trained models to ONNX and a torch-free predictor."""
