"""The two-tower model: its data set, loss, learning signal, determinism, cold-start items, and
a real 2-process DDP job through the scheduler whose registered version the retriever loads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flywheel.lineage import Node, upstream
from flywheel.project import Project
from flywheel.recsys import (
    MostPopular,
    RecsysError,
    Split,
    TwoTower,
    TwoTowerConfig,
    TwoTowerRetriever,
    build_split,
    evaluate_view,
    two_tower_job_spec,
    write_two_tower_dataset,
)
from flywheel.recsys._ingest import build_tables
from flywheel.recsys._two_tower import build_examples, in_batch_loss
from flywheel.recsys._two_tower_train import TwoTowerData, evaluate, train_local
from flywheel.registry import Registry
from flywheel.training import JobState, NodeCapacity, Scheduler, TrainingService
from tests.conftest import make_project
from tests.recsys.conftest import make_lines

# Small and fast: TF-IDF text, tiny towers.
FAST = TwoTowerConfig(text="tfidf", dim=16, hidden=32, id_dim=16, text_proj=16, batch_size=128)


@pytest.fixture(scope="module")
def tiny_items(tiny_lines: pd.DataFrame) -> pd.DataFrame:
    return build_tables(tiny_lines)["items"]


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return make_project(tmp_path_factory.mktemp("tt") / "proj")


@pytest.fixture(scope="module")
def tiny_dataset(tiny_project: Project, tiny_lines: pd.DataFrame, tiny_items: pd.DataFrame) -> Path:
    return write_two_tower_dataset(tiny_project, tiny_lines, tiny_items, config=FAST)


@pytest.fixture(scope="module")
def local_retriever(tiny_dataset: Path) -> TwoTowerRetriever:
    return train_local(tiny_dataset, TwoTowerConfig(**{**FAST.to_dict(), "epochs": 3}))


# -- data ------------------------------------------------------------------------------------------


def test_examples_hold_the_history_before_each_basket_most_recent_first() -> None:
    # user 1: basket 10 (items 3, 5) then 11 (item 3 again, item 7) then 12 (item 9)
    user = np.array([1, 1, 1, 1, 1, 2])
    item = np.array([3, 5, 3, 7, 9, 4])
    basket = np.array([10, 10, 11, 11, 12, 20])
    when = np.array([0, 0, 5, 5, 9, 1])
    ex = build_examples(user, item, basket, when, history_len=3)
    rows = {
        (int(b), int(i)): ex.history[r].tolist()
        for r, (b, i) in enumerate(zip(ex.basket, ex.item, strict=True))
    }
    assert rows[(10, 3)] == rows[(10, 5)] == [-1, -1, -1]  # nothing before the first basket
    assert rows[(11, 3)] == rows[(11, 7)] == [5, 3, -1]
    assert rows[(12, 9)] == [7, 3, 5]  # distinct, the re-bought 3 moved to the front
    assert rows[(20, 4)] == [-1, -1, -1]
    assert ex.final == {1: [9, 7, 3], 2: [4]}
    # A line repeated within a basket is one example.
    again = build_examples(np.r_[user, 1], np.r_[item, 9], np.r_[basket, 12], np.r_[when, 9], 3)
    assert len(again) == len(ex) == 6


def test_dataset_is_deterministic_complete_and_respects_end(
    tiny_project: Project, tiny_lines: pd.DataFrame, tiny_items: pd.DataFrame, tiny_dataset: Path
) -> None:
    again = write_two_tower_dataset(tiny_project, tiny_lines, tiny_items, config=FAST)
    assert again == tiny_dataset
    files = sorted(p.relative_to(tiny_dataset).as_posix() for p in tiny_dataset.rglob("*"))
    assert files == [
        "content.npz",
        "encoding.json",
        "items.parquet",
        "meta.json",
        "text_state.npz",
        "train",
        "train/part-00000.parquet",
        "val.npz",
    ]
    assert not [p for p in tiny_dataset.parent.iterdir() if p.name.startswith(".")]
    assert (tiny_dataset.parent / "LATEST").read_text() == tiny_dataset.name
    meta = json.loads((tiny_dataset / "meta.json").read_text())
    train = pd.read_parquet(tiny_dataset / "train")
    assert meta["examples"] == len(train) > 1000 and meta["val_users"] > 20
    assert meta["text_method"] == "tfidf" and meta["items"] == len(tiny_items)
    # log-Q: the log of each item's share of the positives.
    share = train["item"].map(train["item"].value_counts() / len(train))
    np.testing.assert_allclose(train["log_q"], np.log(share), rtol=1e-5)
    # Nothing from the validation window is a training example.
    val_start = pd.Timestamp(meta["val_start"])
    late = tiny_lines.loc[tiny_lines["InvoiceDate"] >= val_start, "InvoiceNo"].astype(str)
    codes = pd.factorize(tiny_lines["InvoiceNo"].astype(str), sort=True)[1]
    assert not set(codes[train["basket"]].tolist()) & set(late.tolist())
    # An earlier end is another data set, with fewer examples.
    early = write_two_tower_dataset(
        tiny_project, tiny_lines, tiny_items, end="2011-09-01", config=FAST
    )
    assert early != tiny_dataset
    assert json.loads((early / "meta.json").read_text())["examples"] < meta["examples"]
    assert (tiny_dataset.parent / "LATEST").read_text() == early.name
    write_two_tower_dataset(tiny_project, tiny_lines, tiny_items, config=FAST)  # LATEST back


def test_bad_inputs_name_the_field(tiny_project: Project, tiny_lines: pd.DataFrame) -> None:
    with pytest.raises(RecsysError, match="temperature must be a number > 0"):
        TwoTowerConfig(temperature=0).validate()
    with pytest.raises(RecsysError, match="id_dropout"):
        TwoTowerConfig(id_dropout=1.0).validate()
    with pytest.raises(RecsysError, match=r"unknown hyper-parameters \['widht'\]"):
        TwoTowerConfig.from_dict({"widht": 3})
    with pytest.raises(RecsysError, match="text must be one of"):
        TwoTowerConfig(text="bert").validate()
    with pytest.raises(RecsysError, match="lack columns"):
        write_two_tower_dataset(tiny_project, tiny_lines.drop(columns=["InvoiceNo"]), None)
    with pytest.raises(RecsysError, match="no purchase lines"):
        write_two_tower_dataset(tiny_project, tiny_lines, None, end="2000-01-01")
    with pytest.raises(RecsysError, match="procs must be"):
        two_tower_job_spec(tiny_project, procs=0)


# -- loss ------------------------------------------------------------------------------------------


def test_in_batch_loss_applies_log_q_and_masks_other_positives() -> None:
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    v = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    log_q = torch.log(torch.tensor([0.5, 0.1, 0.2, 0.2]))
    items = torch.tensor([1, 2, 3, 1])  # rows 0 and 3 hold the same item
    baskets = torch.tensor([7, 8, 8, 9])  # rows 1 and 2 come from the same basket
    got = in_batch_loss(u, v, log_q, items, baskets, temperature=0.1, logq=1.0)
    logits = (u @ v.T / 0.1 - log_q[None, :]).numpy()
    allowed = np.array(
        [[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]], dtype=bool
    )  # a row never competes with its own item elsewhere or its basket mates
    want = np.mean(
        [-(logits[r, r] - np.log(np.exp(logits[r][allowed[r]]).sum())) for r in range(4)]
    )
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # Without the correction the loss is the plain masked softmax.
    plain = in_batch_loss(u, v, log_q, items, baskets, temperature=0.1, logq=0.0)
    assert float(plain) != pytest.approx(float(got))


# -- learning ----------------------------------------------------------------------------------


def test_trained_generator_beats_random_by_a_wide_margin(small_split: Split) -> None:
    cfg = TwoTowerConfig(**{**FAST.to_dict(), "batch_size": 256, "epochs": 3})
    model = TwoTower(cfg).fit(small_split.train)
    trained = evaluate_view(model.score, small_split, "all")
    rng = np.random.default_rng(0)
    n_items = small_split.train.n_items
    random = evaluate_view(lambda u: rng.random((len(u), n_items)), small_split, "all")
    popular = evaluate_view(MostPopular().fit(small_split.train).score, small_split, "all")
    assert trained.recall > 4 * random.recall and trained.ndcg > 4 * random.ndcg
    assert trained.recall > popular.recall
    new_only = evaluate_view(model.score, small_split, "new-only")
    assert (
        new_only.recall
        > 3 * evaluate_view(lambda u: rng.random((len(u), n_items)), small_split, "new-only").recall
    )


def test_training_is_deterministic(tiny_lines: pd.DataFrame) -> None:
    split = build_split(tiny_lines, "2011-11-09")
    cfg = TwoTowerConfig(**{**FAST.to_dict(), "epochs": 1})
    a = TwoTower(cfg).fit(split.train).score(split.test_users[:50])
    b = TwoTower(cfg).fit(split.train).score(split.test_users[:50])
    np.testing.assert_array_equal(a, b)
    c = TwoTower(TwoTowerConfig(**{**cfg.to_dict(), "seed": 1})).fit(split.train)
    assert not np.array_equal(a, c.score(split.test_users[:50]))


def test_validation_recall_of_a_trained_model(
    tiny_dataset: Path, local_retriever: TwoTowerRetriever
) -> None:
    data = TwoTowerData(tiny_dataset)
    got = evaluate(local_retriever.model, data, 20)
    # A random top 20 of 120 items finds ~1/6 of the truth.
    assert got["recall_at_20"] > 2 * 20 / len(data.item_ids)


# -- the retriever ---------------------------------------------------------------------------------


def test_user_embeddings_ignore_unknown_ids_and_accept_empty_histories(
    local_retriever: TwoTowerRetriever, tiny_items: pd.DataFrame
) -> None:
    r = local_retriever
    known = tiny_items["item_id"].tolist()[:3]
    vectors = r.embed_users([known, [*known, "NOT-AN-ITEM"], [], ["NOT-AN-ITEM"]])
    assert vectors.shape == (4, r.dim) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-6)
    np.testing.assert_allclose(vectors[2], vectors[3], rtol=1e-6)
    assert not np.allclose(vectors[0], vectors[2])
    # Order matters (most recent first), duplicates do not.
    again = r.embed_users([[known[0], known[0], known[1], known[2]]])
    np.testing.assert_allclose(again[0], vectors[0], rtol=1e-6)
    results = r.search(vectors[:1], 5)
    assert len(results) == 1 and len(results[0][0]) == 5
    assert np.all(np.diff(results[0][1]) <= 1e-6)
    with pytest.raises(RecsysError, match="list of item-id lists"):
        r.embed_users("10000")  # type: ignore[arg-type]


def test_unseen_items_get_content_embeddings_and_are_retrieved(
    local_retriever: TwoTowerRetriever, tiny_items: pd.DataFrame
) -> None:
    r = local_retriever
    before = len(r.index)
    ranks = []
    for category, group in tiny_items.groupby("category"):
        twin = group.iloc[0]
        new_id = f"NEW-{category}"
        vec = r.add_items([new_id], [twin["description"]], [category], [twin["price"]])
        assert np.isfinite(vec).all() and vec.shape == (1, r.dim)
        stored, known = r.index.vectors([new_id, twin["item_id"]])
        assert known.all()
        np.testing.assert_allclose(stored[0], vec[0], rtol=1e-6)
        # Content alone puts it next to the item it describes.
        others = tiny_items.loc[tiny_items["category"] != category, "item_id"].tolist()
        other_vecs = r.index.vectors(others)[0]
        assert float(stored[0] @ stored[1]) > np.quantile(other_vecs @ stored[0], 0.9)
        # A user whose history is that category's items finds it near the top.
        history = group["item_id"].tolist()[:4]
        ids, _ = r.search(r.embed_users([history]), len(r.index))[0]
        ranks.append(ids.index(new_id))
        # The new item now counts in histories too.
        assert not np.allclose(r.embed_users([[new_id]]), r.embed_users([[]]))
    assert len(r.index) == before + len(ranks)
    assert max(ranks) < len(r.index) / 3  # random would average half the catalogue
    assert np.mean(np.array(ranks) < 20) >= 0.5
    # Re-adding replaces: the index does not grow.
    r.add_items(["NEW-MUG"], ["PLAIN BLACK MUG"], ["MUG"], [None])
    assert len(r.index) == before + len(ranks)


def test_embed_items_checks_lengths(local_retriever: TwoTowerRetriever) -> None:
    with pytest.raises(RecsysError, match="2 item_ids but 1 descriptions"):
        local_retriever.embed_items(["a", "b"], ["x"], ["MUG", "MUG"], [1.0, 2.0])


# -- the job ---------------------------------------------------------------------------------------


def run_until_done(s: Scheduler, job_id: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.tick()
        if s.store.get(job_id).state.terminal:
            return
        time.sleep(0.2)
    raise AssertionError(f"job not done in {timeout}s: {s.store.get(job_id)}")


@pytest.mark.integration
@pytest.mark.slow
def test_ddp_job_through_the_scheduler_registers_a_loadable_version(
    project: Project, tiny_lines: pd.DataFrame, tiny_items: pd.DataFrame
) -> None:
    cfg = TwoTowerConfig(**{**FAST.to_dict(), "epochs": 1, "eval_every": 10})
    folder = write_two_tower_dataset(project, tiny_lines, tiny_items, config=cfg)
    spec = two_tower_job_spec(project, config=cfg, procs=2)
    assert spec.resources.procs == 2 and spec.entrypoint.endswith("_two_tower_train:main")
    s = Scheduler(project, inventory=[NodeCapacity("local", 2)])
    job = s.store.submit(spec)
    run_until_done(s, job.id)
    done = s.store.get(job.id)
    logs = "\n".join(TrainingService(project).logs(job.id).values())
    assert done.state is JobState.SUCCEEDED, logs[-3000:]
    assert done.model_version == "recs-two-tower/1"
    assert "2 process(es)" in logs and "registered models:/recs-two-tower/1" in logs
    metrics = s.store.metrics(job.id, "recall_at_20")
    assert metrics and all(0 <= value <= 1 for _, _, value in metrics), metrics

    # The version: pytorch flavor, metrics, lineage to the data set, files for the retriever.
    mv = Registry(project).get_version("recs-two-tower", 1)
    assert mv.flavor == "pytorch" and mv.metrics["recall_at_20"] > 0
    assert mv.training_dataset == spec.dataset
    graph = upstream(project.db, Node("model_version", "recs-two-tower/1"))
    assert Node("training_dataset", str(spec.dataset)) in graph.nodes
    # The registered module runs both towers.
    loaded = Registry(project).load("models:/recs-two-tower/1")
    out = loaded.predict(Registry(project).input_example(mv))
    assert out["output_0"].shape == (2, cfg.dim) and out["output_1"].shape == (3, cfg.dim)

    r = TwoTowerRetriever.load(project)
    assert r.model_version == "recs-two-tower/1"
    assert len(r.index) == len(tiny_items)
    history = tiny_items["item_id"].tolist()[:5]
    users = r.embed_users([history, []])
    again = TwoTowerRetriever.load(project, version=1).embed_users([history, []])
    np.testing.assert_array_equal(users, again)  # deterministic
    # The module the registry verified and the retriever's towers agree.
    data = TwoTowerData(folder)
    np.testing.assert_allclose(
        r.index.vectors(data.item_ids[:3])[0], out["output_1"], rtol=1e-4, atol=1e-5
    )
    # An unseen item: finite content embedding, found by a user of its category.
    twin = tiny_items.iloc[0]
    group = tiny_items.loc[tiny_items["category"] == twin["category"], "item_id"].tolist()
    vec = r.add_items(["BRAND-NEW"], [twin["description"]], [twin["category"]], [twin["price"]])
    assert np.isfinite(vec).all()
    ids, _ = r.search(r.embed_users([group[:4]]), len(group) + 5)[0]
    assert "BRAND-NEW" in ids
    with pytest.raises(RecsysError, match="no version 9"):
        TwoTowerRetriever.load(project, version=9)


def test_load_refuses_a_model_the_job_did_not_register(project: Project) -> None:
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(20, 3))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    Registry(project).register_model(
        "other", model, flavor="sklearn", input_example=x[:2], export_onnx=False
    )
    with pytest.raises(RecsysError, match="not registered by the two-tower training job"):
        TwoTowerRetriever.load(project, "other")
    with pytest.raises(RecsysError, match="not registered"):
        TwoTowerRetriever.load(project, "missing-model")


def test_job_spec_needs_a_dataset(tmp_path: Path) -> None:
    fresh = make_project(tmp_path / "empty")
    try:
        with pytest.raises(RecsysError, match="no training data written yet"):
            two_tower_job_spec(fresh)
    finally:
        fresh.close()


def test_make_lines_helper_builds_a_dataset(project: Project) -> None:
    lines = make_lines(
        [(1, "A", "i1", "2011-01-01"), (1, "B", "i2", "2011-02-01"), (2, "A", "i3", "2011-03-01")]
    )
    folder = write_two_tower_dataset(
        project, lines, None, config=TwoTowerConfig(text="tfidf", val_days=0)
    )
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["examples"] == 3 and meta["items"] == 2 and meta["val_users"] == 0


def _cli(args: list[str]) -> int:
    from flywheel.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_train_retrieval_writes_the_data_set_and_submits_the_job(
    project: Project, tiny_lines: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    from flywheel.recsys import ingest

    config = ["--config", str(project.root / "flywheel.yaml")]
    code = _cli(["recs", "train-retrieval", *config])
    assert code == 1
    assert "nothing ingested yet" in capsys.readouterr().err
    ingest(project, tiny_lines)
    code = _cli(
        ["recs", "train-retrieval", "--procs", "1", "--epochs", "2", "--text", "tfidf", *config]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "submitted recs-two-tower-" in out and "tfidf text" in out
    jobs = TrainingService(project).list()
    assert [j.state for j in jobs] == [JobState.QUEUED]
    spec = jobs[0].spec
    assert spec.resources.procs == 1 and spec.hyperparameters["epochs"] == 2
    assert spec.register == "recs-two-tower" and spec.dataset is not None
    assert (project.root / spec.dataset / "part-00000.parquet").is_file()
    assert _cli(["recs", "train-retrieval", "--text", "bert", *config]) == 1
    assert "--text" in capsys.readouterr().err


@pytest.mark.slow
def test_offline_evaluation_can_include_the_two_tower(tiny_lines: pd.DataFrame) -> None:
    from flywheel.recsys import evaluate_offline

    report = evaluate_offline(
        tiny_lines, text_method="tfidf", baselines=False, ials=False, ranker=False, two_tower=True
    )
    row = report.row("two-tower")
    assert row.kind == "generator" and set(row.metrics) == {"all", "new-only"}
    assert row.params["all"]["history_len"] == 50
    assert 0 < row.metrics["all"].recall <= 1
    assert "two-tower" in report.pool_recall["all"]
