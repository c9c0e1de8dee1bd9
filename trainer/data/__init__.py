"""Face datasets, cached crops, pairs files and augmentation."""
