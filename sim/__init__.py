"""A simulated streaming site: users, sessions, the course API. Imports nothing of the project.

It talks to reelfeed only as the course's site does: movielog lines on Kafka and
``GET /recommend/<uid>`` over HTTP. Run it with ``python -m sim`` (``sim.cli.main``); from
Python, build a ``Simulation`` (real time) or drive a ``Site`` (pure, offline).

Modules: ``world`` (catalog, users, hidden tastes), ``site`` (behaviour core),
``simulation`` (real-time driver, Kafka and HTTP), ``course_api`` (``/user``, ``/movie``,
``/metrics``, ``/sim/status``), ``faults`` (noise, API faults, attacks), ``truth``
(ground-truth quality of served lists), ``lines`` (the course's line formats).
"""

from sim.course_api import create_api_app, serve_api
from sim.faults import FaultConfig, NoiseInjector, RatingBurstConfig, WatchBotsConfig
from sim.lines import LogLine, Record
from sim.simulation import (
    FileSink,
    FunctionRecommender,
    HttpRecommender,
    KafkaSink,
    ListSink,
    Simulation,
    SimulationConfig,
)
from sim.site import RecommendationOutcome, Site, SiteConfig
from sim.truth import ListQuality, TruthTracker
from sim.world import Movie, UserProfile, World, WorldConfig

__all__ = [
    "FaultConfig",
    "FileSink",
    "FunctionRecommender",
    "HttpRecommender",
    "KafkaSink",
    "ListQuality",
    "ListSink",
    "LogLine",
    "Movie",
    "NoiseInjector",
    "RatingBurstConfig",
    "RecommendationOutcome",
    "Record",
    "Simulation",
    "SimulationConfig",
    "Site",
    "SiteConfig",
    "TruthTracker",
    "UserProfile",
    "WatchBotsConfig",
    "World",
    "WorldConfig",
    "create_api_app",
    "serve_api",
]
