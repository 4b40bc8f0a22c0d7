"""Encode 96 held-out blocks with an autoencoder, decode them (no prior) at Ndisc 4 and 16,
3 seeds each; oracle NLL and topic purity. Run from the root of a clone whose runs/oracle
holds the pipeline: python results/oracle/latent_probe/ae_variants/decode_z.py AE_CKPT OUT_JSON"""

import dataclasses
import json
import statistics as st
import sys

from diladiff_cli.data import decode_blocks, load_blocks, load_data_info
from diladiff_cli.hub import load_tokenizer
from diladiff_cli.pipeline import Pipeline

pipe = Pipeline.load("recipes/oracle/default.yaml", device="cpu")
pipe = dataclasses.replace(pipe, parts={**pipe.parts, "autoencoder": sys.argv[1]})
info = load_data_info("runs/oracle/data")
texts = decode_blocks(
    load_tokenizer(info.tokenizer_dir),
    load_blocks("runs/oracle/data", "valid").tokens(list(range(96))),
    skip_special_tokens=True,
)
z = pipe.encode(texts)
out = {"autoencoder": sys.argv[1]}
for nd in (4, 16):
    nll, pur = [], []
    for seed in (0, 1, 2):
        s = pipe.score(pipe.decode(z, ndisc=nd, seed=seed, batch_size=48)).oracle
        nll.append(s.nll_per_token)
        pur.append(s.purity)
    out[nd] = dict(
        nll=st.mean(nll),
        nll_se=st.stdev(nll) / 3**0.5,
        purity=st.mean(pur),
        purity_se=st.stdev(pur) / 3**0.5,
    )
    print(nd, out[nd], flush=True)
json.dump(out, open(sys.argv[2], "w"), indent=1)
