"""fastgen: fast, lean diffusion generation and image captioning without PyTorch at run time."""

from __future__ import annotations

from .errors import (  # noqa: F401  (re-exported)
    BackendError,
    CancelledError,
    ConcurrentUseError,
    ConfigError,
    ExportError,
    FastgenError,
    InvalidArgumentError,
    ManifestError,
    ModelLoadError,
    ResourceError,
    ScheduleError,
    ShapeError,
    UnsupportedError,
)

__version__ = "0.1.0"

from . import schedulers  # noqa: E402
from .sampling import randn, sample_loop  # noqa: E402
from .pipelines import Pipeline  # noqa: E402
from .outputs import CaptionOutput, ImageOutput, PipelineOutput, VideoOutput  # noqa: E402,F401
from .requests import CaptionRequest, ImageRequest, ImageToVideoRequest, VideoRequest  # noqa: E402,F401
from .video_io import export_video  # noqa: E402,F401  (video, issue 9)


def demo(**kwargs) -> "Pipeline":
    """The small text-to-image model shipped inside the package (see README)."""
    return Pipeline.load("demo", **kwargs)
