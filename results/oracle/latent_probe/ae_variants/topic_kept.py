"""Share of decodes of the encoder's z that keep the source block's topic (96 held-out
blocks, sampling seed 0, Ndisc 4 and 16; topic = argmax of the oracle's posterior; chance
1/8), with the decodes' oracle NLL and purity. Run from the root of a clone whose
runs/oracle holds the pipeline:
python results/oracle/latent_probe/ae_variants/topic_kept.py AE_CKPT"""

import dataclasses
import json
import sys

from diladiff_cli.analysis.latent_analysis import same_topic, topics_of
from diladiff_cli.data import decode_blocks, load_blocks, load_data_info
from diladiff_cli.hub import load_tokenizer
from diladiff_cli.oracle import load_oracle
from diladiff_cli.pipeline import Pipeline

pipe = Pipeline.load("recipes/oracle/default.yaml", device="cpu")
pipe = dataclasses.replace(pipe, parts={**pipe.parts, "autoencoder": sys.argv[1]})
info = load_data_info("runs/oracle/data")
tokens = load_blocks("runs/oracle/data", "valid").tokens(list(range(96)))
texts = decode_blocks(load_tokenizer(info.tokenizer_dir), tokens, skip_special_tokens=True)
oracle = load_oracle("runs/oracle/data")
source = topics_of(oracle, texts)
z = pipe.encode(texts)
out = {"autoencoder": sys.argv[1]}
for ndisc in (4, 16):
    decoded = pipe.decode(z, ndisc=ndisc, seed=0, batch_size=48)
    kept = same_topic(topics_of(oracle, list(decoded)), source).mean()
    score = pipe.score(decoded).oracle
    out[ndisc] = {"topic_kept": float(kept), "nll": score.nll_per_token, "purity": score.purity}
print(json.dumps(out))
