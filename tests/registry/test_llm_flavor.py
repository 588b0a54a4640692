"""The ``llm`` and ``scripted-chat`` flavors: safe Hugging Face folders, hashes, lineage."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flywheel.project import Project
from flywheel.registry import ModelIntegrityError, ModelRefused, Registry, RegistryError

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random-weight Llama folder with a trained BPE tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("hf") / "model"
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(["the model registry keeps every version"] * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(folder, dest)
    return dest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_register_load_and_materialize(project: Project, hf_folder: Path) -> None:
    from flywheel.tracking import Tracker

    registry = Registry(project)
    run = Tracker(project).start_run("llm")
    mv = registry.register_model("chat", hf_folder, flavor="llm", run=run)
    run.end()
    assert mv.flavor == "llm"
    assert mv.signature.input_names == ("prompt",)
    assert mv.signature.output_names == ("next_token", "next_token_logprob")
    details = mv.details
    assert details["chat_template"] is True
    config = json.loads((hf_folder / "config.json").read_text())
    assert details["vocab_size"] == config["vocab_size"] and details["max_context"] == 128
    # every copied file is listed with its sha256, equal to the source file's
    assert set(details["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    for rel, sha in details["files"].items():
        assert sha == _sha(hf_folder / rel)
    assert mv.onnx_sha256 is None and "onnx_error" not in details
    # the loaded version answers like the source folder (greedy next token)
    loaded = registry.load(mv)
    prompts = np.asarray(["the model", "every version keeps"], dtype=object)
    from flywheel.registry._llm import LLMFlavor

    want = LLMFlavor().wrap(hf_folder, ["prompt"])({"prompt": prompts})
    got = loaded.predict({"prompt": prompts})
    np.testing.assert_array_equal(got["next_token"], want["next_token"])
    np.testing.assert_allclose(got["next_token_logprob"], want["next_token_logprob"], rtol=1e-5)
    # materialize: the verified files on disk, reused on the second call
    folder = registry.materialize(mv)
    assert {p.name for p in folder.iterdir()} == set(details["files"])
    assert all(_sha(folder / rel) == sha for rel, sha in details["files"].items())
    assert registry.materialize(mv) == folder
    # lineage: the run made the version
    graph = registry.lineage("chat", mv.version)
    assert any(n.kind == "run" and n.id == run.id for n in graph.nodes)


def test_pickled_weights_are_refused_or_skipped(
    project: Project, hf_folder: Path, tmp_path: Path
) -> None:
    registry = Registry(project)
    folder = _copy(hf_folder, tmp_path)
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    mv = registry.register_model("chat", folder, flavor="llm")
    assert mv.details["skipped_pickled_files"] == ["pytorch_model.bin"]
    assert not (registry.materialize(mv) / "pytorch_model.bin").exists()
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelRefused, match=r"pytorch_model\.bin.*safetensors"):
        registry.register_model("chat", folder, flavor="llm")


def test_code_in_the_folder_is_refused(project: Project, hf_folder: Path, tmp_path: Path) -> None:
    registry = Registry(project)
    folder = _copy(hf_folder, tmp_path)
    (folder / "modeling_custom.py").write_text("import os\n")
    with pytest.raises(ModelRefused, match=r"modeling_custom\.py"):
        registry.register_model("chat", folder, flavor="llm")
    (folder / "modeling_custom.py").unlink()
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelRefused, match="auto_map"):
        registry.register_model("chat", folder, flavor="llm")
    assert registry.list_models() == []  # nothing half-registered


def test_missing_files_are_named(project: Project, hf_folder: Path, tmp_path: Path) -> None:
    registry = Registry(project)
    folder = _copy(hf_folder, tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(RegistryError, match=r"tokenizer\.json"):
        registry.register_model("chat", folder, flavor="llm")
    with pytest.raises(RegistryError, match="does not exist"):
        registry.register_model("chat", tmp_path / "nowhere", flavor="llm")
    with pytest.raises(RegistryError, match="path of a Hugging Face-format folder"):
        registry.register_model("chat", object(), flavor="llm")


def test_tampered_files_are_caught(project: Project, hf_folder: Path) -> None:
    registry = Registry(project)
    mv = registry.register_model("chat", hf_folder, flavor="llm")
    folder = registry.materialize(mv)
    # a cached copy edited on disk is rebuilt from the verified store
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    again = registry.materialize(mv)
    assert _sha(again / "model.safetensors") == mv.details["files"]["model.safetensors"]
    # a tampered blob in the store is refused, naming the file
    sha = mv.details["files"]["tokenizer.json"]
    blob = next(p for p in project.config.root.rglob(sha) if "blobs" in p.parts)
    blob.chmod(0o644)
    blob.write_bytes(b"{}")
    shutil.rmtree(again)
    with pytest.raises(ModelIntegrityError, match=r"tokenizer\.json"):
        registry.materialize(mv)


def test_scripted_chat_rules(project: Project, tmp_path: Path) -> None:
    registry = Registry(project)
    rules = {"rules": [{"pattern": r"how many models", "reply": "three"}]}
    mv = registry.register_model("scripted", rules, flavor="scripted-chat")
    assert mv.details["rules"] == 1
    out = registry.load(mv).predict(
        {"prompt": np.asarray(["How many models are there?", "hello"], dtype=object)}
    )
    assert out["matching_rules"].tolist() == [1, 0]
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "scripted_chat.json").write_text(json.dumps({"rules": [{"pattern": "("}]}))
    with pytest.raises(RegistryError, match=r"rules\[0\]\.pattern"):
        registry.register_model("scripted", folder, flavor="scripted-chat")


def test_cli_registers_a_folder(project: Project, hf_folder: Path) -> None:
    from flywheel.cli._main import app

    config = str(project.config.root / "flywheel.yaml")
    result = CliRunner().invoke(
        app, ["models", "register", "chat", str(hf_folder), "--flavor", "llm", "-c", config]
    )
    assert result.exit_code == 0, result.output
    assert "models:/chat/1 (llm" in result.output
    assert Registry(project).get_version("chat", 1).flavor == "llm"
