"""``python -m sim``: run the simulated streaming site against a recommendation service.

It writes movielog lines to Kafka (or a file), calls ``/recommend`` over HTTP, serves the
course API with ``/metrics`` and ``/sim/status``, stops on SIGTERM, SIGINT, ``--duration``
or ``--lines``, and prints a JSON summary (with the ground truth) at the end.

Examples::

    python -m sim --duration 600
    python -m sim --catalog synthetic --users 20000 --speed 120 --lines-per-second 500
    python -m sim --faults noise=0.01,api-errors=0.05 --attack rating-burst:accounts=300
    python -m sim --output - --no-api --duration 10 --recommend-url http://127.0.0.1:9
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from sim.course_api import DEFAULT_API_HOST, DEFAULT_API_PORT, create_api_app, serve_api
from sim.faults import NOISE_KINDS, FaultConfig, RatingBurstConfig, WatchBotsConfig
from sim.simulation import FileSink, KafkaSink, LineSink, Simulation, SimulationConfig
from sim.site import SiteConfig
from sim.world import World, WorldConfig

__all__ = ["build_parser", "main", "parse_attack", "parse_faults", "world_config"]

log = logging.getLogger("sim")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="A simulated course streaming site: movielog lines to Kafka, "
        "/recommend calls over HTTP, the course API on --api-port.",
    )
    out = parser.add_argument_group("where lines go")
    out.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    out.add_argument("--topic", default="movielog", help="Kafka topic of the lines")
    out.add_argument("--output", default=None, help="write lines to this file ('-': stdout)")
    service = parser.add_argument_group("the recommendation service")
    service.add_argument(
        "--recommend-url", default="http://127.0.0.1:8082", help="base URL of /recommend"
    )
    service.add_argument(
        "--server-name", default=None, help="<server> of the lines; None: the URL's host:port"
    )
    service.add_argument("--timeout-ms", type=int, default=800, help="the site's timeout")
    service.add_argument(
        "--version-header",
        default="X-Model-Version",
        help="response header naming the model version (labels truth and conversion)",
    )
    api = parser.add_argument_group("the course API")
    api.add_argument("--api-host", default=DEFAULT_API_HOST, help="address of the course API")
    api.add_argument("--api-port", type=int, default=DEFAULT_API_PORT, help="its port")
    api.add_argument("--no-api", action="store_true", help="do not serve the course API")
    world = parser.add_argument_group("the world")
    world.add_argument(
        "--catalog", default="course", help="course, movielens, synthetic or a CSV path"
    )
    world.add_argument("--data-dir", type=Path, default=None, help="the shared data folder")
    world.add_argument(
        "--movies", type=int, default=27_000, help="pad or trim to this; 0: the catalog as is"
    )
    world.add_argument("--users", type=int, default=1_000_000, help="population: ids 1..N")
    world.add_argument("--seed", type=int, default=0, help="seed of the world and behaviour")
    world.add_argument("--export-catalog", type=Path, default=None, help="write the catalog CSV")
    pace = parser.add_argument_group("pace")
    pace.add_argument("--speed", type=float, default=60.0, help="simulated s per real s")
    pace.add_argument(
        "--lines-per-second", type=float, default=200.0, help="target rate of user lines"
    )
    pace.add_argument(
        "--arrivals-per-second", type=float, default=None, help="fixed arrival rate instead"
    )
    pace.add_argument("--start", default=None, help="simulated start time (ISO, UTC)")
    pace.add_argument("--duration", type=float, default=None, help="real seconds to run")
    pace.add_argument("--lines", type=int, default=None, help="stop after this many lines")
    pace.add_argument(
        "--no-warm-start", action="store_true", help="start empty (no sessions in progress)"
    )
    pace.add_argument(
        "--watch-time-ms", action="store_true", help="milliseconds on watch and rate lines too"
    )
    pace.add_argument(
        "--no-truth", action="store_true", help="skip the ground truth (pure load generation)"
    )
    bad = parser.add_argument_group("faults and attacks")
    bad.add_argument(
        "--faults",
        action="append",
        default=[],
        metavar="KEY=VALUE[,...]",
        help="noise=RATE, noise-kinds=K1+K2 (of " + ", ".join(NOISE_KINDS) + "), "
        "api-errors=RATE, api-slow=RATE, api-delay=SECONDS",
    )
    bad.add_argument("--no-noise", action="store_true", help="no stream noise at all")
    bad.add_argument(
        "--attack",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="rating-burst[:movie=ID,accounts=N,at=S,spread=S,watch-minutes=N] or "
        "watch-bots[:movie=ID,bots=N,at=S,loops=N]",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (to stderr)")
    return parser


def _pairs(text: str, what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what}: expected KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_faults(specs: Sequence[str], noise: bool = True) -> FaultConfig:
    """``--faults`` values as a ``FaultConfig`` (attacks are added by ``parse_attack``).

    Examples
    --------
    >>> parse_faults(["noise=0.01,api-errors=0.05"]).api_error_rate
    0.05
    >>> parse_faults(["noise-kinds=duplicate+bad_user"]).noise_kinds
    ('duplicate', 'bad_user')
    >>> parse_faults(["loud=1"])
    Traceback (most recent call last):
    ...
    ValueError: --faults: unknown key 'loud' (noise, noise-kinds, api-errors, api-slow, api-delay)
    """
    config = FaultConfig()
    for spec in specs:
        for key, value in _pairs(spec, "--faults").items():
            if key == "noise":
                config = replace(config, noise_rate=float(value))
            elif key == "noise-kinds":
                config = replace(config, noise_kinds=tuple(filter(None, value.split("+"))))
            elif key == "api-errors":
                config = replace(config, api_error_rate=float(value))
            elif key == "api-slow":
                config = replace(config, api_slow_rate=float(value))
            elif key == "api-delay":
                config = replace(config, api_slow_seconds=float(value))
            else:
                raise ValueError(
                    f"--faults: unknown key {key!r} "
                    "(noise, noise-kinds, api-errors, api-slow, api-delay)"
                )
    return config if noise else replace(config, noise_rate=0.0)


def parse_attack(spec: str) -> RatingBurstConfig | WatchBotsConfig:
    """One ``--attack`` value.

    Examples
    --------
    >>> burst = parse_attack("rating-burst:accounts=50,at=10")
    >>> burst.accounts, burst.start_after_s, burst.movie_id
    (50, 10.0, None)
    >>> parse_attack("watch-bots").bots
    5
    """
    name, _, options = spec.partition(":")
    pairs = _pairs(options, f"--attack {name}")
    if name == "rating-burst":
        known = {"movie", "accounts", "at", "spread", "watch-minutes"}
        _check_keys(pairs, known, name)
        return RatingBurstConfig(
            movie_id=pairs.get("movie"),
            accounts=int(pairs.get("accounts", 200)),
            start_after_s=float(pairs.get("at", 60.0)),
            spread_s=float(pairs.get("spread", 30.0)),
            watch_minutes=int(pairs.get("watch-minutes", 1)),
        )
    if name == "watch-bots":
        _check_keys(pairs, {"movie", "bots", "at", "loops"}, name)
        loops = pairs.get("loops")
        return WatchBotsConfig(
            movie_id=pairs.get("movie"),
            bots=int(pairs.get("bots", 5)),
            start_after_s=float(pairs.get("at", 0.0)),
            loops=int(loops) if loops is not None else None,
        )
    raise ValueError(f"--attack: unknown attack {name!r} (rating-burst, watch-bots)")


def _check_keys(pairs: dict[str, str], known: set[str], name: str) -> None:
    unknown = sorted(set(pairs) - known)
    if unknown:
        raise ValueError(f"--attack {name}: unknown keys {unknown} (known: {sorted(known)})")


def world_config(args: argparse.Namespace) -> WorldConfig:
    """The world of these command-line arguments (``build_parser().parse_args([])``: the
    world a simulator started without arguments plays)."""
    return WorldConfig(
        catalog=args.catalog,
        movies=args.movies or None,
        users=args.users,
        seed=args.seed,
        data_dir=args.data_dir,
    )


def _config(args: argparse.Namespace) -> SimulationConfig:
    faults = parse_faults(args.faults, noise=not args.no_noise)
    for spec in args.attack:
        attack = parse_attack(spec)
        if isinstance(attack, RatingBurstConfig):
            faults = replace(faults, rating_burst=attack)
        else:
            faults = replace(faults, watch_bots=attack)
    if not urlsplit(args.recommend_url).hostname:
        raise ValueError(f"--recommend-url {args.recommend_url!r} has no host")
    start = None
    if args.start is not None:
        parsed = datetime.fromisoformat(args.start)
        start = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return SimulationConfig(
        world=world_config(args),
        site=SiteConfig(
            speed=args.speed,
            lines_per_second=args.lines_per_second,
            arrivals_per_second=args.arrivals_per_second,
            server_name=args.server_name,
            timeout_ms=args.timeout_ms,
            watch_time_fraction=args.watch_time_ms,
            warm_start=not args.no_warm_start,
            ground_truth=not args.no_truth,
        ),
        faults=faults,
        seed=args.seed,
        start=start,
        clock_lead_s=args.duration if args.duration is not None else 12 * 3600.0,
        version_header=args.version_header or None,
    )


async def _run(args: argparse.Namespace, config: SimulationConfig) -> dict[str, object]:
    world = World.build(config.world)
    if args.export_catalog is not None:
        count = world.write_catalog(args.export_catalog)
        log.info("wrote %d movies to %s", count, args.export_catalog)
    sink: LineSink = (
        FileSink(args.output) if args.output is not None else KafkaSink(args.bootstrap, args.topic)
    )
    simulation = Simulation(config, recommend=args.recommend_url, sink=sink, world=world)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, simulation.stop)
    runner = None
    try:
        if not args.no_api:
            app = create_api_app(
                world,
                view=simulation,
                faults=config.faults,
                registry=simulation.registry,
                seed=config.seed,
            )
            runner, port = await serve_api(app, args.api_host, args.api_port)
            log.info("course API on http://%s:%d", args.api_host, port)
        return await simulation.run(duration_s=args.duration, lines=args.lines)
    finally:
        if runner is not None:
            await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator; 0 on a clean stop, 1 when it could not run, 2 on bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = _config(args)
    except ValueError as exc:
        sys.stderr.write(f"sim: {exc}\n")
        return 2
    try:
        summary = asyncio.run(_run(args, config))
    except ValueError as exc:
        sys.stderr.write(f"sim: {exc}\n")
        return 2
    except Exception as exc:  # the broker or a port is unreachable: say so, exit non-zero
        sys.stderr.write(f"sim: {type(exc).__name__}: {exc}\n")
        return 1
    stream = sys.stderr if args.output == "-" else sys.stdout
    stream.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    stream.flush()
    return 0
