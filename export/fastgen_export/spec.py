"""What an exporter declares: the components and tokenizers of an engine (pure data, no torch).

An exporter subclass (see :mod:`fastgen_export.base`) yields one :class:`ComponentSpec` per graph:
its name, the torch module with the engine's fixed boundary, the inputs / outputs (names, dtypes,
shapes whose string dims are the dynamic axes), how to make example inputs, and the dtype policy. The
base class does the rest once for every engine kind: ONNX export, optimisation, validation, parity
check against torch, and the manifest record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TensorSpec", "ComponentSpec", "TokenizerSpec", "InputMaker", "ParityCases"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # ONNX boundary dtype: "float32" | "int64"
    shape: tuple[int | str, ...]  # ints are fixed, strings are dynamic axes

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


#: (dims, torch.Generator) -> inputs in the order of ``ComponentSpec.inputs``. ``dims`` maps the
#: exporter's dynamic dim names ("batch", "latent_height", "frames", ...) to sizes.
InputMaker = Callable[[dict[str, int], Any], tuple]
#: torch.Generator -> [(label, inputs, reference outputs)]: parity cases a component checks instead of the
#: default one (its own module on ``make_inputs(parity_dims)``).
ParityCases = Callable[[Any], Iterable[tuple[str, tuple, tuple]]]


@dataclass
class ComponentSpec:
    name: str
    module: Any  # torch.nn.Module with the fixed boundary; dropped once exported
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    make_inputs: InputMaker
    info: dict[str, Any] = field(default_factory=dict)  # facts the exporter's manifest config is built from
    #: "fp32": kept in float32 whatever the export dtype (the SD / SDXL VAEs overflow in fp16); None:
    #: the export's dtype
    dtype: str | None = None
    #: custom parity cases, computed in float32 before any fp16 cast (default: one case, see ParityCases)
    parity_cases: ParityCases | None = None
    #: True: the exporter's ``attention="mha"`` applies (denoisers, VAEs: plain self / cross attention);
    #: False: always the ONNX-standard decomposition (text encoders, whose attention is masked)
    fuse_attention: bool = False

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {t.name: t.dynamic_axes() for t in self.inputs + self.outputs}
        return {k: v for k, v in axes.items() if v}


@dataclass(frozen=True)
class TokenizerSpec:
    name: str  # manifest key and engine folder: "tokenizer", "tokenizer_2", ...
    folder: str  # source folder holding the tokenizer's files
    #: (library, class) from model_index.json; None: transformers' AutoTokenizer (captioner folders)
    source_class: tuple[str, str] | None = None
    text_encoder: str | None = None  # the component whose input_ids it makes
    max_length: int | None = None  # default: the tokenizer's model_max_length
    #: True: pad / truncate every prompt to max_length, as diffusers does (text encoders); False: plain
    #: encoding, and decoding is checked against transformers (captioners)
    prompt_padding: bool = True
