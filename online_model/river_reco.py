"""river's own factorization models (``reco.BiasedMF``, ``reco.FunkMF``) as recommenders."""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import Any

import numpy as np
import numpy.typing as npt
from river import reco

from online_model._index import IdIndex, grow_rows
from online_model.ranking import top_k

__all__ = ["RiverRecommender"]


class RiverRecommender:
    """Ranks the whole catalog with a river factorization model, scored with numpy.

    river's ``Ranker.rank`` calls ``predict_one`` once per item, which is slow, and
    ``predict_one`` on an unknown user or item *inserts* a random vector into the model.
    This wrapper never calls it: after each ``learn_one`` it copies the learned item's
    vector and bias into a numpy matrix, and ranks with ``bias_i + <p_u, q_i>`` (the
    global mean and the user bias do not change the order). A user the model does not
    know is ranked by item biases alone.

    Parameters
    ----------
    model
        A river ``reco.BiasedMF`` or ``reco.FunkMF``; it learns from ``y`` as it is (a
        rating, for the models as shipped).

    Examples
    --------
    >>> from river import reco
    >>> model = RiverRecommender(reco.BiasedMF(n_factors=4, seed=1))
    >>> for user, item, rating in [(1, "a", 5), (1, "b", 1), (2, "a", 4), (2, "c", 2)]:
    ...     model.learn_one(user, item, rating)
    >>> model.recommend(3, k=3)  # unknown user: by item bias
    ['a', 'c', 'b']
    >>> model.recommend(1, k=3, exclude={"a"})
    ['b', 'c']
    """

    def __init__(self, model: reco.base.Ranker) -> None:
        if not hasattr(model, "i_latents") or not hasattr(model, "u_latents"):
            raise ValueError(
                f"model must be a river factorization model with u_latents and i_latents, "
                f"got {type(model).__name__}"
            )
        self.model = model
        self._items = IdIndex()
        self._item_factors = np.zeros((0, 0), dtype=np.float32)
        self._item_biases = np.zeros(0, dtype=np.float32)

    def __repr__(self) -> str:
        return f"RiverRecommender({self.model!r})"

    def learn_one(
        self, user: Hashable, item: Hashable, y: float, x: dict[str, Any] | None = None
    ) -> None:
        self.model.learn_one(user, item, y)  # type: ignore[arg-type]  # river: numbers.Number
        row, created = self._items.add(item)
        latent = np.asarray(self.model.i_latents[item], dtype=np.float32).reshape(-1)
        if created:
            if self._item_factors.shape[1] != latent.shape[0]:
                self._item_factors = np.zeros((0, latent.shape[0]), dtype=np.float32)
            self._item_factors = grow_rows(self._item_factors, len(self._items))
            self._item_biases = grow_rows(self._item_biases, len(self._items))
        self._item_factors[row] = latent
        biases = getattr(self.model, "i_biases", None)
        if biases is not None:
            self._item_biases[row] = biases[item]

    def recommend(
        self, user: Hashable, k: int = 20, exclude: Collection[Hashable] = ()
    ) -> list[Hashable]:
        n_items = len(self._items)
        scores: npt.NDArray[np.float32] = self._item_biases[:n_items].copy()
        # .get() on river's defaultdict does not insert the unknown user.
        user_vector = self.model.u_latents.get(user)
        if user_vector is not None:
            scores += self._item_factors[:n_items] @ np.asarray(user_vector, dtype=np.float32)
        rows = self._items.rows
        excluded = [rows[item] for item in exclude if item in rows]
        ids = self._items.ids
        return [ids[i] for i in top_k(scores, k, excluded)]
