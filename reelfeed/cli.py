"""The ``reelfeed`` command line; subcommands that a machine reads print JSON."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import orjson

from reelfeed import __version__
from reelfeed.infra import (
    KAFKA_VERSION,
    STACKS,
    InfraError,
    KafkaBroker,
    RedisServer,
    StackLayout,
    create_topics,
    default_cache_dir,
    resolve_kafka_jars,
)
from reelfeed.settings import Settings, SettingsError

__all__ = ["build_parser", "main", "stack_down", "stack_up"]

log = logging.getLogger("reelfeed")


def _print_json(value: object) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def _stack_settings(stack: StackLayout, settings: Settings) -> Settings:
    """Point the settings at a stack's own broker, Redis and folder."""
    return settings.replace(
        kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url, var_dir=stack.root
    )


def _infra_up(
    stack: StackLayout, settings: Settings, environ: Mapping[str, str]
) -> dict[str, object]:
    started_at = time.monotonic()
    lib = resolve_kafka_jars(default_cache_dir(environ))
    redis_server = RedisServer(stack, persist=stack.name != "test")
    broker = KafkaBroker(stack, lib)
    redis_started = redis_server.start()
    kafka_started = broker.start()
    created = create_topics(broker.bootstrap, _stack_settings(stack, settings).topics())
    return {
        "stack": stack.name,
        "kafka": {
            "bootstrap": broker.bootstrap,
            "started": kafka_started,
            "version": KAFKA_VERSION,
        },
        "redis": {"url": redis_server.url, "started": redis_started},
        "topics_created": created,
        "seconds": round(time.monotonic() - started_at, 2),
    }


def _infra_down(stack: StackLayout) -> dict[str, object]:
    lib = Path("/nonexistent")  # stopping needs no jars
    return {
        "stack": stack.name,
        "kafka_stopped": KafkaBroker(stack, lib).stop(),
        "redis_stopped": RedisServer(stack).stop(),
    }


def _infra_status(stack: StackLayout) -> dict[str, object]:
    lib = Path("/nonexistent")
    return {
        "stack": stack.name,
        "kafka": {"bootstrap": stack.kafka_bootstrap, "pid": KafkaBroker(stack, lib).process.pid()},
        "redis": {"url": stack.redis_url, "pid": RedisServer(stack).process.pid()},
    }


