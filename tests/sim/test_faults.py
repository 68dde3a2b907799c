"""Faults and attacks: each switch produces the intended kind of bad line, and only it."""

from __future__ import annotations

from collections import Counter

import pytest

from sim.faults import (
    NOISE_KINDS,
    FaultConfig,
    NoiseInjector,
    RatingBurst,
    RatingBurstConfig,
    WatchBots,
    WatchBotsConfig,
    pick_target_movie,
)
from sim.lines import LogLine, rate_body, recommendation_body, watch_body
from sim.site import Site, SiteConfig
from sim.world import World
from stream.events import Rejected, RejectReason
from stream.parser import LineValidator, ParseContext, parse_line

START = 1_698_218_457.0


def _lines(world: World) -> list[LogLine]:
    movie = world.movies[0]
    lines = []
    for n in range(300):
        user_id = 1 + n % world.config.users
        lines.append(LogLine("watch", START + n, user_id, watch_body(movie.movie_id, n % 50)))
        lines.append(LogLine("rate", START + n, user_id, rate_body(movie.movie_id, 1 + n % 5)))
        result = ", ".join(m.movie_id for m in world.movies[:20])
        body = recommendation_body("127.0.0.1:8082", 200, result, 12)
        lines.append(LogLine("recommend", START + n, user_id, body, fraction=True))
    return lines


def _context(world: World) -> ParseContext:
    return ParseContext(
        max_user_id=world.config.users,
        catalog=world.index,
        runtime_minutes={m.movie_id: m.runtime for m in world.movies},
    )


# What the project's parser must say about each kind of noise.
EXPECTED_REASONS: dict[str, set[RejectReason]] = {
    "bad_user": {RejectReason.BAD_USER},
    "bad_time": {RejectReason.BAD_TIMESTAMP},
    "bad_rating": {RejectReason.BAD_RATING},
    "bad_minute": {RejectReason.BAD_MINUTE},
    "empty_field": {RejectReason.BAD_TIMESTAMP, RejectReason.BAD_USER, RejectReason.BAD_MOVIE},
    "truncated": {
        RejectReason.UNPARSABLE,
        RejectReason.BAD_TIMESTAMP,
        RejectReason.BAD_USER,
        RejectReason.BAD_MOVIE,
        RejectReason.UNKNOWN_MOVIE,
        RejectReason.BAD_RATING,
        RejectReason.BAD_MINUTE,
        RejectReason.BAD_RESPONSE_TIME,
    },
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_REASONS))
def test_each_noise_kind_makes_the_intended_bad_line(small_world: World, kind: str) -> None:
    injector = NoiseInjector(rate=1.0, kinds=[kind], seed=3)
    context = _context(small_world)
    faulty = refused = 0
    for line in _lines(small_world):
        records = injector.apply(line)
        assert len(records) == 1
        record = records[0]
        assert record.key == str(line.user_id).encode() and record.kind == line.kind
        if record.fault is None:  # this kind of noise does not fit this kind of line
            assert record.value == line.render()
            continue
        assert record.fault == kind
        faulty += 1
        result = parse_line(record.value, context)
        if kind == "truncated":
            # A cut can leave a shorter valid line ("..., 12 ms" -> "..., 12"), as in reality.
            assert line.render().startswith(record.value) and record.value != line.render()
            if isinstance(result, Rejected):
                assert result.reason in EXPECTED_REASONS[kind], (record.value, result.reason)
                refused += 1
            continue
        assert isinstance(result, Rejected), record.value
        assert result.reason in EXPECTED_REASONS[kind], (record.value, result.reason)
        refused += 1
    assert faulty >= 300 and refused >= 0.9 * faulty
    assert injector.counts == {kind: faulty}


def test_duplicates_repeat_a_line_exactly(small_world: World) -> None:
    injector = NoiseInjector(rate=1.0, kinds=["duplicate"], seed=1)
    validator = LineValidator(_context(small_world))
    for line in _lines(small_world)[:50]:
        original, copy = injector.apply(line)
        assert original.value == copy.value == line.render()
        assert (original.fault, copy.fault) == (None, "duplicate")
        assert not isinstance(validator.validate(original.value), Rejected)
        result = validator.validate(copy.value)
        assert isinstance(result, Rejected) and result.reason is RejectReason.DUPLICATE


