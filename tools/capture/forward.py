"""Gemma 3 forward pass in array code that runs on NumPy (CPU) or CuPy (CUDA).

The math follows llama.cpp's ``gemma3`` graph: embeddings scaled by sqrt(hidden);
per block a pre-attention RMSNorm, Q/K/V projections, RMSNorm of each query and key
head, NEOX-style RoPE (base 10k on sliding-window layers, the GGUF base on global
layers), causal (and sliding-window) attention with queries scaled by
query_pre_attn_scalar**-0.5, a post-attention RMSNorm, the residual add, a pre-FFN
RMSNorm, a GELU(tanh)-gated FFN, a post-FFN RMSNorm and the residual add; then the
final RMSNorm and the tied output embedding. GGUF norm weights already hold Gemma's
``1 + w`` and are used as stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import CaptureError
from .gguf_model import GgufFile, ModelConfig


def array_module(device: str):
    """Return numpy for ``cpu`` and cupy for ``cuda``."""
    if device == "cpu":
        return np
    if device == "cuda":
        try:
            import cupy
        except ImportError as exc:
            raise CaptureError("--device cuda needs CuPy (pip install cupy-cuda13x or similar)") from exc
        return cupy
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


@dataclass
class LayerWeights:
    """The float32 weights of one transformer block, matrices stored [out, in]."""

    attn_norm: object
    wq: object
    wk: object
    wv: object
    q_norm: object
    k_norm: object
    wo: object
    post_attn_norm: object
    ffn_norm: object
    w_gate: object
    w_up: object
    w_down: object
    post_ffn_norm: object


@dataclass
class ForwardOutputs:
    """What one forward pass returns for a batch of B sequences of T tokens.

    ``hidden[L]``: [B, T, hidden] for each requested layer L (see ``Gemma3.forward``);
    ``q[L]``: [B, T, n_heads, head_dim], ``k[L]``/``v[L]``: [B, T, n_kv_heads, head_dim];
    ``final``: [B, T, hidden], the final-norm output that feeds the output embedding.
    """

    hidden: dict[int, object] = field(default_factory=dict)
    q: dict[int, object] = field(default_factory=dict)
    k: dict[int, object] = field(default_factory=dict)
    v: dict[int, object] = field(default_factory=dict)
    final: object = None


class Gemma3:
    """Gemma 3 weights on one device plus the forward pass.

    Args:
        gguf: the opened model file.
        device: ``cpu`` (NumPy) or ``cuda`` (CuPy).
    """

    def __init__(self, gguf: GgufFile, device: str = "cpu"):
        self.xp = array_module(device)
        self.config: ModelConfig = gguf.config()
        xp = self.xp

        def put(name: str):
            return xp.asarray(gguf.tensor(name))

        self.embedding = put("token_embd.weight")  # [vocab, hidden]
        self.output = put("output.weight") if gguf.has_tensor("output.weight") else self.embedding
        self.output_norm = put("output_norm.weight")
        self.layers = []
        for il in range(self.config.n_layers):
            p = f"blk.{il}."
            self.layers.append(
                LayerWeights(
                    attn_norm=put(p + "attn_norm.weight"),
                    wq=put(p + "attn_q.weight"),
                    wk=put(p + "attn_k.weight"),
                    wv=put(p + "attn_v.weight"),
                    q_norm=put(p + "attn_q_norm.weight"),
                    k_norm=put(p + "attn_k_norm.weight"),
                    wo=put(p + "attn_output.weight"),
                    post_attn_norm=put(p + "post_attention_norm.weight"),
                    ffn_norm=put(p + "ffn_norm.weight"),
                    w_gate=put(p + "ffn_gate.weight"),
                    w_up=put(p + "ffn_up.weight"),
                    w_down=put(p + "ffn_down.weight"),
                    post_ffn_norm=put(p + "post_ffw_norm.weight"),
                )
            )

    def _rms_norm(self, x, weight):
        xp = self.xp
        ms = xp.mean(x * x, axis=-1, keepdims=True)
        return x * (1.0 / xp.sqrt(ms + self.config.norm_eps)).astype(x.dtype) * weight

    def _rope_tables(self, n_positions: int, base: float):
        """cos/sin tables [T, head_dim/2] of NEOX RoPE for positions 0..T-1."""
        xp = self.xp
        half = self.config.head_dim // 2
        inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2.0 / self.config.head_dim)
        angles = np.arange(n_positions, dtype=np.float64)[:, None] * self.config.rope_scale * inv_freq
        return xp.asarray(np.cos(angles), dtype=xp.float32), xp.asarray(np.sin(angles), dtype=xp.float32)

    def _rope(self, x, cos, sin):
        """Rotate dimension pairs (i, i + head_dim/2) of x [B, T, H, D]."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        return self.xp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)

    def _mask(self, n_positions: int, sliding: bool):
        """Additive attention mask [T, T]: causal, plus the sliding window when asked."""
        xp = self.xp
        pos = xp.arange(n_positions)
        distance = pos[:, None] - pos[None, :]
        allowed = distance >= 0
        if sliding:
            allowed &= distance < self.config.sliding_window
        return xp.where(allowed, xp.float32(0.0), xp.float32(-xp.inf)).astype(xp.float32)

    def forward(self, tokens, hidden_layers=(), qkv_layers=()) -> ForwardOutputs:
        """Run the model on ``tokens`` [B, T] (int), positions 0..T-1 in each row.

        Hidden layer L in 1..n_layers-1 is the residual stream after the first L blocks
        (block index L-1, counting from 0); L == n_layers is the final-norm output. Q/K/V of
        layer L (1..n_layers) are those of block L-1: q and k after their RMSNorm and
        RoPE, before the attention scale; v as projected.
        """
        xp, cfg = self.xp, self.config
        tokens = xp.asarray(tokens)
        batch, n_pos = tokens.shape
        out = ForwardOutputs()
        x = self.embedding[tokens] * xp.float32(np.sqrt(cfg.hidden_size))
        ropes = {
            sliding: self._rope_tables(n_pos, cfg.rope_base_local if sliding else cfg.rope_base_global)
            for sliding in (True, False)
        }
        masks = {sliding: self._mask(n_pos, sliding) for sliding in (True, False)}
        for il, w in enumerate(self.layers):
            sliding = cfg.swa_layers[il]
            cos, sin = ropes[sliding]
            h = self._rms_norm(x, w.attn_norm)
            q = (h @ w.wq.T).reshape(batch, n_pos, cfg.n_heads, cfg.head_dim)
            k = (h @ w.wk.T).reshape(batch, n_pos, cfg.n_kv_heads, cfg.head_dim)
            v = (h @ w.wv.T).reshape(batch, n_pos, cfg.n_kv_heads, cfg.head_dim)
            q = self._rope(self._rms_norm(q, w.q_norm), cos, sin)
            k = self._rope(self._rms_norm(k, w.k_norm), cos, sin)
            if il + 1 in qkv_layers:
                out.q[il + 1], out.k[il + 1], out.v[il + 1] = q, k, v
            attn = self._attention(q * xp.float32(cfg.attention_scale), k, v, masks[sliding])
            attn = attn.reshape(batch, n_pos, cfg.n_heads * cfg.head_dim) @ w.wo.T
            x = x + self._rms_norm(attn, w.post_attn_norm)
            h = self._rms_norm(x, w.ffn_norm)
            ffn = (_gelu_tanh(xp, h @ w.w_gate.T) * (h @ w.w_up.T)) @ w.w_down.T
            x = x + self._rms_norm(ffn, w.post_ffn_norm)
            if il + 1 in hidden_layers and il + 1 < cfg.n_layers:
                out.hidden[il + 1] = x
        out.final = self._rms_norm(x, self.output_norm)
        if cfg.n_layers in hidden_layers:
            out.hidden[cfg.n_layers] = out.final
        return out

    def _attention(self, q, k, v, mask):
        """Grouped-query attention: q [B,T,H,D], k/v [B,T,Hkv,D] -> [B,T,H,D]."""
        xp, cfg = self.xp, self.config
        batch, n_pos = q.shape[:2]
        group = cfg.n_heads // cfg.n_kv_heads
        qg = q.reshape(batch, n_pos, cfg.n_kv_heads, group, cfg.head_dim).transpose(0, 2, 3, 1, 4)
        kt = k.transpose(0, 2, 3, 1)[:, :, None]  # [B, Hkv, 1, D, T]
        scores = qg @ kt + mask  # [B, Hkv, G, T, T]
        scores -= scores.max(axis=-1, keepdims=True)
        probs = xp.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        ctx = probs @ v.transpose(0, 2, 1, 3)[:, :, None]  # [B, Hkv, G, T, D]
        return ctx.transpose(0, 3, 1, 2, 4).reshape(batch, n_pos, cfg.n_heads, cfg.head_dim)

    def logits(self, final_rows):
        """Full-vocabulary logits [N, vocab] of final-norm rows [N, hidden]."""
        xp, cfg = self.xp, self.config
        z = final_rows @ self.output.T
        if cfg.final_logit_softcap:
            cap = xp.float32(cfg.final_logit_softcap)
            z = xp.tanh(z / cap) * cap
        return z


def _gelu_tanh(xp, x):
    """GELU, tanh approximation (as Gemma and ggml use)."""
    c = xp.float32(np.sqrt(2.0 / np.pi))
    return 0.5 * x * (1.0 + xp.tanh(c * (x + xp.float32(0.044715) * x * x * x)))
