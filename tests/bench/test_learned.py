"""The serving benchmark's model: the default model after some simulated traffic."""

from __future__ import annotations

import numpy as np

from bench.learned import learn_simulated_site
from online_model import OnlineMF


def test_a_simulated_hour_gives_the_learners_matrix_and_user_rows() -> None:
    learned = learn_simulated_site(hours=0.5, arrivals_per_second=5.0)
    matrix = learned.matrix
    assert learned.lines > 1_000 and learned.events_learned > 0
    # Every movie of the default world, with the default model's own blend.
    assert len(matrix.movie_ids) == 27_000 == len(set(matrix.movie_ids))
    default = OnlineMF()
    assert matrix.ranking == {
        "popularity_weight": default.popularity_weight,
        "cold_start_events": default.cold_start_events,
        "side_columns": 20,  # the world's genres
    }
    assert matrix.factors.shape[1] > 64  # the learned factors, then the genres
    assert np.isfinite(matrix.factors).all() and matrix.popularity is not None
    # User rows as the learner commits them: the event count, then the vector.
    rows = list(learned.user_rows.values())
    assert rows and all(row.shape == (matrix.factors.shape[1] + 1,) for row in rows)
    assert all(row[0] >= 1 for row in rows)
