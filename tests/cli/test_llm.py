"""``flywheel llm``: init-tiny builds, trains, registers, promotes; chat streams; bench measures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from flywheel.cli._main import main
from flywheel.project import Project
from flywheel.registry import Registry
from tests.conftest import make_project
from tests.serving.llm.conftest import tiny_model_dir as tiny_model_dir
from tests.serving.llm.openai_server import llm_server

pytestmark = pytest.mark.integration


def flywheel(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = make_project(tmp_path_factory.mktemp("llm-cli") / "proj")
    yield project
    project.close()


def test_init_tiny_registers_and_promotes(
    tiny_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(tiny_project.config.root / "flywheel.yaml")
    # few training steps: the command's work (build, run, register, stage) is what is tested
    code, out, err = flywheel(["llm", "init-tiny", "mini", "--steps", "2", "-c", config], capsys)
    assert code == 0, err
    assert "registered mini v1" in " ".join(out.split())
    registry = Registry(tiny_project)
    mv = registry.get_version("mini", 1)
    assert mv.flavor == "llm" and "production" in mv.stages and mv.run_id
    assert any(n.kind == "run" for n in registry.lineage("mini", 1).nodes)
    code, _, err = flywheel(["llm", "init-tiny", "bad name", "-c", config], capsys)
    assert code == 1 and err.startswith("error: model name 'bad name'") and err.count("\n") == 1


def test_chat_and_bench_against_a_server(
    tiny_project: Project, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(tiny_project)
    mv = registry.register_model("chatty", tiny_model_dir, flavor="llm")
    registry.set_stage("chatty", mv.version, "production")
    with llm_server(tiny_project) as url:
        client: Any = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        want = client.chat.completions.create(
            model="chatty",
            messages=[{"role": "user", "content": "What is a canary?"}],
            max_tokens=20,
            temperature=0,
        )
        args = ["llm", "chat", "chatty", "-m", "What is a canary?", "--temperature", "0"]
        code, out, err = flywheel([*args, "--max-tokens", "20", "--url", url], capsys)
        assert code == 0, err
        assert out.strip() == (want.choices[0].message.content or "").strip()
        code, out, err = flywheel(
            ["llm", "bench", "chatty", "--requests", "4", "--concurrency", "2",
             "--max-tokens", "8", "--url", url],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        assert "load average" in out
        rows = [line.split("│") for line in out.splitlines() if line.startswith("│")]
        cells = [[c.strip() for c in r[1:-1]] for r in rows]
        assert ["4", "0"] in [c[:2] for c in cells], out  # 4 answered, no errors
        code, _, err = flywheel(["llm", "chat", "nope", "-m", "hi", "--url", url], capsys)
        assert code == 1 and "404" in err and err.count("\n") == 1
    code, _, err = flywheel(["llm", "chat", "x", "-m", "hi", "--url", url], capsys)
    assert code == 1 and "no server answers" in err
