"""The tiny local model: an ordinary Hugging Face folder, a chat template with tools, seeded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flywheel.serving.llm import build_tiny_model

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_model",
            "description": "Look up a model.",
            "parameters": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    }
]


def test_folder_loads_with_transformers(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    } <= names
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"]) == (2, 64)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert "chat_template" in json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_trained_model_answers_in_the_chat_format(tiny_model_dir: Path) -> None:
    """Training worked: a greeting gets the greeting answer it was taught, ending with EOS."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello!"}], add_generation_prompt=True
    )["input_ids"]
    out = model.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False)
    answer = tokenizer.decode(out[0][len(ids) :])
    assert answer.startswith("Hello! How can I help you")
    assert answer.endswith("<|im_end|>")


def test_chat_template_renders_tools_calls_and_results(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Which version of ranker is live?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    # OpenAI clients send arguments as a JSON string; dicts render the same.
                    "function": {"name": "get_model", "arguments": '{"name": "ranker"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"version": 3}'},
    ]
    text = tokenizer.apply_chat_template(
        messages, tools=TOOLS, add_generation_prompt=True, tokenize=False
    )
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n<tools>\n")
    assert json.dumps(TOOLS[0]["function"]) in text
    assert (
        '<|im_start|>assistant\n<tool_call>{"name": "get_model", "arguments": {"name": "ranker"}}'
        "</tool_call><|im_end|>\n"
    ) in text
    assert '<|im_start|>tool\n<tool_response>{"version": 3}</tool_response><|im_end|>\n' in text
    assert text.endswith("<|im_start|>assistant\n")
    # The tool tags are single tokens that survive decoding (the API parses them from text).
    call_id = tokenizer.convert_tokens_to_ids("<tool_call>")
    assert tokenizer.encode("<tool_call>", add_special_tokens=False) == [call_id]
    assert tokenizer.decode([call_id], skip_special_tokens=True) == "<tool_call>"
    no_tools = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert no_tools == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_same_seed_same_files_other_seed_other_weights(tmp_path: Path) -> None:
    a = _digest(build_tiny_model(tmp_path / "a", seed=1, steps=1))
    b = _digest(build_tiny_model(tmp_path / "b", seed=1, steps=1))
    c = _digest(build_tiny_model(tmp_path / "c", seed=2, steps=1))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="out_dir"):
        build_tiny_model(tmp_path / "x", steps=0)
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["x"]
