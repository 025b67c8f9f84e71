"""Transforms of an update between client and server, as an ordered pipeline of codecs."""

from .base import Codec, CodecContext, Identity, Pipeline, build_pipeline, CODECS

__all__ = ["Codec", "CodecContext", "Identity", "Pipeline", "build_pipeline", "CODECS"]
