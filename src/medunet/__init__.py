"""medunet: 2D medical image segmentation with U-Net."""
__version__ = "0.1.0"
