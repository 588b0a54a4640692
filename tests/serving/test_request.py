"""The request path alone: V2 bytes in, answer bytes out (never raising for a request problem);
numpy in, numpy out; the error for each kind of bad input; and its pure helpers."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from flywheel.project import Project
from flywheel.serving import InvalidInput, UnknownModel
from flywheel.serving._background import BackgroundTasks
from flywheel.serving._endpoints import EndpointStore
from flywheel.serving._pool import VersionPool
from flywheel.serving._prediction_log import PredictionLogger
from flywheel.serving._reconciler import Reconciler
from flywheel.serving._request import (
    RequestPath,
    disagreement,
    parse_timeout_header,
    request_from_arrays,
)
from tests.serving.conftest import LINEAR_SIG, FakeModel, FakeSource, linear


def _path(project: Project, source: FakeSource) -> RequestPath:
    config = project.config.serving
    background = BackgroundTasks()
    pool = VersionPool(source, config, background)
    pool.start()
    routes = Reconciler(
        pool, source, EndpointStore(project.db), replica_id="r1", background=background
    )
    logger = PredictionLogger(project.config.offline_store_path, 0.0, 1.0)

    async def started() -> None:
        return None

    return RequestPath(routes, pool, logger, config, background, started)


def _body(data: list[list[float]]) -> bytes:
    shape = [len(data), len(data[0])]
    flat = [x for row in data for x in row]
    tensor = {"name": "input", "datatype": "FP32", "shape": shape, "data": flat}
    return orjson.dumps({"inputs": [tensor]})


def test_infer_answers_v2_and_turns_request_errors_into_statuses(
    project: Project, source: FakeSource
) -> None:
    source.add("m", 1, FakeModel(linear(2.0)), stage="production")

    async def scenario() -> None:
        path = _path(project, source)
        ok = await path.infer("m", None, _body([[1, 2, 3, 4], [0, 0, 0, 1]]), None)
        assert ok.status == 200
        outputs = {o["name"]: o["data"] for o in orjson.loads(ok.body)["outputs"]}
        assert outputs["predictions"] == [20.0, 2.0]
        bad = await path.infer("m", None, _body([[1, 2, 3]]), None)
        assert bad.status == 400 and "input" in orjson.loads(bad.body)["error"]
        missing = await path.infer("nope", None, _body([[1, 2, 3, 4]]), None)
        assert missing.status == 404 and "nope" in orjson.loads(missing.body)["error"]
        garbage = await path.infer("m", None, b"{not json", None)
        assert garbage.status == 400
        await path.pool.close()

    asyncio.run(scenario())


def test_predict_casts_within_a_kind_and_raises_serving_errors(
    project: Project, source: FakeSource
) -> None:
    source.add("m", 1, FakeModel(linear(1.0)), stage="production")

    async def scenario() -> None:
        path = _path(project, source)
        pred = await path.predict("m", {"input": np.ones((3, 4), dtype=np.float64)})
        assert (pred.model, pred.version) == ("m", 1)
        assert pred.outputs["predictions"].tolist() == [4.0, 4.0, 4.0]
        with pytest.raises(UnknownModel):
            await path.predict("nope", {"input": np.ones((1, 4), np.float32)})
        with pytest.raises(InvalidInput, match="is missing"):
            await path.predict("m", {})
        await path.pool.close()

    asyncio.run(scenario())


def test_request_from_arrays_names_the_input_and_the_reason() -> None:
    ok = request_from_arrays(
        {"input": np.ones((2, 4), np.float64)}, LINEAR_SIG, model="m", allow_nan=False
    )
    assert ok.rows == 2 and ok.inputs["input"].dtype == np.float32
    cases = [
        ({"other": np.ones((1, 4))}, "'other' is not an input of 'm'"),
        ({"input": np.array([["a"] * 4])}, "datatype BYTES given; 'm' expects FP32"),
        ({"input": np.full((1, 4), np.nan)}, "contains NaN"),
    ]
    for inputs, message in cases:
        with pytest.raises(InvalidInput, match=message):
            request_from_arrays(inputs, LINEAR_SIG, model="m", allow_nan=False)


def test_timeout_header_and_disagreement() -> None:
    assert parse_timeout_header("250ms") == pytest.approx(0.25)
    assert parse_timeout_header("2s") == 2.0
    assert parse_timeout_header("500") == pytest.approx(0.0005)
    with pytest.raises(InvalidInput, match="250ms"):
        parse_timeout_header("soon")
    same = {"label": np.array([1, 0, 1, 1])}
    assert disagreement(same, same) == 0.0
    assert disagreement(same, {"label": np.array([1, 1, 1, 0])}) == 0.5
    assert disagreement(same, {"label": np.array([1, 0])}) == 1.0  # shapes differ