def test_default_noise_is_light_and_mixed(small_world: World) -> None:
    injector = NoiseInjector(FaultConfig().noise_rate, seed=5)
    lines = _lines(small_world) * 100  # 90,000 lines
    records = [r for line in lines for r in injector.apply(line)]
    faulty = [r for r in records if r.fault is not None]
    assert 0.001 < len(faulty) / len(lines) < 0.003
    assert set(Counter(r.fault for r in faulty)) == set(NOISE_KINDS)


def test_no_noise_when_switched_off(small_world: World) -> None:
    injector = NoiseInjector(rate=0.0)
    lines = _lines(small_world)
    assert [r.value for line in lines for r in injector.apply(line)] == [
        line.render() for line in lines
    ]


def test_unknown_switches_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown noise kinds: typo"):
        NoiseInjector(kinds=["typo"])
    with pytest.raises(ValueError, match="api_error_rate"):
        FaultConfig(api_error_rate=2.0)
    with pytest.raises(ValueError, match="accounts"):
        RatingBurstConfig(accounts=0)


def test_rating_burst_promotes_one_obscure_movie_from_new_accounts(small_world: World) -> None:
    site = Site(small_world, SiteConfig(arrivals_per_second=2.0, warm_start=False), START, seed=1)
    config = RatingBurstConfig(accounts=120, start_after_s=30.0, spread_s=20.0)
    accounts = site.new_accounts(config.accounts)
    burst = RatingBurst(config, small_world, START, 60.0, accounts, seed=1)
    site.add_actor(burst)
    popular = [small_world.movies[i].movie_id for i in small_world.popular_movies(20)]
    lines = site.run_offline(START + 3 * 3600, lambda user_id: popular)
    attack = [line for line in lines if line.actor == "rating_burst"]
    rates = [line for line in attack if line.kind == "rate"]
    assert len(rates) == 120 and len({line.user_id for line in rates}) == 120
    assert {line.body for line in rates} == {rate_body(burst.movie.movie_id, 5)}
    assert all(line.user_id > small_world.config.users for line in attack)
    assert set(site.accounts) == set(accounts)
    # The burst comes 30 real s (30 simulated min) after the start, within 20 real s.
    times = [line.at for line in rates]
    assert START + 1800 <= min(times) and max(times) <= START + 1800 + 1200 + 120
    # The promoted movie is obscure: past the 80th percentile of popularity.
    rank = list(small_world.popular_order).index(small_world.index[burst.movie.movie_id])
    assert rank >= 0.8 * len(small_world.movies)
    assert site.stats.attack_lines["rating_burst:rate"] == 120
    assert sum(1 for line in lines if line.actor == "user") == site.stats.user_lines


def test_watch_bots_watch_one_movie_over_and_over(small_world: World) -> None:
    config = WatchBotsConfig(bots=3, loops=None)
    bots = WatchBots(config, small_world, START, 60.0, [90_001, 90_002, 90_003], seed=2)
    runtime = bots.movie.runtime
    lines = bots.emit_until(START + 3 * runtime * 60)
    assert {line.user_id for line in lines} == {90_001, 90_002, 90_003}
    assert {line.body.rsplit("/", 1)[0] for line in lines} == {f"GET /data/m/{bots.movie.movie_id}"}
    first_minutes = Counter(line.body for line in lines if line.body.endswith("/0.mpg"))
    assert first_minutes[watch_body(bots.movie.movie_id, 0)] >= 3 * 2  # at least two loops each
    assert bots.next_due() is not None  # forever
    finite = WatchBots(WatchBotsConfig(bots=1, loops=2), small_world, START, 60.0, [7], seed=2)
    assert len(finite.emit_until(START + 10**9)) == 2 * finite.movie.runtime
    assert finite.next_due() is None


def test_the_target_can_be_named(small_world: World) -> None:
    movie_id = small_world.movies[5].movie_id
    assert pick_target_movie(small_world, 0, movie_id) == 5
    with pytest.raises(ValueError, match="unknown movie"):
        pick_target_movie(small_world, 0, "no+such+movie+1900")
