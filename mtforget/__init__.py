"""mtforget: controlled multilingual MT fine-tuning studies that measure catastrophic forgetting."""

__version__ = "0.1.0"
