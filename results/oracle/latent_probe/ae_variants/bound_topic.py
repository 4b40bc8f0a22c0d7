"""Does the perfect-latent bound use its topic when it decodes in parallel? 96 topics (12 of
each of the 8), decoded by the clone's bound given the topic and given the null latent, at
Ndisc 4 and 16 (16 and 4 tokens per pass), sampling seeds 0, 1, 2; oracle NLL per word,
topic purity, and the share of decodes whose topic (argmax of the oracle's posterior) is
the one given (chance 1/8). Mean ± SE over the seeds. Run from the root of a clone whose
runs/oracle holds the pipeline:
python results/oracle/latent_probe/ae_variants/bound_topic.py runs/oracle/bound.pt OUT_JSON"""

import json
import statistics as st
import sys

import numpy as np
import torch

from diladiff_cli.ae import decode_latents, load_autoencoder
from diladiff_cli.analysis.latent_analysis import same_topic, topics_of, words_of
from diladiff_cli.data import decode_blocks
from diladiff_cli.encoder import topic_states
from diladiff_cli.oracle import load_oracle

bound = load_autoencoder(sys.argv[1], device=torch.device("cpu"))
oracle = load_oracle("runs/oracle/data")
given = torch.arange(96) % oracle.num_topics
states, mask = topic_states(given, num_topics=oracle.num_topics)
z = bound.model.encode(states, mask).float()
out = {"bound": sys.argv[1]}
for ndisc in (4, 16):
    for name, latent in (("topic", z), ("null", None)):
        nll, purity, kept = [], [], []
        for seed in (0, 1, 2):
            tokens = decode_latents(
                bound,
                latent,
                num=96,
                ndisc=ndisc,
                selection="random",
                generator=torch.Generator().manual_seed(seed),
            ).tokens
            texts = decode_blocks(bound.decoder_tokenizer, tokens, skip_special_tokens=True)
            score = oracle.score([words_of(t) for t in texts])
            nll.append(float(np.nanmean(score.nll_per_word)))
            purity.append(float(np.nanmean(score.purity)))
            kept.append(float(same_topic(topics_of(oracle, texts), given.numpy()).mean()))
        row = {
            k: [round(st.mean(v), 4), round(st.stdev(v) / 3**0.5, 4)]
            for k, v in (("nll", nll), ("purity", purity), ("topic_kept", kept))
        }
        out[f"ndisc{ndisc}_{name}"] = row
        print(ndisc, name, row, flush=True)
json.dump(out, open(sys.argv[2], "w"), indent=1)
