"""Task pipelines: text-to-image / image-to-image / inpainting, video, image-to-video, captioning.

``Pipeline.load(engine_dir)`` returns the one the engine's manifest asks for; the task modules are
imported on first use.
"""

from ..outputs import CaptionOutput, ImageOutput, PipelineOutput, VideoOutput
from .base import Pipeline

__all__ = ["Pipeline", "PipelineOutput", "ImageOutput", "VideoOutput", "CaptionOutput"]
