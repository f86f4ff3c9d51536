"""Every method behind one interface (:class:`~nas.methods.base.Method`), registered in :data:`METHODS`."""

from nas.methods import adalora, diffora, fixed, full_finetune, lora, random_selection, sora  # noqa: F401 (registration)
from nas.methods.base import METHODS, Method, MethodContext, Prepared, TrainingHooks

__all__ = ["METHODS", "Method", "MethodContext", "Prepared", "TrainingHooks"]
