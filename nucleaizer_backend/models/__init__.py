"""Network architectures (Mask R-CNN over torchvision parts) and safe model files."""
