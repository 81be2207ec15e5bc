"""kn_utils: the library behind the knowledge-neurons reproduction notebooks (mechanisms; protocols in ``kn_utils.experiments``).

    import kn_utils as kn
    lm = kn.load_model("smollm2-135m")
    pararel = kn.load_pararel()
    with kn.patch_ffn(lm, [(12, 345)], mode="zero"):
        p = kn.answer_probs(lm, prompts, answers)

Names are imported on first use, so ``python -m kn_utils.data`` and the runner start
without loading torch.
"""
import importlib

_EXPORTS = {
    "models": ["ADAPTERS", "Adapter", "AnswerTokenError", "Batch", "LanguageModel", "ModelNotAvailableError",
               "PromptError", "UnknownModelError", "load_model"],
    "hooks": ["patch_ffn", "record_ffn"],
    "evaluation": ["answer_probs", "evaluate", "predict", "prediction_distribution"],
    "stats": ["bootstrap_ci"],
    "data": ["Pararel", "UnknownRelationError", "fetch_pararel", "load_pararel"],
}
# mechanisms; the notebooks' protocols are in kn_utils.experiments
_MODULES = ["ablation", "attribution", "attribution_cache", "bench", "data", "distributed", "edits", "evaluation", "experiments", "hooks", "ig_path",
            "io", "lens", "models", "neurons", "plotting", "report", "runner", "stats"]
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE) + _MODULES


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'kn_utils' has no attribute {name!r}")


def __dir__():
    return __all__
