"""Transforms of an update between client and server, as an ordered pipeline of codecs."""

from .base import CODECS, Codec, CodecContext, CodecOptions, Identity, Pipeline, build_pipeline

__all__ = ["Codec", "CodecContext", "CodecOptions", "Identity", "Pipeline", "build_pipeline", "CODECS"]
