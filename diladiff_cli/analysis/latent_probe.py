"""What the autoencoder's latent z carries, on the oracle corpus (``scripts/latent_probe.py``).

Two measurements on held-out (valid) blocks, each with its standard error over blocks:

1. :func:`compare_nelbo`: the validation NELBO per token (MDLM's continuous-time bound,
   :class:`~diladiff_cli.ae.AutoencoderLoss` / :class:`~diladiff_cli.diffusion.masked.
   MaskedDiffusionLoss`, the objectives ``train.evaluate`` and experiment 1 use) of the
   autoencoder's decoder given the encoder's z, the null latent and another block's z;
   of the perfect-latent bound's decoder given the true topic, the null latent and
   another block's topic; and of the base MDLM. Every model sees the same times and
   masks on every block (:func:`block_nelbos`), so differences are paired per block.
2. :func:`ridge_probe` on the encoder's latents (the ``encode`` shards: train to fit,
   valid to test), for labels :func:`block_labels` reads off the oracle: the block's
   topic, the word class at each position, and the scene of each topic-class word.
   Each beside the majority-class baseline (per position, from the training labels).

The probe is closed-form ridge regression onto one-hot targets (argmax of the
prediction), on the flattened z standardised with the training statistics; the ridge is
picked from a grid on a held-out fifth of the training latents, then refitted on all of
them. A missing label (a position without a scene) is an all-zero target row: the
regression then fits p(label, labelled | z), whose argmax over the labels is that of
p(label | labelled, z); accuracy counts labelled positions only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diladiff_cli.ae import LoadedAutoencoder
from diladiff_cli.diffusion.masked import MaskedDiffusionLoss
from diladiff_cli.encoder import OracleTopicBlocks
from diladiff_cli.mdlm import LoadedMDLM, TokenBlocks
from diladiff_cli.objective import StepContext
from diladiff_cli.oracle import CLASSES, TOPIC_CLASSES, Oracle, words_of

BATCH = 32  # the virtual batch whose antithetic times each block's noise comes from
# train.evaluate draws its noise from seed + 7919: the same offset here gives the same
# times and masks as its NELBO (tests/test_latent_probe.py checks the means agree).
EVAL_SEED_OFFSET = 7919
RIDGES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # times the number of training rows
HOLDOUT = 0.2  # share of the training latents that picks the ridge


@dataclass(frozen=True)
class BlockEstimate:
    """A mean over blocks and its standard error (sample std / sqrt(n)).

    Attributes:
        mean: the mean.
        se: its standard error (nan for one block).
        n: blocks.
    """

    mean: float
    se: float
    n: int

    @classmethod
    def of(cls, values: np.ndarray) -> BlockEstimate:
        v = np.asarray(values, dtype=np.float64)
        se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        return cls(mean=float(v.mean()), se=se, n=len(v))


# ----------------------------------------------------------------------------- NELBO


def block_nelbos(
    model: nn.Module,
    objective: Any,
    data: Any,
    indices: np.ndarray,
    *,
    other: np.ndarray | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """The objective's metrics of each block on its own, with ``train.evaluate``'s noise.

    Block ``indices[k]`` is scored as example ``k % 32`` of virtual batch ``k // 32``: the
    noise of a :class:`StepContext` is drawn for the whole global batch and indexed, so a
    block alone gets the times and masks it gets inside the batch, and the per-token NELBO
    of a batch is the mean of its blocks'. With ``indices = arange(n)`` the mean over
    blocks is ``train.evaluate``'s NELBO on those blocks.

    Args:
        model: the network the objective calls (eval mode).
        objective: ``objective(model, batch, ctx)`` -> ``LossOutput``.
        data: an ExampleSource (``batch(indices)``).
        indices: ``(n,)`` the blocks.
        other: ``(n,)`` when given, block ``indices[k]`` is decoded given the latent (the
            encoder view or the states) of block ``other[k]``.
        seed: the evaluation seed (``train.evaluate``'s ``seed``).
        device: where the model runs.

    Returns:
        Metric name -> ``(n,)`` values (``nelbo``; the autoencoder's objective also
        ``nelbo_null``, the null latent on the same noise).
    """
    model.eval()
    rows: dict[str, list[float]] = {}
    with torch.no_grad():
        for k, block in enumerate(indices):
            batch = data.batch(np.asarray([block]))
            if other is not None:
                donor = data.batch(np.asarray([other[k]]))
                batch = dataclasses.replace(
                    batch, enc_ids=donor.enc_ids, enc_mask=donor.enc_mask, states=donor.states
                )
            ctx = StepContext(
                seed=seed + EVAL_SEED_OFFSET,
                step=k // BATCH,
                index=torch.tensor([k % BATCH]),
                global_batch=BATCH,
                device=device,
            )
            out = objective(model, batch.to(torch.device(device)), ctx)
            for name, value in out.metrics.items():
                rows.setdefault(name, []).append(float(value))
    return {name: np.asarray(v) for name, v in rows.items()}


@dataclass
class NelboComparison:
    """Validation NELBO (nats/token) of the decoders on the same blocks, times and masks.

    Attributes:
        blocks: held-out blocks scored (the first ones).
        nelbo: decoder -> its mean over blocks (``ae_z``, ``ae_null``, ``ae_other_z``,
            ``bound_topic``, ``bound_null``, ``bound_other_topic``, ``mdlm``).
        differences: ``"a - b"`` -> the paired per-block difference.
        other_same_topic: share of blocks whose "other" block has the same topic (the
            bound's ``bound_other_topic`` is then its own topic).
    """

    blocks: int
    nelbo: dict[str, BlockEstimate]
    differences: dict[str, BlockEstimate]
    other_same_topic: float


DIFFERENCES = (
    ("ae_null", "ae_z"),  # what z buys the autoencoder's decoder
    ("ae_other_z", "ae_z"),  # what of it is this block's own
    ("bound_null", "bound_topic"),  # what the true topic buys the bound's decoder
    ("bound_other_topic", "bound_topic"),
    ("bound_topic", "ae_z"),  # > 0: z carries more than the topic
    ("mdlm", "ae_null"),
    ("mdlm", "bound_topic"),
)


def compare_nelbo(
    ae: LoadedAutoencoder,
    bound: LoadedAutoencoder,
    mdlm: LoadedMDLM | None,
    oracle: Oracle,
    *,
    data_dir: str,
    blocks: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> NelboComparison:
    """Validation NELBO of the autoencoder and the bound (each given its latent, the null
    latent and another block's latent) and of the base MDLM, on the first ``blocks``
    valid blocks; "another block" is the next one (block k gets block k + 1's latent).

    Args:
        ae: the autoencoder (its encoder reads the text).
        bound: the perfect-latent bound (``is_bound``: its states are the true topic).
        mdlm: the base MDLM, or None to leave its row out.
        oracle: the data's oracle (the bound's topics).
        data_dir: the prepared oracle data.
        blocks: how many valid blocks.
        seed: the evaluation seed.
        device: where the models run.
    """
    ae_data = ae.blocks(data_dir, "valid")
    topic_data = OracleTopicBlocks(
        data_dir=data_dir, split="valid", decoder_tokenizer=bound.decoder_tokenizer, oracle=oracle
    )
    n = min(blocks, len(ae_data))
    idx = np.arange(n)
    shifted = np.roll(idx, -1)
    kw = dict(seed=seed, device=device)

    own = block_nelbos(ae.model, ae.objective(), ae_data, idx, **kw)
    swap = block_nelbos(ae.model, ae.objective(), ae_data, idx, other=shifted, **kw)
    b_own = block_nelbos(bound.model, bound.objective(), topic_data, idx, **kw)
    b_swap = block_nelbos(bound.model, bound.objective(), topic_data, idx, other=shifted, **kw)
    per_block = {
        "ae_z": own["nelbo"],
        "ae_null": own["nelbo_null"],
        "ae_other_z": swap["nelbo"],
        "bound_topic": b_own["nelbo"],
        "bound_null": b_own["nelbo_null"],
        "bound_other_topic": b_swap["nelbo"],
    }
    if mdlm is not None:
        plain = MaskedDiffusionLoss(schedule=mdlm.schedule, mask_id=ae.mask_id)
        per_block["mdlm"] = block_nelbos(
            mdlm.model, plain, TokenBlocks(data_dir, "valid"), idx, **kw
        )["nelbo"]
    topics = topic_data.topics(idx)
    return NelboComparison(
        blocks=n,
        nelbo={k: BlockEstimate.of(v) for k, v in per_block.items()},
        differences={
            f"{a} - {b}": BlockEstimate.of(per_block[a] - per_block[b])
            for a, b in DIFFERENCES
            if a in per_block and b in per_block
        },
        other_same_topic=float((topics == topics[shifted]).mean()),
    )


# ----------------------------------------------------------------------------- labels


@dataclass
class BlockLabels:
    """What the oracle says about each block's words.

    Attributes:
        topic: ``(n,)`` argmax of the oracle's posterior p(topic | words).
        word_class: ``(n, P)`` index into :data:`~diladiff_cli.oracle.CLASSES` of the word
            at each position (P = the longest block's words); -1 past a block's end or
            at a word outside the vocabulary.
        scene: ``(n, P)`` the scene of each topic-class word of the block's topic (the
            scene whose lexicon holds it); -1 at shared-class and off-topic words.
        bag: ``(n, W)`` bool, which topic-class words (agents, things, places, verbs,
            adjectives of every theme, in vocabulary order) occur in the block, anywhere.
    """

    topic: np.ndarray
    word_class: np.ndarray
    scene: np.ndarray
    bag: np.ndarray


def scene_table(oracle: Oracle) -> np.ndarray:
    """``(K, V)`` the scene of each word under each topic: the scene whose emission gives
    the word the most mass (a theme's words are dealt to the scenes, the floor aside);
    -1 for shared-class words and words of another theme."""
    m = int(oracle.config.get("num_scenes", 1))
    per_scene = len(oracle.states) // m  # grammar states per scene
    table = np.full((oracle.num_topics, oracle.vocab_size), -1, dtype=np.int64)
    for c in (CLASSES.index(name) for name in TOPIC_CLASSES):
        states = np.flatnonzero(oracle.state_class == c)
        first = [int(states[states // per_scene == k][0]) for k in range(m)]  # one per scene
        words = oracle.class_words[c]
        for z in range(oracle.num_topics):
            mass = np.stack([oracle.emissions[z][s] for s in first])  # (m, len(words))
            mine = oracle.word_theme[words] == oracle.topics[z]
            table[z, words[mine]] = mass[:, mine].argmax(0)
    return table


def block_labels(oracle: Oracle, texts: list[str]) -> BlockLabels:
    """The topic, word classes and scenes of blocks given as texts (see :class:`BlockLabels`)."""
    docs = [words_of(t) for t in texts]
    topic = oracle.score(docs).posterior.argmax(1)  # (n,)
    width = max(len(d) for d in docs)
    word_class = np.full((len(docs), width), -1, dtype=np.int64)
    scene = np.full((len(docs), width), -1, dtype=np.int64)
    scenes = scene_table(oracle)
    content = np.flatnonzero(oracle.word_theme >= 0)  # (W,) the topic-class words
    column = np.full(oracle.vocab_size + 1, -1, dtype=np.int64)
    column[content] = np.arange(len(content))
    bag = np.zeros((len(docs), len(content)), dtype=bool)
    for i, doc in enumerate(docs):
        ids = oracle.encode(doc)
        known = ids < oracle.vocab_size
        word_class[i, : len(ids)][known] = oracle.word_class[ids[known]]
        scene[i, : len(ids)][known] = scenes[topic[i], ids[known]]
        cols = column[ids]
        bag[i, cols[cols >= 0]] = True
    return BlockLabels(topic=topic, word_class=word_class, scene=scene, bag=bag)


# ----------------------------------------------------------------------------- probes


@dataclass
class ProbeResult:
    """A linear probe's held-out accuracy beside the majority-class baseline.

    Attributes:
        accuracy: per test block, the share of its labelled positions predicted right;
            mean and standard error over blocks.
        baseline: the same for the per-position majority class of the training labels.
        train_accuracy: the probe's accuracy on its training latents.
        ridge: the chosen ridge (times the training rows).
        num_classes: labels.
        positions: positions per block (1 for a block-level label).
        per_position: held-out accuracy at each position (nan where none is labelled).
        baseline_per_position: the baseline's.
    """

    accuracy: BlockEstimate
    baseline: BlockEstimate
    train_accuracy: float
    ridge: float
    num_classes: int
    positions: int
    per_position: list[float]
    baseline_per_position: list[float]


def _block_accuracy(pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-block accuracy over labelled positions (blocks with none dropped) and the
    accuracy over every labelled entry."""
    lab = y >= 0
    hit = (pred == y) & lab
    keep = lab.any(1)
    return hit.sum(1)[keep] / lab.sum(1)[keep], float(hit.sum() / max(lab.sum(), 1))


class _Ridge:
    """Ridge regression from standardised features onto targets ``(n, T)`` (intercept by
    centring), solved in closed form in float64."""

    def __init__(self, x: torch.Tensor, t: torch.Tensor, *, ridge: float):
        x = x.double()
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-8)
        xs = (x - self.mean) / self.std  # (n, F)
        t = t.double()
        self.bias = t.mean(0)
        gram = xs.T @ xs + ridge * len(xs) * torch.eye(xs.shape[1], dtype=torch.float64)
        self.weight = torch.linalg.solve(gram, xs.T @ (t - self.bias))  # (F, T)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.std) @ self.weight + self.bias  # (n, T)


def _one_hot(y: np.ndarray, num_classes: int) -> torch.Tensor:
    """``(n, P)`` labels -> ``(n, P * C)`` one-hot targets; a missing label (-1) is an
    all-zero row."""
    t = F.one_hot(torch.from_numpy(y).clamp_min(0), num_classes).double()  # (n, P, C)
    return (t * torch.from_numpy(y >= 0)[..., None]).flatten(1)


def _classify(fit: _Ridge, x: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    return fit(x).reshape(len(x), *shape).argmax(-1).numpy()  # (n, P)


def ridge_probe(
    x_train: torch.Tensor,
    y_train: np.ndarray,
    x_test: torch.Tensor,
    y_test: np.ndarray,
    *,
    num_classes: int,
    ridges: tuple[float, ...] = RIDGES,
) -> ProbeResult:
    """Fit a linear probe (ridge regression onto one-hot targets) and test it.

    Args:
        x_train: ``(n, F)`` training features (flattened latents).
        y_train: ``(n,)`` or ``(n, P)`` labels in ``[0, num_classes)``, -1 = none.
        x_test: ``(m, F)`` test features.
        y_test: ``(m,)`` or ``(m, P)`` test labels.
        num_classes: labels.
        ridges: the grid (times the rows), picked on the last fifth of the training rows.
    """
    y_train = y_train.reshape(len(y_train), -1)
    y_test = y_test.reshape(len(y_test), -1)
    cut = int(round(len(x_train) * (1 - HOLDOUT)))
    shape = (y_train.shape[1], num_classes)
    target = _one_hot(y_train, num_classes)
    scores = []
    for ridge in ridges:
        fit = _Ridge(x_train[:cut], target[:cut], ridge=ridge)
        scores.append(_block_accuracy(_classify(fit, x_train[cut:], shape), y_train[cut:])[1])
    ridge = ridges[int(np.argmax(scores))]
    probe = _Ridge(x_train, target, ridge=ridge)
    pred = _classify(probe, x_test, shape)
    acc, _ = _block_accuracy(pred, y_test)
    majority = np.asarray(
        [np.bincount(col[col >= 0], minlength=num_classes).argmax() for col in y_train.T]
    )  # (P,)
    guess = np.broadcast_to(majority, y_test.shape)
    base, _ = _block_accuracy(guess, y_test)
    lab = y_test >= 0
    with np.errstate(invalid="ignore"):
        per_position = ((pred == y_test) & lab).sum(0) / lab.sum(0)
        base_per_position = ((guess == y_test) & lab).sum(0) / lab.sum(0)
    return ProbeResult(
        accuracy=BlockEstimate.of(acc),
        baseline=BlockEstimate.of(base),
        train_accuracy=_block_accuracy(_classify(probe, x_train, shape), y_train)[1],
        ridge=float(ridge),
        num_classes=num_classes,
        positions=y_test.shape[1],
        per_position=[float(a) for a in per_position],
        baseline_per_position=[float(a) for a in base_per_position],
    )


@dataclass
class BagProbeResult:
    """Which topic-class words a block holds, read linearly off z.

    Recall@k: of a block's k distinct topic-class words, the share among the k words the
    scores rank first; mean and standard error over blocks.

    Attributes:
        recall: the probe's (ridge regression onto the presence vector).
        baseline_frequency: ranking by frequency over all training blocks.
        baseline_topic: ranking by frequency over the training blocks of the block's true
            topic: all that a latent holding the topic alone can tell.
        train_recall: the probe's on its training latents.
        ridge: the chosen ridge (times the training rows).
        words: the topic-class vocabulary.
        distinct_words: mean k over test blocks.
    """

    recall: BlockEstimate
    baseline_frequency: BlockEstimate
    baseline_topic: BlockEstimate
    train_recall: float
    ridge: float
    words: int
    distinct_words: float


def _recall_at_k(scores: np.ndarray, bag: np.ndarray) -> np.ndarray:
    """Per block with any word, recall@k of ``scores`` ``(n, W)`` against ``bag``."""
    order = np.argsort(-scores, axis=1, kind="stable")
    k = bag.sum(1)
    out = [bag[i, order[i, : k[i]]].mean() for i in range(len(bag)) if k[i] > 0]
    return np.asarray(out)


def bag_probe(
    x_train: torch.Tensor,
    labels_train: BlockLabels,
    x_test: torch.Tensor,
    labels_test: BlockLabels,
    *,
    num_topics: int,
    ridges: tuple[float, ...] = RIDGES,
) -> BagProbeResult:
    """Fit ridge regression from ``(n, F)`` features onto the blocks' word presence and
    rank the words by it (see :class:`BagProbeResult`)."""
    bag_train, bag_test = labels_train.bag, labels_test.bag
    target = torch.from_numpy(bag_train).double()
    cut = int(round(len(x_train) * (1 - HOLDOUT)))
    scores = []
    for ridge in ridges:
        fit = _Ridge(x_train[:cut], target[:cut], ridge=ridge)
        scores.append(_recall_at_k(fit(x_train[cut:]).numpy(), bag_train[cut:]).mean())
    ridge = ridges[int(np.argmax(scores))]
    probe = _Ridge(x_train, target, ridge=ridge)
    freq = bag_train.mean(0)  # (W,)
    per_topic = np.stack(
        [
            bag_train[labels_train.topic == k].mean(0) if (labels_train.topic == k).any() else freq
            for k in range(num_topics)
        ]
    )  # (K, W)
    return BagProbeResult(
        recall=BlockEstimate.of(_recall_at_k(probe(x_test).numpy(), bag_test)),
        baseline_frequency=BlockEstimate.of(
            _recall_at_k(np.broadcast_to(freq, bag_test.shape), bag_test)
        ),
        baseline_topic=BlockEstimate.of(_recall_at_k(per_topic[labels_test.topic], bag_test)),
        train_recall=float(_recall_at_k(probe(x_train).numpy(), bag_train).mean()),
        ridge=float(ridge),
        words=bag_train.shape[1],
        distinct_words=float(bag_test.sum(1).mean()),
    )


def probe_latents(
    z_train: torch.Tensor,
    labels_train: BlockLabels,
    z_test: torch.Tensor,
    labels_test: BlockLabels,
    *,
    num_topics: int,
    num_scenes: int,
) -> dict[str, ProbeResult | BagProbeResult]:
    """The topic, word-class and scene probes of latents ``(n, N, D)`` (flattened).

    Returns:
        ``topic``, ``word_class`` and ``scene`` (left out with a single scene) as
        :class:`ProbeResult`; ``bag`` (the words, not their places) as
        :class:`BagProbeResult`.
    """
    x_train, x_test = z_train.flatten(1), z_test.flatten(1)
    out: dict[str, ProbeResult | BagProbeResult] = {
        "topic": ridge_probe(
            x_train, labels_train.topic, x_test, labels_test.topic, num_classes=num_topics
        ),
        "word_class": ridge_probe(
            x_train,
            labels_train.word_class,
            x_test,
            labels_test.word_class,
            num_classes=len(CLASSES),
        ),
    }
    if num_scenes > 1:
        out["scene"] = ridge_probe(
            x_train, labels_train.scene, x_test, labels_test.scene, num_classes=num_scenes
        )
    out["bag"] = bag_probe(x_train, labels_train, x_test, labels_test, num_topics=num_topics)
    return out


# ----------------------------------------------------------------------------- the report


def probe_markdown(record: dict[str, Any]) -> str:
    """The tables of a :mod:`scripts/latent_probe.py` record."""

    def est(e: dict[str, Any], digits: int = 3) -> str:
        return f"{e['mean']:.{digits}f} ± {e['se']:.{digits}f}"

    nel = record["nelbo"]
    lines = [
        "# What the latent carries (oracle corpus)",
        "",
        f"Command: `{record['command']}`",
        "",
        f"## Validation NELBO (nats/token), {nel['blocks']} valid blocks, same times and masks",
        "",
        "Mean ± standard error over blocks. *Other block*: block k decoded given block k+1's "
        f"latent (for the bound, the same topic in {nel['other_same_topic']:.0%} of blocks).",
        "",
        "| decoder | latent | NELBO |",
        "|---|---|---|",
    ]
    names = {
        "ae_z": ("autoencoder", "encoder's z"),
        "ae_null": ("autoencoder", "null latent"),
        "ae_other_z": ("autoencoder", "other block's z"),
        "bound_topic": ("bound", "true topic's z"),
        "bound_null": ("bound", "null latent"),
        "bound_other_topic": ("bound", "other block's topic"),
        "mdlm": ("base MDLM", "none"),
    }
    for key, e in nel["nelbo"].items():
        lines.append(f"| {names[key][0]} | {names[key][1]} | {est(e)} |")
    lines += ["", "Paired differences (per block, then mean ± SE):", "", "| a - b | nats/token |"]
    lines.append("|---|---|")
    lines += [f"| {k} | {est(e)} |" for k, e in nel["differences"].items()]
    probes = record["probes"]
    lines += [
        "",
        f"## Linear probes on the encoder's z ({probes['settings']['method']})",
        "",
        f"Fitted on {probes['settings']['train_blocks']} train latents, tested on "
        f"{probes['settings']['test_blocks']} valid latents; accuracy per block (mean over "
        "its labelled positions), mean ± SE over blocks; baseline: the per-position "
        "majority class of the training labels.",
        "",
        "| label | classes | positions | probe | baseline | probe on train | ridge |",
        "|---|---|---|---|---|---|---|",
    ]
    results = dict(probes["results"])
    bag = results.pop("bag", None)
    for name, p in results.items():
        lines.append(
            f"| {name} | {p['num_classes']} | {p['positions']} | {est(p['accuracy'])} | "
            f"{est(p['baseline'])} | {p['train_accuracy']:.3f} | {p['ridge']:g} |"
        )
    if bag is not None:
        lines += [
            "",
            f"Which topic-class words a block holds (anywhere): recall@k of the k = "
            f"{bag['distinct_words']:.1f} distinct ones (of {bag['words']}) among the k "
            "ranked first.",
            "",
            "| ranking | recall@k |",
            "|---|---|",
            f"| probe on z (train {bag['train_recall']:.3f}, ridge {bag['ridge']:g}) | "
            f"{est(bag['recall'])} |",
            f"| word frequency in the block's true topic | {est(bag['baseline_topic'])} |",
            f"| word frequency overall | {est(bag['baseline_frequency'])} |",
        ]
    decodes = record.get("decodes")
    if decodes:
        lines += [
            "",
            "## Decodes of the encoder's z (no prior)",
            "",
            f"The first {decodes['blocks']} valid blocks encoded, then decoded given their z "
            "and given the null latent (the MDLM baseline of the sweeps), random selection, "
            "temperature 1; mean ± SE over the sampling seeds "
            f"{', '.join(map(str, decodes['seeds']))}. Oracle NLL per token (lower is "
            "better) and topic purity (the share of content words from the dominant topic).",
            "",
            "| Ndisc | tokens/pass | z: oracle NLL | null: oracle NLL | z: purity | null: purity |",
            "|---|---|---|---|---|---|",
        ]
        for row in decodes["rows"]:
            z, null = row["z"], row["null"]
            lines.append(
                f"| {row['ndisc']} | {row['tokens_per_pass']:g} | {est(z['nll'])} | "
                f"{est(null['nll'])} | {est(z['purity'])} | {est(null['purity'])} |"
            )
    return "\n".join(lines) + "\n"
