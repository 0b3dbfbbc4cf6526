"""agesearch: hyperparameter search for two-branch age/gender CNNs on UTKFace.

The Python API (search/api.py documents it):

    import agesearch

    study = agesearch.search(space="train", data="synthetic", n_trials=20)  # an optuna.Study
    card = agesearch.export(study, out="model.keras")                       # the model card
    agesearch.load_model("model.keras").predict(["face.jpg"])              # a pandas DataFrame

`import agesearch` loads no framework: each function imports Optuna, Keras and the rest when
it is first called (`agesearch.search` is the sub-package, made callable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agesearch import search  # the sub-package (light), callable: agesearch.search(...) runs a search

__version__ = "0.1.0"
__all__ = ["__version__", "search", "export", "load_model", "mlflow_callback"]

_API = ("export", "load_model", "mlflow_callback")

if TYPE_CHECKING:
    from agesearch.search.api import export, load_model, mlflow_callback


def __getattr__(name: str):
    """`agesearch.export`, `load_model`, `mlflow_callback`: imported from search/api.py on first use."""
    if name in _API:
        from agesearch.search import api

        return getattr(api, name)
    raise AttributeError(f"module 'agesearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
