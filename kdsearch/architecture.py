"""Plain, JSON-serialisable network descriptions.

An architecture says *what* a network is, independent of the data it will see; `models.py`
turns one into a `torch.nn.Module` once the input shape and class count are known. Keeping
them as frozen pydantic models lets the same object live in a study file, a trial's user
attributes and an exported model folder.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConvLayer(_Frozen):
    channels: int = Field(ge=1, le=4096)
    kernel: int = Field(default=3, ge=1, le=15)
    padding: Literal["same", "valid"] = "same"
    pool: bool = False  # 2x2 max-pool after this layer (and its ReLU)


class MLPArch(_Frozen):
    family: Literal["mlp"] = "mlp"
    hidden: list[int] = Field(default_factory=list)  # widths of the hidden layers, in order
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # after every hidden layer
    input_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # on the pixels (Srivastava et al.: 0.2)

    def describe(self) -> str:
        return "mlp " + ("-".join(map(str, self.hidden)) or "linear")

    @property
    def n_layers(self) -> int:
        """Hidden layers: the depth that sweeps plot accuracy against."""
        return len(self.hidden)


class CNNArch(_Frozen):
    family: Literal["cnn"] = "cnn"
    convs: list[ConvLayer] = Field(min_length=1)
    dense: list[int] = Field(default_factory=list)  # hidden dense widths after flatten
    conv_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # after every pooling layer
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # after every hidden dense layer

    def describe(self) -> str:
        convs = "-".join(
            f"{c.channels}k{c.kernel}{'v' if c.padding == 'valid' else ''}{'p' if c.pool else ''}"
            for c in self.convs
        )
        dense = "-".join(map(str, self.dense))
        return f"cnn {convs}" + (f" dense {dense}" if dense else "")

    @property
    def n_layers(self) -> int:
        """Conv layers: the depth that sweeps plot accuracy against."""
        return len(self.convs)


Arch = Annotated[MLPArch | CNNArch, Field(discriminator="family")]


def parse_arch(raw: dict) -> MLPArch | CNNArch:
    """An architecture from its JSON (a trial, a teacher's meta.json, an exported folder): the
    one constructor, so a new family is readable everywhere once it joins `Arch`."""
    return _ARCH.validate_python(raw)


_ARCH: TypeAdapter = TypeAdapter(Arch)
