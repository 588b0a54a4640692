"""The LLM flavors: a Hugging Face-format causal LM folder, and a scripted chat model's folder.

``llm``: the model given to ``register_model`` is the path of a folder in Hugging Face format —
``config.json``, the weights as ``*.safetensors``, the tokenizer (``tokenizer.json`` and its
``tokenizer_config.json``), and the chat template (``chat_template.jinja`` or the
``chat_template`` key of ``tokenizer_config.json``). Only data files are copied: weights must be
safetensors (pickled ``*.bin`` / ``*.pt`` weights are refused, or skipped when a safetensors
copy is beside them), and a model whose ``config.json`` asks for custom code (``auto_map``) or
whose folder carries ``*.py`` files is refused: loading never unpickles and never runs code from
the folder. Every copied file is content-addressed (its sha256 is checked at every load).

Its ``Predict`` (what registration verifies and ``/v2`` answers) is one greedy step:
``{"prompt": [text, ...]}`` -> ``{"next_token": [id, ...], "next_token_logprob": [lp, ...]}``,
computed with ``transformers`` from the folder. Generation (``/v1``) is served by
``flywheel.serving.llm`` from the same verified files (``Registry.materialize``).

``scripted-chat``: a deterministic chat model for tests, CI and demos. The model is the path of
a folder holding ``scripted_chat.json`` (or that JSON as a dict): ``{"rules": [...], ...}``, an
object whose rules ``flywheel.serving.llm._scripted`` interprets. The registry checks it is a
JSON object with a ``rules`` list; its ``Predict`` answers ``{"prompt": [...]}`` with the
number of rules whose ``pattern`` (a regular expression) matches each prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.registry._errors import RegistryError, UnsafeModelError
from flywheel.registry._flavor import PlacedPredict, Predict

# Data files a Hugging Face folder may hold (weights, config, tokenizer, template, readme).
_DATA_SUFFIXES = (".json", ".safetensors", ".jinja", ".txt", ".model", ".md")
# Files that unpickle (or are code) when loaded: never copied.
_PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack")
_MAX_FILES = 10_000
SCRIPTED_FILE = "scripted_chat.json"


def _folder_of(model: Any, flavor: str) -> Path:
    if not isinstance(model, str | Path):
        raise RegistryError(
            f"a {flavor} model is the path of a Hugging Face-format folder, not "
            f"{type(model).__name__} (save it first: model.save_pretrained(dir); "
            "tokenizer.save_pretrained(dir))"
        )
    folder = Path(model)
    if not folder.is_dir():
        raise RegistryError(f"{flavor} model folder {str(folder)!r} does not exist")
    return folder


def hf_files(folder: Path) -> tuple[list[str], list[str]]:
    """(files to copy, pickled files skipped) of a Hugging Face folder, relative paths sorted.

    Raises ``UnsafeModelError`` when the folder needs code or pickles to load, ``RegistryError``
    when it lacks a required file.
    """
    keep: list[str] = []
    skipped: list[str] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(p.startswith(".") for p in path.relative_to(folder).parts):
            continue
        rel = path.relative_to(folder).as_posix()
        if path.suffix == ".py":
            raise UnsafeModelError(
                f"the model folder holds code ({rel}); Flywheel never runs code from a model "
                "folder (trust_remote_code) — use an architecture transformers knows"
            )
        if path.suffix in _PICKLED_SUFFIXES:
            skipped.append(rel)
        elif path.suffix in _DATA_SUFFIXES:
            keep.append(rel)
        if len(keep) + len(skipped) > _MAX_FILES:
            raise RegistryError(f"the model folder has over {_MAX_FILES} files")
    names = set(keep)
    if "config.json" not in names:
        raise RegistryError("the model folder has no config.json (Hugging Face format)")
    if not any(n.endswith(".safetensors") for n in names):
        if skipped:
            raise UnsafeModelError(
                f"the weights are pickled ({', '.join(skipped[:3])}), and unpickling runs "
                "arbitrary code; convert them to safetensors (model.save_pretrained(dir, "
                "safe_serialization=True)) and register that folder"
            )
        raise RegistryError("the model folder has no *.safetensors weights")
    if "tokenizer.json" not in names:
        raise RegistryError(
            "the model folder has no tokenizer.json (a fast tokenizer: "
            "tokenizer.save_pretrained(dir))"
        )
    config = json.loads((folder / "config.json").read_text())
    if not isinstance(config, dict):
        raise RegistryError("config.json is not a JSON object")
    if config.get("auto_map"):
        raise UnsafeModelError(
            "config.json has auto_map: the model needs custom code (trust_remote_code), which "
            "Flywheel never runs"
        )
    return keep, skipped


def chat_template_of(folder: Path) -> str | None:
    """The folder's chat template (``chat_template.jinja``, else tokenizer_config's key)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        template = json.loads(cfg.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _prompts(inputs: dict[str, np.ndarray]) -> list[str]:
    values = next(iter(inputs.values())).reshape(-1)
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class _NextToken:
    """One greedy step of a causal LM (``transformers``) over a batch of prompts.

    The folder (which may be temporary) is copied to a private one removed with this object;
    the model is loaded from it on the first call, so a server that only serves ``/v1`` never
    holds a second copy of the weights in memory.
    """

    def __init__(self, folder: Path, device: str, *, private_copy: bool = True) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.folder = folder
        if private_copy:
            self.folder = Path(tempfile.mkdtemp(prefix="flywheel-llm-"))
            weakref.finalize(self, shutil.rmtree, self.folder, True)
            shutil.copytree(folder, self.folder, dirs_exist_ok=True)
        self._loaded: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    def _built(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None:
                from transformers import AutoModelForCausalLM, AutoTokenizer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # no progress bars in a server's output

                tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(
                    str(self.folder),
                    local_files_only=True,
                    use_safetensors=True,
                    trust_remote_code=False,
                    dtype=self.torch.float32,
                )
                self._loaded = (tokenizer, model.to(self.device).eval())
            return self._loaded

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        tokenizer, model = self._built()
        tokens: list[int] = []
        logprobs: list[float] = []
        with torch.inference_mode():
            for prompt in _prompts(inputs):
                ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [0]
                x = torch.tensor([ids], device=self.device)
                logits = model(input_ids=x).logits[0, -1].float()
                lp = torch.log_softmax(logits, dim=-1)
                top = int(torch.argmax(lp))
                tokens.append(top)
                logprobs.append(float(lp[top]))
        return {
            "next_token": np.asarray(tokens, dtype=np.int64),
            "next_token_logprob": np.asarray(logprobs, dtype=np.float32),
        }


def _predict(folder: Path, device: str, *, private_copy: bool = True) -> Predict:
    step = _NextToken(folder, device, private_copy=private_copy)
    if device == "cpu":
        return step
    return PlacedPredict(step, device, {"torch_device": device})


class LLMFlavor:
    """``llm``: a Hugging Face-format causal LM folder (see the module docstring)."""

    name = "llm"
    runtime = "torch"
    exports_onnx = False

    def example_for(self, model: Any) -> dict[str, np.ndarray]:
        """The input example registration runs when the caller gives none."""
        return {"prompt": np.asarray(["The model registry keeps"], dtype=object)}

    def wrap(self, model: Any, input_names: list[str]) -> Predict:
        folder = _folder_of(model, self.name)
        hf_files(folder)  # refuse unsafe folders before transformers opens anything
        return _predict(folder, "cpu", private_copy=False)

    def save(self, model: Any, folder: Path, example: dict[str, np.ndarray]) -> dict[str, Any]:
        source = _folder_of(model, self.name)
        keep, skipped = hf_files(source)
        hashes: dict[str, str] = {}
        for rel in keep:
            dest = folder / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, dest)
            hashes[rel] = _sha256(dest)
        config = json.loads((folder / "config.json").read_text())
        template = chat_template_of(folder)
        text_config = (
            config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        )
        details: dict[str, Any] = {
            "format": "huggingface",
            "files": hashes,  # relative path -> sha256 (every load checks them)
            "architectures": list(config.get("architectures") or []),
            "model_type": config.get("model_type"),
            "vocab_size": text_config.get("vocab_size"),
            "hidden_size": text_config.get("hidden_size") or text_config.get("n_embd"),
            "max_context": text_config.get("max_position_embeddings")
            or text_config.get("n_positions"),
            "chat_template": template is not None,
        }
        if skipped:
            details["skipped_pickled_files"] = skipped
        return details

    def load(
        self,
        folder: Path,
        details: dict[str, Any],
        input_names: list[str],
        *,
        trusted: bool,
        device: str = "cpu",
    ) -> Predict:
        hf_files(folder)
        return _predict(folder, device)

    def export_onnx(
        self, model: Any, path: Path, example: dict[str, np.ndarray], details: dict[str, Any]
    ) -> None:
        raise RegistryError("LLM versions are not exported to ONNX (served by the LLM engine)")


def _scripted_rules(model: Any) -> dict[str, Any]:
    if isinstance(model, dict):
        spec = model
    elif isinstance(model, str | Path):
        path = Path(model)
        if path.is_dir():
            path = path / SCRIPTED_FILE
        if not path.is_file():
            raise RegistryError(f"scripted-chat model {str(path)!r} does not exist")
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{path.name} is not valid JSON: {exc}") from None
    else:
        raise RegistryError(
            "a scripted-chat model is a dict of rules or the path of its "
            f"{SCRIPTED_FILE}, not {type(model).__name__}"
        )
    if not isinstance(spec, dict) or not isinstance(spec.get("rules"), list):
        raise RegistryError("a scripted-chat model is a JSON object with a 'rules' list")
    for i, rule in enumerate(spec["rules"]):
        pattern = rule.get("pattern") if isinstance(rule, dict) else None
        if not isinstance(pattern, str):
            raise RegistryError(f"rules[{i}].pattern must be a regular expression string")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise RegistryError(f"rules[{i}].pattern is not a regular expression: {exc}") from None
    return spec


def _rule_counter(spec: dict[str, Any]) -> Predict:
    patterns = [re.compile(r["pattern"], re.IGNORECASE) for r in spec["rules"]]

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts = [sum(1 for p in patterns if p.search(text)) for text in _prompts(inputs)]
        return {"matching_rules": np.asarray(counts, dtype=np.int64)}

    return predict


class ScriptedChatFlavor:
    """``scripted-chat``: deterministic rules for tests and demos (see the module docstring)."""

    name = "scripted-chat"
    runtime = "scripted"
    exports_onnx = False

    def example_for(self, model: Any) -> dict[str, np.ndarray]:
        """The input example registration runs when the caller gives none."""
        return {"prompt": np.asarray(["How many models are in production?"], dtype=object)}

    def wrap(self, model: Any, input_names: list[str]) -> Predict:
        return _rule_counter(_scripted_rules(model))

    def save(self, model: Any, folder: Path, example: dict[str, np.ndarray]) -> dict[str, Any]:
        spec = _scripted_rules(model)
        (folder / SCRIPTED_FILE).write_text(json.dumps(spec, indent=1, sort_keys=True))
        if isinstance(model, str | Path) and Path(model).is_dir():
            # Files beside the rules (a tokenizer, a chat template) travel with them.
            for rel in hf_side_files(Path(model)):
                dest = folder / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(model) / rel, dest)
        return {"format": "scripted-chat", "file": SCRIPTED_FILE, "rules": len(spec["rules"])}

    def load(
        self,
        folder: Path,
        details: dict[str, Any],
        input_names: list[str],
        *,
        trusted: bool,
        device: str = "cpu",
    ) -> Predict:
        return _rule_counter(_scripted_rules(folder / SCRIPTED_FILE))

    def export_onnx(
        self, model: Any, path: Path, example: dict[str, np.ndarray], details: dict[str, Any]
    ) -> None:
        raise RegistryError("scripted chat models have no ONNX export")


def hf_side_files(folder: Path) -> list[str]:
    """Data files (json, jinja, txt) beside a scripted model's rules, relative paths."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in (".json", ".jinja", ".txt")
        and p.name != SCRIPTED_FILE
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


__all__ = ["SCRIPTED_FILE", "LLMFlavor", "ScriptedChatFlavor", "chat_template_of", "hf_files"]