def cmd_infra(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    stack = STACKS[args.stack]
    if args.action == "up":
        _print_json(_infra_up(stack, settings, environ))
    elif args.action == "down":
        _print_json(_infra_down(stack))
    elif args.action == "status":
        _print_json(_infra_status(stack))
    elif args.action == "jars":
        _print_json({"lib": str(resolve_kafka_jars(default_cache_dir(environ)))})
    return 0


def stack_up(
    stack: StackLayout, settings: Settings, environ: Mapping[str, str], timeout: float = 180.0
) -> dict[str, object]:
    """Start a stack's supervisor in the background and wait until the stack runs."""
    from reelfeed.supervise import read_status, supervisor_process

    supervisor = supervisor_process(stack)
    if supervisor.pid() is None:
        # Resolve the jars here, so a first `make up` shows Maven's errors in the terminal.
        resolve_kafka_jars(default_cache_dir(environ))
        (stack.root / "status.json").unlink(missing_ok=True)
        layout = orjson.dumps(
            {
                "name": stack.name,
                "root": str(stack.root.resolve()),
                "kafka_port": stack.kafka_port,
                "controller_port": stack.controller_port,
                "redis_port": stack.redis_port,
                "prometheus_port": stack.prometheus_port,
                "alertmanager_port": stack.alertmanager_port,
                "simulator": stack.simulator,
            }
        ).decode()
        command = [sys.executable, "-m", "reelfeed", "supervise", f"--layout={layout}"]
        env = dict(environ)
        env["REELFEED_VAR_DIR"] = str(stack.root)
        supervisor.spawn(command, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(stack)
        if status is not None and status.get("state") == "running":
            return status
        if not (supervisor.spawned_alive() or supervisor.is_running()):
            raise InfraError(f"the stack's supervisor exited:\n{supervisor.log_tail()}")
        time.sleep(0.2)
    supervisor.stop(timeout=60)  # half a stack helps nobody
    raise InfraError(f"the stack did not start within {timeout:.0f} s:\n{supervisor.log_tail()}")


def stack_down(stack: StackLayout, settings: Settings) -> dict[str, object]:
    """Stop a stack's supervisor (which stops everything it started), then any leftover."""
    from reelfeed.supervise import stack_roles, stop_roles, supervisor_process

    supervisor_stopped = supervisor_process(stack).stop(timeout=120)
    # Whatever still runs now outlived a supervisor that died: stop it too.
    leftovers = stop_roles(stack, stack_roles(stack, settings))
    infra = _infra_down(stack)
    leftovers.update({"kafka": bool(infra["kafka_stopped"]), "redis": bool(infra["redis_stopped"])})
    return {
        "stack": stack.name,
        "supervisor_stopped": supervisor_stopped,
        "leftovers_stopped": sorted(name for name, stopped in leftovers.items() if stopped),
    }


def cmd_supervise(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from reelfeed.supervise import Supervisor

    stack = STACKS[args.stack]
    if args.layout is not None:
        fields = orjson.loads(args.layout)
        stack = StackLayout(
            fields["name"],
            Path(fields["root"]),
            int(fields["kafka_port"]),
            int(fields["controller_port"]),
            int(fields["redis_port"]),
            int(fields["prometheus_port"]),
            int(fields["alertmanager_port"]),
            bool(fields["simulator"]),
        )
    return Supervisor(stack, _stack_settings(stack, settings), environ).run()


def cmd_up(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    _print_json(stack_up(STACKS["dev"], settings, environ))
    return 0


def cmd_down(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    _print_json(stack_down(STACKS["dev"], settings))
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from reelfeed.workers import run_ingest_worker

    if args.var_dir is not None:
        settings = settings.replace(var_dir=Path(args.var_dir))
    run_ingest_worker(settings)
    return 0


def cmd_learn(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from reelfeed.workers import run_learn_worker

    if args.var_dir is not None:
        settings = settings.replace(var_dir=Path(args.var_dir))
    run_learn_worker(settings, environ)
    return 0


def cmd_relay(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from reelfeed.workers import run_relay_worker

    if args.source is not None:
        settings = settings.replace(relay_bootstrap=args.source)
    if args.topic is not None:
        settings = settings.replace(relay_topic=args.topic)
    run_relay_worker(settings)
    return 0


def cmd_versions(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    import asyncio
    from dataclasses import asdict

    import redis.asyncio as aioredis

    from state import KeySchema, RoutingStore, VersionRegistry

    async def run() -> object:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            keys = KeySchema(settings.redis_prefix)
            registry = VersionRegistry(client, keys)
            routing = (await RoutingStore(client, keys).get()).to_json()
            if args.action == "list":
                return {
                    "routing": routing,
                    "versions": [asdict(record) for record in await registry.list()],
                }
            record = await registry.get(args.name)
            return None if record is None else {"routing": routing, **asdict(record)}
        finally:
            await client.aclose()

    result = asyncio.run(run())
    if result is None:
        sys.stderr.write(f"reelfeed: no model version {args.name!r}\n")
        return 1
    _print_json(result)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from server import ServerConfig, run_server

    config = ServerConfig(
        host=settings.server_host,
        port=settings.server_port,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        kafka_bootstrap=settings.kafka_bootstrap,
        recommendations_topic=settings.recommendations_topic,
        admin_token=settings.admin_token,
        user_api_url=settings.user_api_url,
        max_user_id=settings.max_user_id,
        deadline_s=settings.server_deadline,
    )
    return run_server(config, workers=args.workers or settings.server_workers)


def cmd_sim(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    """The simulated site; the stack's settings give its defaults, later flags win."""
    from sim.cli import main as sim_main

    defaults = [
        f"--bootstrap={settings.kafka_bootstrap}",
        f"--topic={settings.raw_topic}",
        f"--recommend-url=http://{settings.server_host}:{settings.server_port}",
    ]
    return sim_main([*defaults, *args.sim_args])


def cmd_version(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    _print_json({"reelfeed": __version__, "kafka": KAFKA_VERSION})
    return 0


Command = Callable[[argparse.Namespace, Settings, Mapping[str, str]], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reelfeed",
        description="Streaming-first movie recommendations (settings: REELFEED_* variables).",
    )
    parser.add_argument("--log-level", default=None, help="override REELFEED_LOG_LEVEL")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    infra = commands.add_parser("infra", help="start/stop the local Kafka broker and Redis alone")
    infra.add_argument("action", choices=["up", "down", "status", "jars"])
    infra.add_argument("--stack", choices=sorted(STACKS), default="dev")
    infra.set_defaults(handler=cmd_infra)

    up = commands.add_parser("up", help="run the whole local stack in the background")
    up.set_defaults(handler=cmd_up)
    down = commands.add_parser("down", help="stop everything `up` started")
    down.set_defaults(handler=cmd_down)
    supervise = commands.add_parser("supervise", help="run a stack in the foreground (used by up)")
    supervise.add_argument("--stack", choices=sorted(STACKS), default="dev")
    supervise.add_argument("--layout", default=None, help=argparse.SUPPRESS)
    supervise.set_defaults(handler=cmd_supervise)

    ingest = commands.add_parser("ingest", help="run the ingest Faust worker in the foreground")
    ingest.add_argument("--var-dir", default=None, help="folder for Faust data (default: settings)")
    ingest.set_defaults(handler=cmd_ingest)

    learn = commands.add_parser("learn", help="run the learn worker of a model version")
    learn.add_argument("--var-dir", default=None, help="folder for Faust data (default: settings)")
    learn.set_defaults(handler=cmd_learn)

    relay = commands.add_parser(
        "relay", help="copy the site's movielog topic from its broker into the raw topic"
    )
    relay.add_argument(
        "--source", default=None, help="the site's broker (REELFEED_RELAY_BOOTSTRAP)"
    )
    relay.add_argument("--topic", default=None, help="the site's topic (REELFEED_RELAY_TOPIC)")
    relay.add_argument("--var-dir", default=None, help=argparse.SUPPRESS)
    relay.set_defaults(handler=cmd_relay)

    serve = commands.add_parser("serve", help="run the recommendation server (port 8082)")
    serve.add_argument("--workers", type=int, default=None, help="processes sharing the port")
    serve.add_argument("--var-dir", default=None, help=argparse.SUPPRESS)
    serve.set_defaults(handler=cmd_serve)

    sim = commands.add_parser(
        "sim",
        help="run the simulated streaming site (flags: `reelfeed sim -- --help`)",
        add_help=False,
    )
    sim.set_defaults(handler=cmd_sim, sim_args=[])

    versions = commands.add_parser("versions", help="model versions and the routing")
    versions_actions = versions.add_subparsers(dest="action", required=True, metavar="ACTION")
    versions_actions.add_parser("list", help="every registered version, oldest first")
    show = versions_actions.add_parser("show", help="one version's record")
    show.add_argument("name")
    versions.set_defaults(handler=cmd_versions)

    from reelfeed.eval_cmd import add_eval_command
    from reelfeed.provenance_cmd import add_provenance_command
    from reelfeed.snapshot_cmd import add_snapshot_command
    from reelfeed.validate import add_validate_command

    add_validate_command(commands)
    add_eval_command(commands)
    add_snapshot_command(commands)
    add_provenance_command(commands)

    version = commands.add_parser("version", help="print versions as JSON")
    version.set_defaults(handler=cmd_version)
    return parser


def _command_index(argv: Sequence[str]) -> int | None:
    """Where the subcommand is in ``argv`` (after the global options)."""
    index = 0
    while index < len(argv):
        if argv[index] == "--log-level":
            index += 2
        elif argv[index].startswith("-"):
            index += 1
        else:
            return index
    return None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    argv = list(sys.argv[1:] if argv is None else argv)
    # The simulator parses its own flags: everything after `sim` is handed over as is
    # (but --var-dir, which the supervisor adds to every role).
    sim_args: list[str] = []
    at = _command_index(argv)
    if at is not None and argv[at] == "sim":
        sim_args = [a for a in argv[at + 1 :] if not a.startswith("--var-dir")]
        argv = argv[: at + 1]
    args = build_parser().parse_args(argv)
    if args.command == "sim":
        args.sim_args = sim_args
    try:
        settings = Settings.from_env(environ)
    except SettingsError as exc:
        sys.stderr.write(f"reelfeed: bad setting: {exc}\n")
        return 2
    logging.basicConfig(
        level=(args.log_level or settings.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Command = args.handler
    try:
        return handler(args, settings, environ)
    except InfraError as exc:
        sys.stderr.write(f"reelfeed: {exc}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
