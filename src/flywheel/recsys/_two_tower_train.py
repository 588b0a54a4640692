"""The two-tower training job: its data set, its ``flywheel.training`` spec and its entrypoint.

``write_two_tower_dataset(project, lines, items)`` writes, under
``.flywheel/recsys/two_tower/ds-<digest>/`` (the digest is of the inputs, so the same data
gives the same folder, and a job never sees its data change under it):

* ``train/part-00000.parquet`` — one example per distinct (user, invoice, item) before the
  validation window: ``h0..h{L-1}`` (catalogue rows of the user's last distinct items before
  that invoice, most recent first, -1 padded), ``item``, ``basket``, ``user`` and ``log_q``
  (log of the item's share of the training positives, for the log-Q correction); rows in a
  seeded random order;
* ``val.npz`` — the validation slice: users known before the last ``val_days`` days, their
  history at its start and the items they bought in it;
* ``items.parquet`` (the catalogue: id, description, category, price), ``content.npz`` (the
  model inputs of every catalogue item), ``encoding.json`` + ``text_state.npz`` (how raw items
  become inputs, for unseen items later) and ``meta.json``.

The folder is written to a temporary name and renamed into place, and ``LATEST`` (beside the
folders) names the newest one, written atomically too.

``two_tower_job_spec(project)`` is a 2-process DDP job (``torchrun`` through the scheduler)
whose entrypoint is ``main`` below: seeded, ``ShardedParquetDataset`` shards, checkpoints by
``rt.Checkpointer`` (resumes bit for bit), ``recall_at_20`` on the validation slice logged by
``rt.log_metrics``, and on rank 0 the registration (flavor ``pytorch``: the module whose
``forward`` runs both towers) with lineage to the data set. The version's
``config["two_tower"]`` lists the content-addressed files ``TwoTowerRetriever.load`` needs
(``state_dict.pt``, ``encoding.json``, ``text_state.npz``, ``item_embeddings.npz``), each
stored in the project's artifact store and read back sha256-verified.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.recsys._errors import DataUnavailableError, RecsysError
from flywheel.recsys._index import ItemIndex
from flywheel.recsys._two_tower import (
    CONFIG_KEY,
    FORMAT,
    Examples,
    TwoTowerConfig,
    TwoTowerModel,
    batch_loss,
    build_examples,
    history_matrix,
    item_embeddings,
    log_q_of,
    recall_at_k,
    train_in_process,
)
from flywheel.recsys._two_tower_features import (
    ItemContent,
    ItemEncoding,
    TextFeaturizer,
    fit_encoding,
)
from flywheel.recsys._two_tower_serve import (
    TwoTowerRetriever,
    catalogue_frame,
    item_embeddings_npz,
)

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.project import Project
    from flywheel.training import JobSpec

DATASET_FOLDER = "two_tower"
LATEST = "LATEST"
ENTRYPOINT = "flywheel.recsys._two_tower_train:main"
ROW_GROUP = 4096
# Config fields that shape the data set (the rest only shape the model and the optimisation).
DATA_FIELDS = ("history_len", "val_days", "text", "tfidf_dims", "seed")


def datasets_dir(project: Project) -> Path:
    from flywheel.recsys._ingest import data_dir

    return data_dir(project) / DATASET_FOLDER


def _digest(lines: pd.DataFrame, catalogue: pd.DataFrame, extra: dict[str, Any]) -> str:
    import pandas as pd

    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    cols = ["CustomerID", "StockCode", "InvoiceNo", "InvoiceDate"]
    h.update(pd.util.hash_pandas_object(lines[cols].astype(str), index=False).to_numpy().tobytes())
    h.update(pd.util.hash_pandas_object(catalogue.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()


def write_two_tower_dataset(
    project: Project,
    lines: pd.DataFrame,
    items: pd.DataFrame | None,
    *,
    end: str | pd.Timestamp | None = None,
    config: TwoTowerConfig | None = None,
) -> Path:
    """Write the two-tower data set of cleaned purchase ``lines`` before ``end`` (default: all)
    and the item table ``items`` (``load_items``: item_id, description, category, price).

    Returns the data set folder (``train/`` inside is the job's ``dataset``). Deterministic:
    the same inputs and config give the same folder and the same bytes. ``RecsysError`` when
    there is nothing to train on.
    """
    import pandas as pd

    cfg = (config or TwoTowerConfig()).validate()
    missing = [c for c in ("CustomerID", "StockCode", "InvoiceNo", "InvoiceDate") if c not in lines]
    if missing:
        raise RecsysError(f"two-tower data: the purchase lines lack columns {missing}")
    if end is not None:
        try:
            end_ts = pd.Timestamp(end)
        except (TypeError, ValueError) as exc:
            raise RecsysError(f"two-tower data: end {end!r} is not a date") from exc
        lines = lines.loc[lines["InvoiceDate"] < end_ts]
    lines = lines.loc[lines["CustomerID"].notna()]
    if lines.empty:
        raise RecsysError("two-tower data: no purchase lines to train on")
    end_ts = (
        pd.Timestamp(end)
        if end is not None
        else lines["InvoiceDate"].max() + pd.Timedelta(seconds=1)
    )
    catalogue = catalogue_frame(lines, items)
    data_cfg = {k: getattr(cfg, k) for k in DATA_FIELDS}
    digest = _digest(lines, catalogue, {"end": str(end_ts), "format": FORMAT, **data_cfg})
    root = datasets_dir(project)
    final = root / f"ds-{digest[:16]}"
    if not (final / "meta.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            _write(tmp, lines, catalogue, end_ts, cfg, digest)
            if final.exists():  # a concurrent writer got there first with the same bytes
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    _write_text_atomic(root / LATEST, final.name)
    return final


def _write(
    folder: Path,
    lines: pd.DataFrame,
    catalogue: pd.DataFrame,
    end: pd.Timestamp,
    cfg: TwoTowerConfig,
    digest: str,
) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_of = pd.Index(catalogue["item_id"])
    codes = lines["StockCode"].astype(str).to_numpy()
    item = row_of.get_indexer(codes).astype(np.int64)
    invoices = lines["InvoiceNo"].astype(str).to_numpy()
    basket, _ = pd.factorize(invoices, sort=True)
    user = lines["CustomerID"].astype(np.int64).to_numpy()
    when = lines["InvoiceDate"].to_numpy()
    # An invoice happens at its latest line's time.
    basket_time = pd.Series(when).groupby(basket).transform("max").to_numpy()
    val_start = end - pd.Timedelta(days=float(cfg.val_days)) if cfg.val_days > 0 else end
    in_train = basket_time < np.datetime64(val_start)
    if not in_train.any():
        raise RecsysError(
            f"two-tower data: no purchases before the validation window ({val_start}); "
            "lower val_days"
        )
    ex = build_examples(
        user[in_train], item[in_train], basket[in_train], basket_time[in_train], cfg.history_len
    )
    counts = np.bincount(ex.item, minlength=len(catalogue))
    vocab_rows = np.flatnonzero(counts > 0)
    n = len(ex)
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)
    table = {f"h{k}": ex.history[perm, k] for k in range(cfg.history_len)}
    table |= {
        "item": ex.item[perm].astype(np.int32),
        "basket": ex.basket[perm],
        "user": ex.user[perm],
        "log_q": log_q_of(ex.item, len(catalogue))[perm],
    }
    (folder / "train").mkdir()
    pq.write_table(
        pa.table(table), folder / "train" / "part-00000.parquet", row_group_size=ROW_GROUP
    )

    # Validation: users known before the window, what they bought in it.
    window = ~in_train
    val_users = sorted(set(user[window].tolist()) & set(ex.final))
    truth_rows: list[np.ndarray] = []
    hist_lists: list[list[int]] = []
    w_user, w_item = user[window], item[window]
    by_user: dict[int, set[int]] = {}
    for u, i in zip(w_user.tolist(), w_item.tolist(), strict=True):
        by_user.setdefault(u, set()).add(i)
    for u in val_users:
        hist_lists.append(ex.final[u])
        truth_rows.append(np.array(sorted(by_user[u]), dtype=np.int32))
    lengths = np.array([len(t) for t in truth_rows], dtype=np.int64)
    buf = io.BytesIO()
    np.savez(
        buf,
        allow_pickle=False,
        users=np.array(val_users, dtype=np.int64),
        history=history_matrix(hist_lists, cfg.history_len).astype(np.int32),
        truth_indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        truth_items=(np.concatenate(truth_rows) if truth_rows else np.zeros(0)).astype(np.int32),
    )
    (folder / "val.npz").write_bytes(buf.getvalue())

    # Item inputs: the text space is fitted on the catalogue texts.
    texts = catalogue["description"].fillna("").astype(str).tolist()
    featurizer = TextFeaturizer.fit(texts, cfg.text, cfg.tfidf_dims)
    vocab = [str(catalogue["item_id"].iloc[r]) for r in vocab_rows.tolist()]
    encoding = fit_encoding(
        vocab, catalogue["category"].tolist(), catalogue["price"].tolist(), featurizer
    )
    content = encoding.encode(
        catalogue["item_id"].tolist(),
        texts,
        catalogue["category"].tolist(),
        catalogue["price"].tolist(),
    )
    (folder / "content.npz").write_bytes(content.to_npz())
    (folder / "encoding.json").write_text(encoding.to_json(), encoding="utf-8")
    if featurizer.method == "tfidf":
        (folder / "text_state.npz").write_bytes(featurizer.to_bytes())
    catalogue.to_parquet(folder / "items.parquet", index=False)
    meta = {
        "format": FORMAT,
        "digest": digest,
        "end": str(end),
        "val_start": str(val_start),
        "examples": n,
        "users": len(ex.final),
        "items": len(catalogue),
        "vocab": len(vocab),
        "val_users": len(val_users),
        "text_method": featurizer.method,
        "text_dim": featurizer.dim,
        "categories": len(encoding.categories),
        "config": {k: getattr(cfg, k) for k in DATA_FIELDS},
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def latest_two_tower_dataset(project: Project) -> Path:
    """The folder of the newest ``write_two_tower_dataset`` (``DataUnavailableError`` if none)."""
    pointer = datasets_dir(project) / LATEST
    folder = datasets_dir(project) / pointer.read_text().strip() if pointer.is_file() else None
    if folder is None or not (folder / "meta.json").is_file():
        raise DataUnavailableError(
            "two-tower: no training data written yet; run `flywheel recs train-retrieval` "
            "(after `flywheel recs ingest`)"
        )
    return folder


def two_tower_job_spec(
    project: Project,
    *,
    config: TwoTowerConfig | None = None,
    procs: int = 2,
    register: str | None = "recs-two-tower",
    name: str = "recs-two-tower",
    dataset: str | Path | None = None,
    team: str = "recsys",
    priority: int = 50,
) -> JobSpec:
    """A ``flywheel.training`` job that trains the two-tower on ``dataset`` (default: the
    newest ``write_two_tower_dataset``) with ``procs`` DDP processes and registers it as
    ``register`` (``None``: no registration)."""
    from flywheel.training import CheckpointPolicy, JobSpec, Resources

    cfg = (config or TwoTowerConfig()).validate()
    if not isinstance(procs, int) or procs < 1:
        raise RecsysError(f"two-tower job: procs must be an integer >= 1 (got {procs!r})")
    folder = Path(dataset) if dataset is not None else latest_two_tower_dataset(project)
    if not (folder / "meta.json").is_file():
        raise DataUnavailableError(f"two-tower job: {folder} is not a two-tower data set")
    train = (folder / "train").resolve()
    try:
        shown = str(train.relative_to(project.root.resolve()))
    except ValueError:
        shown = str(train)
    return JobSpec(
        name=name,
        entrypoint=ENTRYPOINT,
        team=team,
        priority=priority,
        max_restarts=2,
        resources=Resources(procs_per_node=procs, cpus_per_proc=1),
        checkpoint=CheckpointPolicy(every_steps=cfg.checkpoint_every, keep_last=2),
        dataset=shown,
        hyperparameters=cfg.to_dict(),
        experiment=name,
        register=register,
    )


# -- the job ---------------------------------------------------------------------------------------


class TwoTowerData:
    """A data set folder read back by a worker (everything but the training examples)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        if self.meta.get("format") != FORMAT:
            raise RecsysError(f"{folder}: not a two-tower data set of format {FORMAT}")
        self.content = ItemContent.from_npz((folder / "content.npz").read_bytes())
        state = folder / "text_state.npz"
        self.encoding_json = (folder / "encoding.json").read_text()
        self.text_state = state.read_bytes() if state.is_file() else None
        self.encoding = ItemEncoding.from_json(self.encoding_json, self.text_state)
        with np.load(folder / "val.npz", allow_pickle=False) as npz:
            self.val_history = npz["history"].astype(np.int64)
            indptr, items = npz["truth_indptr"], npz["truth_items"]
        self.val_truth = [items[indptr[i] : indptr[i + 1]] for i in range(len(indptr) - 1)]
        import pyarrow.parquet as pq

        self.item_ids = [
            str(i)
            for i in pq.read_table(folder / "items.parquet", columns=["item_id"])
            .column("item_id")
            .to_pylist()
        ]


def train_local(folder: str | Path, config: TwoTowerConfig | None = None) -> TwoTowerRetriever:
    """Train on a data set folder in this process (no scheduler, no DDP, no registry) and
    return a retriever over its catalogue (``model_version`` is empty). For tests and quick
    experiments; the job (``main``) is the way to a registered model."""
    import pyarrow.parquet as pq

    data = TwoTowerData(Path(folder))
    history_len = int(data.meta["config"]["history_len"])
    cfg = TwoTowerConfig.from_dict(
        {**(config or TwoTowerConfig()).to_dict(), "history_len": history_len}
    )
    table = pq.read_table(Path(folder) / "train")
    examples = Examples(
        history=np.stack([table.column(f"h{k}").to_numpy() for k in range(history_len)], 1),
        item=table.column("item").to_numpy().astype(np.int64),
        basket=table.column("basket").to_numpy().astype(np.int64),
        user=table.column("user").to_numpy().astype(np.int64),
        final={},
    )
    model = train_in_process(
        examples,
        data.content,
        cfg,
        n_ids=len(data.encoding.vocab),
        n_categories=len(data.encoding.categories),
    )
    index = ItemIndex(cfg.dim)
    index.add(data.item_ids, item_embeddings(model, data.content))
    return TwoTowerRetriever(model, data.encoding, index)


def evaluate(model: TwoTowerModel, data: TwoTowerData, k: int) -> dict[str, float]:
    """Recall@k on the validation slice, "all" and "new-only" views."""
    if not data.val_truth:
        return {}
    return {
        f"recall_at_{k}": recall_at_k(model, data.content, data.val_history, data.val_truth, k),
        f"recall_new_at_{k}": recall_at_k(
            model, data.content, data.val_history, data.val_truth, k, exclude_seen=True
        ),
    }


def registration_files(model: TwoTowerModel, data: TwoTowerData) -> dict[str, bytes]:
    """The files a registered version carries for ``TwoTowerRetriever.load``."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    files = {
        "state_dict.pt": buf.getvalue(),
        "encoding.json": data.encoding_json.encode(),
        "item_embeddings.npz": item_embeddings_npz(
            data.item_ids, item_embeddings(model, data.content)
        ),
    }
    if data.text_state is not None:
        files["text_state.npz"] = data.text_state
    return files


def input_example(data: TwoTowerData, history_len: int) -> dict[str, np.ndarray]:
    """A small real batch for the registry's save/reload check (3 items, 2 users)."""
    rows = np.arange(min(3, len(data.content)))
    c = data.content
    history = np.full((2, history_len), -1, dtype=np.int64)
    history[0, : min(2, len(rows))] = rows[:2]
    return {
        "item_ids": c.id_index[rows],
        "item_text": c.text[rows],
        "item_category": c.category[rows],
        "item_price": c.price[rows],
        "history": history,
    }


def main() -> int:
    """The job's entrypoint (every rank; ``torchrun`` starts it through the scheduler)."""
    import torch

    from flywheel.training import runtime as rt

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    ctx = rt.init()
    cfg = TwoTowerConfig.from_dict(ctx.hyperparameters)
    rt.seed_everything(cfg.seed)
    if not ctx.dataset_files:
        raise RecsysError("two-tower job: the spec names no dataset (a two-tower train/ folder)")
    folder = Path(ctx.dataset_files[0]).parent.parent
    data = TwoTowerData(folder)
    history_len = int(data.meta["config"]["history_len"])
    cfg = TwoTowerConfig.from_dict({**cfg.to_dict(), "history_len": history_len})
    columns = [f"h{k}" for k in range(history_len)]
    examples = rt.ShardedParquetDataset(
        ctx.dataset_files,
        cfg.batch_size,
        columns=[*columns, "item", "basket", "log_q"],
        seed=cfg.seed,
    )
    torch.manual_seed(cfg.seed)
    net = TwoTowerModel.from_config(
        cfg,
        n_ids=len(data.encoding.vocab),
        n_categories=len(data.encoding.categories),
        text_dim=int(data.content.text.shape[1]),
    )
    model = rt.wrap(net, strategy="ddp")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = rt.Checkpointer(model=model, optimizer=opt, dataset=examples)
    step = ckpt.resume()
    content = tuple(t.to(ctx.device) for t in data.content.tensors())
    rt.log(
        f"two-tower: {data.meta['examples']:,} examples, {len(data.content):,} items "
        f"({data.meta['text_method']} text), {ctx.world_size} process(es), "
        f"{len(examples)} steps/epoch, starting at step {step}"
    )
    for epoch in range(examples.epoch, cfg.epochs):
        examples.set_epoch(epoch)
        for batch in examples:
            history = torch.stack([batch[c] for c in columns], dim=1).to(ctx.device)
            loss = batch_loss(
                model,
                history,
                batch["item"].to(ctx.device),
                batch["basket"].to(ctx.device),
                batch["log_q"].to(ctx.device),
                content,
                cfg,
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % cfg.eval_every == 0 and ctx.is_main:
                metrics = evaluate(net, data, cfg.eval_k)
                rt.log_metrics(step, loss=float(loss.item()), epoch=epoch, **metrics)
                shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                rt.log(f"step {step} epoch {epoch} loss {loss.item():.4f} {shown}")
            if ckpt.after_step(step):
                rt.log(f"stopping at step {step}: checkpoint saved, will resume")
                return 0
    if ctx.is_main:
        metrics = evaluate(net, data, cfg.eval_k)
        rt.log_metrics(step, **metrics)
        rt.log("final " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        _register(net.cpu(), data, cfg, metrics, ctx.spec.get("register"))
    rt.shutdown()
    return 0


def _register(
    net: TwoTowerModel,
    data: TwoTowerData,
    cfg: TwoTowerConfig,
    metrics: dict[str, float],
    name: str | None,
) -> None:
    from flywheel.project import Project
    from flywheel.training import runtime as rt

    if not name:
        return
    net.eval()
    project = Project.open()
    shas = {
        file: project.artifacts.put_bytes(blob).sha256
        for file, blob in registration_files(net, data).items()
    }
    section = {
        "format": FORMAT,
        "arch": dict(net.arch),
        "files": shas,
        "dataset": data.meta,
        "hyperparameters": cfg.to_dict(),
    }
    mv = rt.register(
        net,
        input_example=input_example(data, int(net.arch["history_len"])),
        metrics=metrics,
        config={CONFIG_KEY: section},
        export_onnx=False,
        description="two-tower retrieval (user tower over history, item tower over id + content)",
    )
    if mv is not None:
        rt.log(f"registered models:/{mv.name}/{mv.version}")


__all__ = [
    "ENTRYPOINT",
    "TwoTowerData",
    "datasets_dir",
    "evaluate",
    "input_example",
    "latest_two_tower_dataset",
    "main",
    "registration_files",
    "train_local",
    "two_tower_job_spec",
    "write_two_tower_dataset",
]
