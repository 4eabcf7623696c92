"""A padding-free forward pass for BERT-family sentence-transformers.

A merged batch pads every text to its longest, and a transformer's linear layers, which are
most of its time, then compute on the padding as well. On 16 random SciFact queries, 44% of the
padded tokens were padding (352 real tokens against 632 padded). sentence-transformers removes
padding only with flash attention's variable-length kernels, which are GPU-only.

Here a batch's real tokens are packed into one ``(tokens, hidden)`` matrix. The linear layers,
layer norms, activations and pooling run on that matrix. Only attention scatters the tokens back
into a padded ``(batch, heads, length, head_dim)`` view, with a key-padding mask. It uses the
same modules and weights as the model's own forward, so the vectors equal
``SentenceTransformer.encode``'s to float tolerance.

It applies to ``Transformer(BertModel) → Pooling(mean | cls) [→ Normalize]``, which covers
MiniLM, bge and e5. For any other stack, :func:`unpadded_plan` returns ``None`` and the caller
keeps ``encode``.

Example:
    >>> from sentence_transformers import SentenceTransformer  # doctest: +SKIP
    >>> from gl_retrieval.models import resolve_model_path      # doctest: +SKIP
    >>> st = SentenceTransformer(resolve_model_path("packaged:all-MiniLM-L6-v2"))  # doctest: +SKIP
    >>> plan = unpadded_plan(st)                                # doctest: +SKIP
    >>> plan.encode(["what is BM25?"], batch_size=64, normalize=True).shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["UnpaddedEncoder", "unpadded_plan"]


def unpadded_plan(st_model: Any, *, lock: Any = None) -> UnpaddedEncoder | None:
    """An :class:`UnpaddedEncoder` for ``st_model``, or ``None`` if its stack is not one this
    module reproduces exactly. ``lock`` guards the tokenizer (share it with every other user
    of the same tokenizer)."""
    from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers.models.bert.modeling_bert import BertModel

    mods = list(st_model)
    if not (2 <= len(mods) <= 3):
        return None
    head, pool = mods[0], mods[1]
    if type(head) is not Transformer or type(pool) is not Pooling:
        return None
    if len(mods) == 3 and type(mods[2]) is not Normalize:
        return None
    bert = getattr(head, "auto_model", None)
    if type(bert) is not BertModel:
        return None
    cfg = bert.config
    if cfg.is_decoder or getattr(cfg, "add_cross_attention", False):
        return None
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        return None
    mode = getattr(pool, "pooling_mode", None)
    if mode not in ("mean", "cls") or not getattr(pool, "include_prompt", True):
        return None
    if getattr(st_model, "truncate_dim", None) is not None:
        return None
    return UnpaddedEncoder(
        st=st_model,
        bert=bert,
        pooling=mode,
        normalizes=len(mods) == 3,
        tokenize_lock=lock if lock is not None else threading.Lock(),
    )


@dataclass
class UnpaddedEncoder:
    """Encodes with the model's own modules, on packed tokens (see the module docstring)."""

    st: Any
    bert: Any
    pooling: str  # "mean" | "cls"
    normalizes: bool  # the model ends in a Normalize layer
    # A fast tokenizer's Rust object refuses concurrent calls ("Already borrowed") when one
    # of them changes its truncation settings; the forward itself is thread-safe.
    tokenize_lock: Any = field(default_factory=threading.Lock, compare=False)

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int,
        normalize: bool,
        progress: Any = None,
    ) -> np.ndarray:
        """Embeddings of ``texts`` as float32 ``(len(texts), dim)``, in input order.

        Texts are sorted by length and taken ``batch_size`` at a time, as
        ``SentenceTransformer.encode`` takes them. ``normalize`` applies L2 normalisation
        (the model's own Normalize layer always applies). ``progress(n)`` is called after each
        batch with the number of texts done.
        """
        import torch

        texts = list(texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # as encode() sorts
        out: np.ndarray | None = None
        with torch.inference_mode():
            for start in range(0, len(texts), max(1, batch_size)):
                idx = order[start : start + batch_size]
                vecs = self._batch([texts[i] for i in idx])
                if self.normalizes or normalize:
                    vecs = torch.nn.functional.normalize(vecs, p=2, dim=1)
                arr = vecs.float().cpu().numpy()
                if out is None:
                    out = np.empty((len(texts), arr.shape[1]), dtype=np.float32)
                out[idx] = arr
                if progress is not None:
                    progress(len(idx))
        if out is None:
            dim = int(self.bert.config.hidden_size)
            return np.zeros((0, dim), dtype=np.float32)
        return out

    def _batch(self, texts: list[str]) -> Any:
        import torch
        import torch.nn.functional as F

        with self.tokenize_lock:
            feats = self.st.preprocess(texts)
        dev = self.bert.device
        ids = feats["input_ids"].to(dev)
        mask = feats["attention_mask"].to(dev).bool()
        types = feats.get("token_type_ids")
        types = types.to(dev) if types is not None else None
        b, length = ids.shape
        emb = self.bert.embeddings(input_ids=ids, token_type_ids=types)  # (b, L, h): cheap
        flat = mask.reshape(-1).nonzero().squeeze(1)  # packed positions in the (b*L) grid
        h = emb.reshape(b * length, -1).index_select(0, flat)  # (tokens, h)
        hidden = h.shape[1]
        key_mask = mask[:, None, None, :]  # attend to real keys only

        def padded(x: Any, heads: int) -> Any:  # packed (tokens, h) -> (b, heads, L, h/heads)
            grid = x.new_zeros(b * length, x.shape[1])
            grid.index_copy_(0, flat, x)
            return grid.view(b, length, heads, -1).transpose(1, 2)

        for layer in self.bert.encoder.layer:
            att = layer.attention
            sa = att.self
            n = sa.num_attention_heads
            q, k, v = padded(sa.query(h), n), padded(sa.key(h), n), padded(sa.value(h), n)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=sa.scaling)
            ctx = ctx.transpose(1, 2).reshape(b * length, hidden).index_select(0, flat)
            h = att.output(ctx, h)
            h = layer.output(layer.intermediate(h), h)
        lens = mask.sum(1)
        if self.pooling == "cls":
            firsts = torch.cumsum(lens, 0) - lens
            return h.index_select(0, firsts)
        seq = torch.repeat_interleave(torch.arange(b, device=dev), lens)
        sums = h.new_zeros(b, hidden).index_add_(0, seq, h)
        return sums / lens[:, None].to(h.dtype)
