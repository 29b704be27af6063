"""genretrieval: generative retrieval for joint search and recommendation.

Submodules are imported on demand so that ``import genretrieval`` stays cheap (about 2 ms): it imports neither torch
nor transformers. The heavy HuggingFace imports happen only when a model, tokenizer or trainer is used.

Importing the package also makes ``transformers.pipeline("generative-retrieval", model=path)`` available, without
paying for transformers' pipelines module up front: if that module is already loaded, the task is registered at once;
otherwise a one-shot import hook registers it right after ``transformers.pipelines`` is first imported (for example
by ``from transformers import pipeline``), then removes itself. See :mod:`genretrieval.pipelines`.
"""

from __future__ import annotations  # annotations stay strings: `typing` and `importlib.abc` are never imported

import importlib
import sys
import types
import warnings
from importlib.machinery import ModuleSpec

__version__ = "0.1.0"

_PIPELINES_MODULE = "transformers.pipelines"


def _register_pipeline_task() -> None:
    """Register the ``"generative-retrieval"`` task with transformers (imports :mod:`genretrieval.pipelines`)."""
    try:
        importlib.import_module("genretrieval.pipelines").register_pipeline()
    except Exception as err:  # noqa: BLE001 - a bug of ours must not break importing transformers or genretrieval
        warnings.warn(f"genretrieval could not register the 'generative-retrieval' pipeline task: {err!r}",
                      RuntimeWarning, stacklevel=2)


class _RegisteringLoader:
    """Runs the real loader of ``transformers.pipelines``, then registers the task."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        """Delegate to the real loader."""
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        """Execute the module with the real loader, hand the module back to it, then register the task."""
        try:
            self._loader.exec_module(module)
        finally:
            # Leave no trace of this wrapper on the module: tools that inspect __loader__ see the usual one.
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader
        _remove_pipeline_hook()
        _register_pipeline_task()

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)


class _PipelineRegistrationHook:
    """Meta-path finder that only wraps the loader of ``transformers.pipelines``; every other import is untouched."""

    def find_spec(self, fullname: str, path: list[str] | None,
                  target: types.ModuleType | None = None) -> ModuleSpec | None:
        """Spec of ``transformers.pipelines`` from the other finders, with a registering loader; ``None`` otherwise."""
        if fullname != _PIPELINES_MODULE:
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def _remove_pipeline_hook() -> None:
    """Take the import hook off ``sys.meta_path`` (no-op if it is not there)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "_genretrieval_pipeline_hook", False)]


def _install_pipeline_registration() -> None:
    """Register the pipeline task now if transformers' pipelines are loaded, else when they first are."""
    if _PIPELINES_MODULE in sys.modules:
        _register_pipeline_task()
        return
    _remove_pipeline_hook()  # a reloaded package must not stack a second hook
    hook = _PipelineRegistrationHook()
    hook._genretrieval_pipeline_hook = True
    sys.meta_path.insert(0, hook)


_install_pipeline_registration()
