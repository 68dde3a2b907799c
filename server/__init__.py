"""The aiohttp recommendation server: ``GET /recommend/{user_id}`` and its operations.

``create_app(config)`` builds the application; ``run_server(config, workers)`` runs it
on uvloop (``reelfeed serve``). See ``server.service`` for which list a user gets.
"""

from server.app import create_app, parse_user_id
from server.config import ServerConfig
from server.metrics import ServerMetrics
from server.openapi import openapi_document
from server.profiles import HttpProfiles, NoProfiles, ProfileSource, UserProfile
from server.provenance import KafkaProvenance, NullProvenance, ProvenanceRecord, ProvenanceSink
from server.run import run_server, serve
from server.scoring import ModelScorer, ScoringError
from server.service import Recommendation, Recommender, Refresher, ServingState
from server.sources import ModelSource, PopularitySource, RedisModelSource, RoutingSource

__all__ = [
    "HttpProfiles",
    "KafkaProvenance",
    "ModelScorer",
    "ModelSource",
    "NoProfiles",
    "NullProvenance",
    "PopularitySource",
    "ProfileSource",
    "ProvenanceRecord",
    "ProvenanceSink",
    "Recommendation",
    "Recommender",
    "RedisModelSource",
    "Refresher",
    "RoutingSource",
    "ScoringError",
    "ServerConfig",
    "ServerMetrics",
    "ServingState",
    "UserProfile",
    "create_app",
    "openapi_document",
    "parse_user_id",
    "run_server",
    "serve",
]
