"""Models built on dilated convolutions, created by name: ``atrous.models.create(name, ...)``."""

from atrous.models import segmentation, sequence  # noqa: F401  (registers the models)
from atrous.models._registry import create, list_models, model_task, register_model

__all__ = ["create", "list_models", "model_task", "register_model"]
