"""The one interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


def describe(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k}{tuple(v.shape)}:{v.dtype}" for k, v in feeds.items())


class Session(ABC):
    """A loaded network. ``run`` is thread-safe: one Session serves concurrent calls."""

    name: str  # the component name (unet, vae_decoder, ...)

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph; returns the requested outputs (all when None) as numpy arrays."""

    @property
    @abstractmethod
    def input_names(self) -> list[str]: ...

    @property
    @abstractmethod
    def output_names(self) -> list[str]: ...

    def input_shapes(self) -> dict[str, list]:
        return {}

    def check_shapes(self, feeds: dict[str, np.ndarray]) -> None:
        """Refuse shapes the engine cannot run (TensorRT profiles); nothing to check by default."""
