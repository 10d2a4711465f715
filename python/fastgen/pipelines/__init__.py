"""Task pipelines: text-to-image / image-to-image / inpainting, captioning, video."""

from .base import Pipeline, PipelineOutput

__all__ = ["Pipeline", "PipelineOutput"]
