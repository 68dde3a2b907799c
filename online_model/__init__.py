"""Pure, synchronous ML: online matrix factorization, popularity, ranking, evaluation."""

__all__: list[str] = []
