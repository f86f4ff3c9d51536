"""Adapter operators (LoRA, PRoLoRA, SoRA) wrapped around frozen linear modules from outside, their parameter
cost, the retrain-time wrapping of a selection, and the export to PEFT. Importing the package registers every
operator in :data:`nas.adapters.operators.OPERATORS`."""

from nas.adapters import lora, prolora, sora  # noqa: F401  (each registers its operator)
