"""One candidate site for a LoRA adapter: a linear module with its (layer, module type) coordinate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A linear module inside a transformer layer that may receive a LoRA adapter.

    Attributes:
        name: full module name relative to the model given, exactly as in ``model.named_modules()``.
        layer: transformer layer index (the integer path component under the repeated-block container).
        module_type: the module-type pattern it matched, e.g. ``"query"`` or ``"attention.output.dense"``.
        in_features: input width of the linear map.
        out_features: output width of the linear map.
    """

    name: str
    layer: int
    module_type: str
    in_features: int
    out_features: int

    def to_dict(self) -> dict[str, str | int]:
        """JSON-able form of this candidate."""
        return {
            "name": self.name,
            "layer": self.layer,
            "module_type": self.module_type,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }
