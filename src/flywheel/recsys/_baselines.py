"""Reference recommenders of BASELINES.md: popularity, RepeatFreq, ItemKNN, EASE and iALS.

Every model follows the ``Recommender`` contract: ``fit(train)`` returns the model itself and
``score(user_rows)`` returns dense float scores, one row per user and one column per train item
(``-inf`` would mean "never recommend"; these baselines score every item). They reproduce the
reference script of BASELINES.md line for line, so their figures on OR-T1 can be compared.

Item-item models (ItemKNN, EASE) hold a dense items x items matrix; above
``MAX_DENSE_ITEMS`` items they refuse with ``RecsysError`` instead of exhausting memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from flywheel.recsys._errors import RecsysError

if TYPE_CHECKING:
    from flywheel.recsys._protocol import TrainData

MAX_DENSE_ITEMS = 8_000


@runtime_checkable
class Recommender(Protocol):
    """A model that is fit on a train period and scores every train item for a batch of users.

    ``name`` is the label shown in tables; ``params`` the hyper-parameters it ran with.
    ``score`` must not change the model and must return an array of shape
    ``(len(user_rows), train.n_items)``.
    """

    name: str
    params: dict[str, Any]

    def fit(self, train: TrainData) -> Recommender: ...

    def score(self, user_rows: np.ndarray) -> np.ndarray: ...


class _Fitted:
    name = ""
    params: dict[str, Any]

    def __init__(self) -> None:
        self.params = {}
        self._train: TrainData | None = None

    @property
    def train(self) -> TrainData:
        if self._train is None:
            raise RecsysError(f"{self.name}: score() called before fit()")
        return self._train


def _popularity(train: TrainData) -> np.ndarray:
    """Number of distinct train users per item."""
    return np.asarray(train.X.sum(axis=0)).ravel().astype(np.float64)


def _check_dense(name: str, n_items: int) -> None:
    if n_items > MAX_DENSE_ITEMS:
        raise RecsysError(
            f"{name}: {n_items:,} items is more than the {MAX_DENSE_ITEMS:,} a dense "
            "item x item matrix is allowed here"
        )


class MostPopular(_Fitted):
    """Every user gets the items bought by the most distinct users."""

    name = "MostPop"

    def fit(self, train: TrainData) -> MostPopular:
        self._train = train
        self._pop = _popularity(train)
        return self

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        _ = self.train
        return np.tile(self._pop, (len(user_rows), 1))


class RepeatFrequency(_Fitted):
    """The user's own past items by how many invoices held them; ties and the rest by popularity."""

    name = "RepeatFreq"

    def fit(self, train: TrainData) -> RepeatFrequency:
        self._train = train
        self._pop = _popularity(train)
        return self

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        # 1e6 > any popularity count, so own items always come first (as in the reference).
        return self.train.C[user_rows].toarray().astype(np.float64) * 1e6 + self._pop


class ItemKNN(_Fitted):
    """Item-based kNN with cosine similarity over all neighbours (``X @ Sim``)."""

    name = "ItemKNN-cosine"

    def fit(self, train: TrainData) -> ItemKNN:
        _check_dense(self.name, train.n_items)
        self._train = train
        x = train.X
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel()) + 1e-9
        sim = (x.T @ x).toarray().astype(np.float64) / np.outer(norms, norms)
        np.fill_diagonal(sim, 0.0)
        self._sim = sim
        return self

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.train.X[user_rows] @ self._sim)


class EASE(_Fitted):
    """EASE^R (Steck 2019): item-item weights ``B = -P / diag(P)`` with ``P = (G + λI)^-1``."""

    def __init__(self, lam: float = 500.0) -> None:
        super().__init__()
        if lam <= 0:
            raise RecsysError(f"EASE: lambda must be > 0 (got {lam})")
        self.lam = float(lam)
        self.params = {"lambda": self.lam}
        self.name = f"EASE λ={lam:g}"

    def fit(self, train: TrainData) -> EASE:
        _check_dense(self.name, train.n_items)
        self._train = train
        gram = (train.X.T @ train.X).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.lam
        p = np.linalg.inv(gram)
        b = -p / np.diag(p)
        np.fill_diagonal(b, 0.0)
        self._b = b
        return self

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.train.X[user_rows] @ self._b)


class IALS(_Fitted):
    """Implicit-feedback ALS (Hu et al. 2008) from the ``implicit`` package.

    Confidence is the number of distinct invoices per (user, item), as in BASELINES.md. The
    fit runs with BLAS limited to one thread (implicit's own threads do the work); implicit's
    multi-threaded solver makes runs differ slightly (about ±0.005 in the metrics).
    """

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        iterations: int = 20,
        alpha: float = 1.0,
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.params = {
            "factors": factors,
            "regularization": regularization,
            "iterations": iterations,
            "alpha": alpha,
            "seed": seed,
        }
        self.name = f"iALS f={factors}"

    def fit(self, train: TrainData) -> IALS:
        from implicit.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        self._train = train
        p = self.params
        # implicit checks the BLAS thread count when the model is built, so build it inside too.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=p["factors"],
                regularization=p["regularization"],
                iterations=p["iterations"],
                alpha=p["alpha"],
                random_state=p["seed"],
            )
            model.fit(train.C.tocsr(), show_progress=False)
        self._users = np.asarray(model.user_factors)
        self._items = np.asarray(model.item_factors)
        return self

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        _ = self.train
        return np.asarray(self._users[user_rows] @ self._items.T)
