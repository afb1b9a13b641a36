"""lmms-eval registration of the MM-SY model adapter.

lmms-eval reads the ``lmms_eval.models`` entry-point group; this module is
that entry point, and it imports nothing heavy so that listing models stays fast.
"""

from lmms_eval.models.registry_v2 import ModelManifest

MODEL_ID = "mmsy_hf"


def manifest() -> ModelManifest:
    """Return the manifest that registers the MM-SY chat adapter under ``mmsy_hf``."""
    return ModelManifest(model_id=MODEL_ID, chat_class_path="mmsy_models.adapter.MMSYHF")
