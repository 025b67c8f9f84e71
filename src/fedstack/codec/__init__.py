"""Transforms of an update between client and server, as an ordered pipeline of codecs."""

from .base import Codec, CodecContext, Identity, Pipeline
from .registry import CODECS, CodecOptions, build_pipeline

__all__ = ["Codec", "CodecContext", "CodecOptions", "Identity", "Pipeline", "build_pipeline", "CODECS"]
