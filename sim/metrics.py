"""The simulator's Prometheus metrics, read from its counters at scrape time.

The core (``Site``, ``TruthTracker``, ``NoiseInjector``) stays pure and keeps plain
counters; ``SimulationCollector`` turns them into metric families when Prometheus
scrapes ``/metrics``. Names follow ``reelfeed_sim_<what>_<unit>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from sim.faults import NoiseInjector
from sim.site import LATENCY_BUCKETS_MS, Site

__all__ = ["SimulationCollector"]


class SimulationCollector:
    """A Prometheus collector over a running simulation's counters.

    Parameters
    ----------
    site
        The site core (behaviour counters, conversions, ground truth).
    noise
        The noise injector (faults by kind).
    produced
        Records handed to the sink, by ``(kind, actor)``.
    sink_errors
        Number of records the sink failed to deliver.

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> from sim.site import SiteConfig
    >>> from sim.world import World, WorldConfig
    >>> world = World.build(WorldConfig(catalog="synthetic", movies=100, users=100, seed=1))
    >>> site = Site(world, SiteConfig(arrivals_per_second=1.0, warm_start=False), start=0.0)
    >>> registry = CollectorRegistry()
    >>> registry.register(SimulationCollector(site, NoiseInjector(), {}, lambda: 0))
    >>> b"reelfeed_sim_conversion_ratio 0.0" in generate_latest(registry)
    True
    """

    def __init__(
        self,
        site: Site,
        noise: NoiseInjector,
        produced: Mapping[tuple[str, str], int],
        sink_errors: Callable[[], int],
    ) -> None:
        self.site = site
        self.noise = noise
        self.produced = produced
        self.sink_errors = sink_errors

    def collect(self) -> Iterable[Metric]:
        stats = self.site.stats
        lines = CounterMetricFamily(
            "reelfeed_sim_lines", "Lines produced, by kind and actor", labels=["kind", "actor"]
        )
        for (kind, actor), count in sorted(self.produced.items()):
            lines.add_metric([kind, actor], count)
        yield lines
        noise = CounterMetricFamily(
            "reelfeed_sim_noise_lines", "Lines given injected noise, by fault", labels=["fault"]
        )
        for fault, count in sorted(self.noise.counts.items()):
            noise.add_metric([fault], count)
        yield noise
        yield CounterMetricFamily(
            "reelfeed_sim_sink_errors", "Lines the sink failed to deliver", value=self.sink_errors()
        )
        requests = CounterMetricFamily(
            "reelfeed_sim_recommend_requests",
            "Recommendation calls, by outcome (ok, empty, timeout, refused, http_error, error)",
            labels=["outcome"],
        )
        for outcome, count in sorted(stats.requests.items()):
            requests.add_metric([outcome], count)
        yield requests
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(LATENCY_BUCKETS_MS, stats.latency_buckets, strict=True):
            cumulative += count
            buckets.append((repr(bound / 1000.0), cumulative))
        buckets.append(("+Inf", stats.latency_count))
        yield HistogramMetricFamily(
            "reelfeed_sim_recommend_latency_seconds",
            "Response time of /recommend as the site measured it",
            buckets=buckets,
            sum_value=stats.latency_sum_ms / 1000.0,
        )
        closed = CounterMetricFamily(
            "reelfeed_sim_recommendations_closed",
            "Recommendation requests whose conversion window has closed, by model version",
            labels=["version"],
        )
        converted = CounterMetricFamily(
            "reelfeed_sim_recommendations_converted",
            "Closed requests followed, within the window, by a watch of a listed movie",
            labels=["version"],
        )
        for version, count in sorted(stats.closed_by_version.items()):
            closed.add_metric([version], count)
            converted.add_metric([version], stats.converted_by_version.get(version, 0))
        yield closed
        yield converted
        yield GaugeMetricFamily(
            "reelfeed_sim_conversion_ratio",
            "Conversion over the last 1000 closed recommendation windows",
            value=stats.recent_conversion_rate,
        )
        arrivals = CounterMetricFamily(
            "reelfeed_sim_arrivals", "Users arriving, new or returning", labels=["user"]
        )
        arrivals.add_metric(["fresh"], stats.fresh_users)
        arrivals.add_metric(["returning"], stats.returning_users)
        yield arrivals
        watches = CounterMetricFamily(
            "reelfeed_sim_watches", "Movies started, by where they were found", labels=["source"]
        )
        for source, count in sorted(stats.watches.items()):
            watches.add_metric([source], count)
        yield watches
        yield CounterMetricFamily("reelfeed_sim_ratings", "Ratings given", value=stats.ratings)
        yield GaugeMetricFamily(
            "reelfeed_sim_active_sessions", "Sessions in progress", value=self.site.active_sessions
        )
        yield GaugeMetricFamily(
            "reelfeed_sim_arrival_rate",
            "Arrivals per real second the site aims at",
            value=self.site.arrival_rate,
        )
        yield GaugeMetricFamily(
            "reelfeed_sim_clock_seconds",
            "The simulated clock, as Unix time",
            value=self.site.now,
        )
        truth = self.site.truth
        lists = SummaryMetricFamily(
            "reelfeed_sim_truth_list_match",
            "Hidden mean match of served lists (served) and of the best and popularity lists",
            labels=["version", "list"],
        )
        quality = SummaryMetricFamily(
            "reelfeed_sim_truth_normalized_quality",
            "(served - popularity) / (best - popularity) of served lists",
            labels=["version"],
        )
        for version, totals in sorted(truth.versions.items()):
            lists.add_metric([version, "served"], totals.lists, totals.served)
            lists.add_metric([version, "best"], totals.lists, totals.best)
            lists.add_metric([version, "popularity"], totals.lists, totals.popularity)
            quality.add_metric([version], totals.lists, totals.normalized)
        yield lists
        yield quality
        watched = SummaryMetricFamily(
            "reelfeed_sim_truth_watched_match",
            "Hidden match of started movies, by where they were found",
            labels=["source"],
        )
        for source, watch_totals in sorted(truth.watches.items()):
            watched.add_metric([source], watch_totals.watches, watch_totals.match)
        yield watched
