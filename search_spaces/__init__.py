"""Search spaces: LoRA candidate linear modules of a transformer and their (layer, module type) DAM grid."""

from search_spaces.candidate import Candidate
from search_spaces.presets import MODEL_TYPE_TO_PRESET, MODULE_TYPE_PRESETS, preset_for_model
from search_spaces.space import SearchSpace, build_search_space

__all__ = [
    "MODEL_TYPE_TO_PRESET",
    "MODULE_TYPE_PRESETS",
    "Candidate",
    "SearchSpace",
    "build_search_space",
    "preset_for_model",
]
