"""The forward pass of a Llama-family decoder over a paged KV cache.

The weights are those of the ``transformers`` model loaded from the folder (its embedding,
projections, norms, MLP, rotary embedding and head are used as they are); the attention and the
cache are ours. One step takes a *packed* batch: the new tokens of every scheduled sequence laid
end to end (a prefill chunk of many tokens or one decode token each). Keys and values go into
the cache at each token's slot (``block * block_size + offset``); each sequence then attends over
its own blocks. Decode tokens are attended in one batched call, prefill chunks one sequence each.

Supported: Llama, Mistral (no sliding window: contexts must stay within it), Qwen2 (q/k/v bias)
and Qwen3 (q/k norms), i.e. any ``*ForCausalLM`` with ``model.layers[i].self_attn.{q,k,v,o}_proj``,
``mlp``, ``input_layernorm`` / ``post_attention_layernorm``, ``model.norm`` and
``model.rotary_emb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


@dataclass
class SeqSlice:
    """One sequence's share of a packed step."""

    start: int  # first row in the packed tokens
    length: int  # new tokens this step
    context: int  # tokens in the cache after this step (computed before + new)
    blocks: list[int]  # the block table


@dataclass
class StepBatch:
    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    slots: torch.Tensor  # [T] long, cache slot of each new token
    seqs: list[SeqSlice]
    logit_rows: torch.Tensor  # rows whose next-token logits are wanted


class PagedDecoder:
    """A loaded decoder plus its paged KV cache (``num_blocks`` blocks of ``block_size``)."""

    def __init__(
        self, hf_model: Any, *, num_blocks: int, block_size: int, device: torch.device
    ) -> None:
        config = hf_model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"config.model_type: {config.model_type!r} is not supported by the engine "
                f"(supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))})"
            )
        self.hf = hf_model
        self.body = hf_model.model
        self.lm_head = hf_model.lm_head
        self.config = config
        self.device = device
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.vocab_size = int(self.lm_head.out_features)
        dtype = next(hf_model.parameters()).dtype
        shape = (num_blocks * block_size, self.num_kv_heads, self.head_dim)
        layers = len(self.body.layers)
        self.k_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self._offsets = torch.arange(block_size, device=device)

    @staticmethod
    def kv_bytes_per_block(config: Any, block_size: int, dtype: torch.dtype) -> int:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * config.num_hidden_layers * block_size * kv_heads * head_dim * element

    @torch.inference_mode()
    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Run one packed step; returns float32 logits ``[len(logit_rows), vocab]``."""
        h = self.body.embed_tokens(batch.input_ids)  # [T, H]
        cos, sin = self.body.rotary_emb(h, batch.positions[None])
        cos, sin = cos[0][:, None, :], sin[0][:, None, :]  # [T, 1, D]
        plan = self._attention_plan(batch)
        rows = h.shape[0]
        for index, layer in enumerate(self.body.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(rows, -1, self.head_dim)
            k = attn.k_proj(x).view(rows, -1, self.head_dim)
            v = attn.v_proj(x).view(rows, -1, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3
                q, k = attn.q_norm(q), attn.k_norm(k)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k_cache, v_cache = self.k_cache[index], self.v_cache[index]
            k_cache.index_copy_(0, batch.slots, k)
            v_cache.index_copy_(0, batch.slots, v)
            out = self._attend(q, k_cache, v_cache, plan, float(attn.scaling))
            h = h + attn.o_proj(out.reshape(rows, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        if batch.logit_rows.numel() == 0:  # a prefill chunk that samples nothing
            return h.new_zeros((0, self.vocab_size), dtype=torch.float32)
        h = self.body.norm(h.index_select(0, batch.logit_rows))
        return self.lm_head(h).float()

    def _attention_plan(self, batch: StepBatch) -> dict[str, Any]:
        """Index tensors shared by every layer of this step."""
        single = [s for s in batch.seqs if s.length == 1]
        chunks = [s for s in batch.seqs if s.length > 1]
        plan: dict[str, Any] = {"chunks": []}
        if single:
            width = max(len(s.blocks) for s in single)
            table = torch.tensor(
                [s.blocks + [0] * (width - len(s.blocks)) for s in single], device=self.device
            )
            slots = (table[:, :, None] * self.block_size + self._offsets).reshape(len(single), -1)
            context = torch.tensor([s.context for s in single], device=self.device)
            mask = torch.arange(slots.shape[1], device=self.device)[None, :] < context[:, None]
            plan["rows"] = torch.tensor([s.start for s in single], device=self.device)
            plan["slots"] = slots
            plan["mask"] = mask[:, None, None, :]  # [B, 1, 1, L]
        for s in chunks:
            blocks = torch.tensor(s.blocks, device=self.device)
            slots = (blocks[:, None] * self.block_size + self._offsets).reshape(-1)[: s.context]
            past = s.context - s.length
            mask = None
            if past:
                q_pos = torch.arange(past, s.context, device=self.device)[:, None]
                mask = torch.arange(s.context, device=self.device)[None, :] <= q_pos
            plan["chunks"].append((s.start, s.length, slots, mask))
        return plan

    def _attend(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        plan: dict[str, Any],
        scale: float,
    ) -> torch.Tensor:
        out = torch.empty_like(q)  # [T, heads, D]
        gqa = self.num_kv_heads != self.num_heads
        if "rows" in plan:
            rows, slots = plan["rows"], plan["slots"]
            qs = q.index_select(0, rows)[:, :, None, :]  # [B, heads, 1, D]
            ks = k_cache[slots].transpose(1, 2)  # [B, kv, L, D]
            vs = v_cache[slots].transpose(1, 2)
            o = sdpa(qs, ks, vs, attn_mask=plan["mask"], scale=scale, enable_gqa=gqa)
            out.index_copy_(0, rows, o[:, :, 0, :])
        for start, length, slots, mask in plan["chunks"]:
            qs = q[start : start + length].transpose(0, 1)[None]  # [1, heads, n, D]
            ks = k_cache[slots].transpose(0, 1)[None]  # [1, kv, ctx, D]
            vs = v_cache[slots].transpose(0, 1)[None]
            o = sdpa(
                qs,
                ks,
                vs,
                attn_mask=None if mask is None else mask[None, None],
                is_causal=mask is None,
                scale=scale,
                enable_gqa=gqa,
            )
            out[start : start + length] = o[0].transpose(0, 1)
        return out

    @torch.inference_mode()
    def embed(self, token_ids_batch: list[list[int]]) -> torch.Tensor:
        """Mean of the final-norm hidden states over each input's tokens: ``[n, hidden]``."""
        width = max(len(ids) for ids in token_ids_batch)
        ids = torch.zeros((len(token_ids_batch), width), dtype=torch.long)
        mask = torch.zeros((len(token_ids_batch), width), dtype=torch.long)
        for row, seq in enumerate(token_ids_batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.body(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        weights = mask[:, :, None].float()
        return (hidden * weights).sum(1) / weights.sum(1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


__all__ = ["SUPPORTED_MODEL_TYPES", "PagedDecoder", "SeqSlice", "StepBatch"]
