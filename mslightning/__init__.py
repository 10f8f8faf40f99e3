"""mslightning: PyTorch Lightning parts for multi-stream networks."""

__version__ = "0.1.0"
