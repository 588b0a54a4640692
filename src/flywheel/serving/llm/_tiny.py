"""A tiny Llama-architecture chat model, built and trained locally in seconds.

No weights can be downloaded here, so tests, the demo and newcomers use this model: a byte-level
BPE tokenizer trained with ``tokenizers`` and a 2-layer ``LlamaForCausalLM`` trained on the
project's own corpus (``_tiny_corpus``), seeded and deterministic on a given machine. The folder
it writes is an ordinary Hugging Face causal-LM folder; anything that serves such a folder serves
this one.

Chat template (ChatML-style; tools and tool results included; ⏎ is a newline)::

    <|im_start|>system⏎{system}[⏎⏎# Tools⏎<tools>⏎{function JSON per line}</tools>⏎...]<|im_end|>⏎
    <|im_start|>user⏎{content}<|im_end|>⏎
    <|im_start|>assistant⏎{content}<tool_call>{"name": N, "arguments": {...}}</tool_call><|im_end|>⏎
    <|im_start|>tool⏎<tool_response>{content}</tool_response><|im_end|>⏎
    <|im_start|>assistant⏎                       (the generation prompt)

``<|im_end|>`` is the end-of-sequence token. The tool tags are single, non-special tokens, so
they appear in decoded text, where the API layer parses them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
TOOL_TAGS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = TOOL_TAGS[0], TOOL_TAGS[1]

# No formatting whitespace: the newlines are the "\n" escapes. transformers renders with
# trim_blocks, which drops a newline right after a tag, so those are written as {{ '\n' }}.
CHAT_TEMPLATE = (
    "{% set ns = namespace(system='', first=0) %}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set ns.system = messages[0]['content'] %}{% set ns.first = 1 %}{% endif %}"
    "{% if tools %}"
    "<|im_start|>system\n{{ ns.system }}{% if ns.system %}{{ '\\n\\n' }}{% endif %}"
    "# Tools\n<tools>\n"
    "{% for t in tools %}{% if t['function'] is defined %}{{ t['function'] | tojson }}"
    "{% else %}{{ t | tojson }}{% endif %}{{ '\\n' }}{% endfor %}</tools>\n"
    'To call a tool answer <tool_call>{"name": ..., "arguments": {...}}</tool_call><|im_end|>\n'
    "{% elif ns.system %}<|im_start|>system\n{{ ns.system }}<|im_end|>\n{% endif %}"
    "{% for m in messages[ns.first:] %}"
    "{% if m['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{% if m['content'] %}{{ m['content'] }}{% endif %}"
    "{% if m['tool_calls'] is defined and m['tool_calls'] %}{% for tc in m['tool_calls'] %}"
    "{% if tc['function'] is defined %}{% set f = tc['function'] %}{% else %}{% set f = tc %}"
    "{% endif %}"
    '<tool_call>{"name": {{ f[\'name\'] | tojson }}, "arguments": '
    "{% if f['arguments'] is string %}{{ f['arguments'] }}{% else %}"
    "{{ f['arguments'] | tojson }}{% endif %}}</tool_call>{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% elif m['role'] == 'tool' %}"
    "<|im_start|>tool\n<tool_response>{{ m['content'] }}</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VOCAB_SIZE = 512
SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
}
TRAIN_STEPS = 300
SEQ_LEN = 128
BATCH = 16


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, steps: int = TRAIN_STEPS) -> Path:
    """Train the tiny chat model and write it as a Hugging Face folder at ``out_dir``.

    The folder holds ``config.json``, ``model.safetensors``, ``generation_config.json``,
    ``tokenizer.json`` and ``tokenizer_config.json`` (with the chat template). The same ``seed``
    gives the same files on the same machine. The folder is written next to ``out_dir`` and
    renamed into place, so a crash leaves no half-written model. Returns ``out_dir``.

    Raises:
        ValueError: ``out_dir`` exists and is not an empty folder, or ``steps`` < 0.
    """
    out = Path(out_dir)
    if steps < 0:
        raise ValueError(f"steps: must be >= 0, got {steps}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out_dir: {out} already exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer = _train_tokenizer(seed)
        documents = _documents(tokenizer, seed)
        model = _train_model(documents, len(tokenizer), tokenizer, seed, steps)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _pin_tokenizer_config(tmp)
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _train_tokenizer(seed: int) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from flywheel.serving.llm._tiny_corpus import PROSE, dialogues

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(TOOL_TAGS),
        special_tokens=[END_OF_TEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = PROSE.splitlines() + [
        json.dumps(m.get("content")) for d in dialogues(seed, 60) for m in d
    ]
    tk.train_from_iterator(texts, trainer=trainer)
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TAGS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        unk_token=None,
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=SHAPE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def _documents(tokenizer: Any, seed: int) -> list[list[int]]:
    from flywheel.serving.llm._tiny_corpus import PROSE, TOOLS, dialogues

    docs: list[list[int]] = []
    eot = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    for line in PROSE.splitlines():
        docs.append([*tokenizer.encode(line, add_special_tokens=False), eot])
    for conversation in dialogues(seed):
        uses_tools = any("tool_calls" in m for m in conversation)
        text = tokenizer.apply_chat_template(
            conversation, tools=TOOLS if uses_tools else None, tokenize=False
        )
        docs.append([*tokenizer.encode(text, add_special_tokens=False), eot])
    return docs


def _train_model(
    documents: list[list[int]], vocab: int, tokenizer: Any, seed: int, steps: int
) -> Any:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eos = tokenizer.convert_tokens_to_ids(IM_END)
    pad = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    config = LlamaConfig(
        vocab_size=vocab,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=pad,
        **SHAPE,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    stream = torch.tensor([t for d in documents for t in d], dtype=torch.long)
    # Windows start anywhere; every token is a target (documents are separated by <|endoftext|>).
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optim, max_lr=3e-3, total_steps=max(steps, 1), pct_start=0.1
    )
    model.train()
    threads = torch.get_num_threads()
    # One thread: for tensors this small it is as fast on an idle machine, many times faster on
    # a busy one (no OpenMP workers to wait for), and the result does not depend on the cores.
    torch.set_num_threads(1)
    try:
        _train_loop(model, optim, schedule, stream, generator, vocab, steps)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model


def _train_loop(
    model: Any, optim: Any, schedule: Any, stream: Any, generator: Any, vocab: int, steps: int
) -> None:
    import torch

    last_start = max(1, stream.numel() - SEQ_LEN - 1)
    for _ in range(steps):
        starts = torch.randint(0, last_start, (BATCH,), generator=generator)
        batch = torch.stack([stream[s : s + SEQ_LEN + 1] for s in starts.tolist()])
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, vocab), batch[:, 1:].reshape(-1)
        )
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        schedule.step()


def _pin_tokenizer_config(folder: Path) -> None:
    """Keep the chat template inside ``tokenizer_config.json`` (one file for older loaders too)."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


__all__ = [
    "CHAT_TEMPLATE",
    "IM_END",
    "IM_START",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "build_tiny_model",
]
