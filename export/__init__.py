"""Checkpoint loading, faithful inference modules and (later) ONNX export of every component."""

from .checkpoints import CheckpointError, Pretrained, load_pretrained
from .config import ConfigError, ModelConfig

__all__ = ["CheckpointError", "ConfigError", "ModelConfig", "Pretrained", "load_pretrained"]
