"""Pure, synchronous ML: online matrix factorization, popularity, ranking, evaluation.

``online_model.ranking`` needs numpy alone (the server imports it without river), so this
package imports its river-based models lazily, on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from online_model.base import ModelDelta, Recommender
    from online_model.evaluation import Candidate, Interaction, PrequentialReport, prequential
    from online_model.feedback import FeedbackWeights
    from online_model.mf import OnlineMF
    from online_model.popularity import DecayedPopularity, Popularity
    from online_model.ranking import RankingTable, top_k
    from online_model.river_reco import RiverRecommender

__all__ = [
    "Candidate",
    "DecayedPopularity",
    "FeedbackWeights",
    "Interaction",
    "ModelDelta",
    "OnlineMF",
    "Popularity",
    "PrequentialReport",
    "RankingTable",
    "Recommender",
    "RiverRecommender",
    "prequential",
    "top_k",
]

_MODULES = {
    "Candidate": "evaluation",
    "DecayedPopularity": "popularity",
    "FeedbackWeights": "feedback",
    "Interaction": "evaluation",
    "ModelDelta": "base",
    "OnlineMF": "mf",
    "Popularity": "popularity",
    "PrequentialReport": "evaluation",
    "RankingTable": "ranking",
    "Recommender": "base",
    "RiverRecommender": "river_reco",
    "prequential": "evaluation",
    "top_k": "ranking",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'online_model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"online_model.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
