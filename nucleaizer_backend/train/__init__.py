"""Training the segmentation networks: data, augmentation, the resumable loop."""
