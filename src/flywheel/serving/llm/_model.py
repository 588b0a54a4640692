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
from torch.nn.functional import linear
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
    logit_rows: torch.Tensor  # rows whose next-token logits are wanted, increasing


@dataclass
class _Layer:
    """One decoder layer's weights, with q/k/v and gate/up fused into one matrix each."""

    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None
    norm1: tuple[torch.Tensor, float]
    norm2: tuple[torch.Tensor, float]
    act: Any
    scale: float
    qk_norms: tuple[Any, Any] | None  # Qwen3's per-head q/k norms


class PagedDecoder:
    """A loaded decoder plus its paged KV cache (``num_blocks`` blocks of ``block_size``).

    The q/k/v and gate/up projections of each layer are fused into one matrix (the model's own
    parameters become views of it, so no memory is duplicated) and the rotary cos/sin are
    tabulated once: a step runs a few large matrix products instead of many small ones.
    """

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
        # One tensor per layer: slot -> (key, value) x kv heads x head_dim, so a step writes and
        # gathers keys and values together.
        shape = (num_blocks * block_size, 2, self.num_kv_heads, self.head_dim)
        self.kv_cache = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(len(self.body.layers))
        ]
        self._offsets = torch.arange(block_size, device=device)
        with torch.no_grad():
            self._layers = [_fuse_layer(layer) for layer in self.body.layers]
        self._final_norm = _norm_weights(self.body.norm)
        self._rope_table = self._rotary_table(min(num_blocks * block_size, _rope_limit(config)))

    @staticmethod
    def kv_bytes_per_block(config: Any, block_size: int, dtype: torch.dtype) -> int:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * config.num_hidden_layers * block_size * kv_heads * head_dim * element

    @torch.inference_mode()
    def _rotary_table(self, positions: int) -> torch.Tensor | None:
        """``[positions, 2, head_dim]``: cos, and sin with its first half negated (so that
        ``rotate_half(x) * sin == x.roll(half) * table_sin``), or None for a rotary embedding
        whose frequencies depend on the sequence (computed every step then)."""
        rotary = self.body.rotary_emb
        if getattr(rotary, "rope_type", "default") in _DYNAMIC_ROPE:
            return None
        probe = torch.zeros((), dtype=next(self.hf.parameters()).dtype, device=self.device)
        cos, sin = rotary(probe, torch.arange(positions, device=self.device)[None])
        return self._signed(cos[0], sin[0])

    def _signed(self, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        sin = sin.clone()
        sin[:, : self.head_dim // 2] *= -1
        return torch.stack([cos, sin], dim=1)

    def _rotary(self, positions: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self._rope_table is not None:
            return self._rope_table.index_select(0, positions)
        cos, sin = self.body.rotary_emb(h, positions[None])
        return self._signed(cos[0], sin[0])

    @torch.inference_mode()
    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Run one packed step; returns float32 logits ``[len(logit_rows), vocab]``."""
        h = self.body.embed_tokens(batch.input_ids)  # [T, H]
        rope = self._rotary(batch.positions, h)
        cos, sin = rope[:, 0, None, :], rope[:, 1, None, :]  # [T, 1, D]
        plan = self._attention_plan(batch)
        rows = h.shape[0]
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        qk_width = (heads + kv_heads) * dim
        half = dim // 2
        for layer, kv_cache in zip(self._layers, self.kv_cache, strict=True):
            qkv = _project(_rms(h, layer.norm1), layer.qkv, layer.qkv_bias)
            qk = qkv[:, :qk_width].view(rows, heads + kv_heads, dim)
            v = qkv[:, qk_width:].view(rows, kv_heads, dim)
            if layer.qk_norms is not None:  # Qwen3
                q_norm, k_norm = layer.qk_norms
                qk = torch.cat([q_norm(qk[:, :heads]), k_norm(qk[:, heads:])], dim=1)
            qk = qk * cos + qk.roll(half, -1) * sin
            q, k = qk[:, :heads], qk[:, heads:]
            kv_cache[:, 0].index_copy_(0, batch.slots, k)
            kv_cache[:, 1].index_copy_(0, batch.slots, v)
            out = self._attend(q, kv_cache, plan, layer.scale)
            h = h + _project(out.reshape(rows, -1), layer.o, layer.o_bias)
            gate, up = _project(_rms(h, layer.norm2), layer.gate_up, layer.gate_up_bias).chunk(
                2, -1
            )
            h = h + _project(layer.act(gate) * up, layer.down, layer.down_bias)
        if batch.logit_rows.numel() == 0:  # a prefill chunk that samples nothing
            return h.new_zeros((0, self.vocab_size), dtype=torch.float32)
        if batch.logit_rows.numel() != rows:
            h = h.index_select(0, batch.logit_rows)
        return self._logits(_rms(h, self._final_norm))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """float32 ``[rows, vocab]``. A few rows on the CPU: computed as ``W @ h.T`` (transposed
        back as a view), which the CPU's GEMM runs up to twice as fast as ``h @ W.T`` for 2-16
        rows and a large vocabulary (no faster from about 32 rows)."""
        weight, bias = self.lm_head.weight, self.lm_head.bias
        if not 1 < h.shape[0] <= _FEW_ROWS or h.device.type != "cpu":
            return _project(h, weight, bias).float()
        logits = torch.mm(weight, h.t()).t()
        return (logits if bias is None else logits + bias).float()

    def _attention_plan(self, batch: StepBatch) -> dict[str, Any]:
        """Index tensors shared by every layer of this step."""
        single = [s for s in batch.seqs if s.length == 1]
        chunks = [s for s in batch.seqs if s.length > 1]
        plan: dict[str, Any] = {"chunks": [], "rows": None}
        if single:
            width = max(len(s.blocks) for s in single)
            table = torch.tensor(
                [s.blocks + [0] * (width - len(s.blocks)) for s in single], device=self.device
            )
            slots = (table[:, :, None] * self.block_size + self._offsets).reshape(-1)
            length = width * self.block_size
            contexts = [s.context for s in single]
            mask = None
            if len(single) == 1:  # one sequence: attend over exactly its context, no mask
                length = contexts[0]
                slots = slots[:length]
            elif min(contexts) < length:
                context = torch.tensor(contexts, device=self.device)
                allowed = torch.arange(length, device=self.device)[None, :] < context[:, None]
                mask = torch.zeros(allowed.shape, dtype=self._dtype(), device=self.device)
                mask.masked_fill_(~allowed, float("-inf"))
                mask = mask[:, None, None, :]  # [B, 1, 1, L]
            starts = [s.start for s in single]
            leading = starts == list(range(len(single)))  # decodes first: no index needed
            plan["rows"] = len(single) if leading else torch.tensor(starts, device=self.device)
            plan["slots"], plan["length"], plan["mask"] = slots, length, mask
        for s in chunks:
            blocks = torch.tensor(s.blocks, device=self.device)
            slots = (blocks[:, None] * self.block_size + self._offsets).reshape(-1)[: s.context]
            past = s.context - s.length
            chunk_mask = None
            if past:
                q_pos = torch.arange(past, s.context, device=self.device)[:, None]
                chunk_mask = torch.arange(s.context, device=self.device)[None, :] <= q_pos
            plan["chunks"].append((s.start, s.length, slots, chunk_mask))
        return plan

    def _dtype(self) -> torch.dtype:
        return self.kv_cache[0].dtype

    def _attend(
        self,
        q: torch.Tensor,
        kv_cache: torch.Tensor,
        plan: dict[str, Any],
        scale: float,
    ) -> torch.Tensor:
        rows = plan["rows"]
        gqa = self.num_kv_heads != self.num_heads
        if isinstance(rows, int) and rows == q.shape[0]:  # all decodes: no scatter needed
            return self._attend_decodes(q, kv_cache, plan, scale, gqa)
        out = torch.empty_like(q)  # [T, heads, D]
        if isinstance(rows, int):
            out[:rows] = self._attend_decodes(q[:rows], kv_cache, plan, scale, gqa)
        elif rows is not None:
            o = self._attend_decodes(q.index_select(0, rows), kv_cache, plan, scale, gqa)
            out.index_copy_(0, rows, o)
        for start, length, slots, mask in plan["chunks"]:
            qs = q[start : start + length].transpose(0, 1)[None]  # [1, heads, n, D]
            kv = kv_cache.index_select(0, slots)  # [ctx, 2, kv, D]
            ks = kv[:, 0].transpose(0, 1)[None]  # [1, kv, ctx, D]
            vs = kv[:, 1].transpose(0, 1)[None]
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

    def _attend_decodes(
        self,
        q: torch.Tensor,
        kv_cache: torch.Tensor,
        plan: dict[str, Any],
        scale: float,
        gqa: bool,
    ) -> torch.Tensor:
        """One query token per sequence over its cached context: ``[B, heads, D]``."""
        count = q.shape[0]
        kv = kv_cache.index_select(0, plan["slots"]).view(
            count, plan["length"], 2, -1, self.head_dim
        )
        ks = kv[:, :, 0].transpose(1, 2)  # [B, kv, L, D]
        vs = kv[:, :, 1].transpose(1, 2)
        o = sdpa(q[:, :, None, :], ks, vs, attn_mask=plan["mask"], scale=scale, enable_gqa=gqa)
        return o[:, :, 0, :]

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


_DYNAMIC_ROPE = frozenset({"dynamic", "longrope"})
_FEW_ROWS = 16


def _rope_limit(config: Any) -> int:
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def _norm_weights(norm: Any) -> tuple[torch.Tensor, float]:
    eps: Any = getattr(norm, "variance_epsilon", None)
    if eps is None:
        eps = getattr(norm, "eps", None) or 1e-6
    return norm.weight, float(eps)


def _rms(x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
    """RMSNorm as Llama computes it (float32 statistics), in fewer operations."""
    weight, eps = norm
    if x.dtype == torch.float32:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``linear(x, weight, bias)``; one row runs as a matrix-vector product (same result, less
    overhead than a one-row GEMM)."""
    if x.shape[0] != 1:
        return linear(x, weight, bias)
    row = x.reshape(-1)
    out = torch.mv(weight, row) if bias is None else torch.addmv(bias, weight, row)
    return out[None]


def _fused(linears: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for ``linears`` stacked by output; each linear's parameters become
    views of it, so the model's own modules still work and nothing is stored twice."""
    weight = torch.cat([m.weight for m in linears])
    biases = [m.bias for m in linears]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat(
            [
                b if b is not None else weight.new_zeros(m.out_features)
                for m, b in zip(linears, biases, strict=True)
            ]
        )
    start = 0
    for m in linears:
        end = start + m.out_features
        m.weight.data = weight[start:end]
        if m.bias is not None and bias is not None:
            m.bias.data = bias[start:end]
        start = end
    return weight, bias


def _fuse_layer(layer: Any) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    qkv, qkv_bias = _fused([attn.q_proj, attn.k_proj, attn.v_proj])
    gate_up, gate_up_bias = _fused([mlp.gate_proj, mlp.up_proj])
    norms = (attn.q_norm, attn.k_norm) if hasattr(attn, "q_norm") else None
    return _Layer(
        qkv=qkv,
        qkv_bias=qkv_bias,
        o=attn.o_proj.weight,
        o_bias=attn.o_proj.bias,
        gate_up=gate_up,
        gate_up_bias=gate_up_bias,
        down=mlp.down_proj.weight,
        down_bias=mlp.down_proj.bias,
        norm1=_norm_weights(layer.input_layernorm),
        norm2=_norm_weights(layer.post_attention_layernorm),
        act=mlp.act_fn,
        scale=float(attn.scaling),
        qk_norms=norms,
    )


__all__ = ["SUPPORTED_MODEL_TYPES", "PagedDecoder", "SeqSlice", "StepBatch"]
