"""How much of an autoencoder's raw latent (what its decoder's cross-attention reads) is the
topic: the between-topic share of the variance of the raw latents of 256 held-out blocks
(topic = argmax of the oracle's posterior of the block's words). Run from the root of a
clone whose runs/oracle holds the pipeline:
python results/oracle/latent_probe/ae_variants/topic_share.py AE_CKPT [AE_CKPT ...]"""

import json
import sys

import numpy as np
import torch

from diladiff_cli.ae import load_autoencoder
from diladiff_cli.analysis.latent_analysis import topics_of
from diladiff_cli.data import decode_blocks
from diladiff_cli.oracle import load_oracle

oracle = load_oracle("runs/oracle/data")
for path in sys.argv[1:]:
    ae = load_autoencoder(path, device=torch.device("cpu"))
    view = ae.blocks("runs/oracle/data", "valid").batch(np.arange(256))
    with torch.no_grad():
        raw = ae.model.raw_latents(ae.encoder(view.enc_ids, view.enc_mask), view.enc_mask)
    topic = topics_of(
        oracle, decode_blocks(ae.decoder_tokenizer, view.tokens, skip_special_tokens=True)
    )
    x = raw.reshape(len(raw), -1).double().numpy()
    centred = x - x.mean(0)
    total = (centred**2).sum(1).mean()
    between = sum(
        (topic == k).sum() * (centred[topic == k].mean(0) ** 2).sum() for k in np.unique(topic)
    ) / len(x)
    print(
        json.dumps(
            {
                "autoencoder": path,
                "topic_share_of_variance": round(float(between / total), 4),
                "rms_mean": round(float(np.sqrt((x.mean(0) ** 2).mean())), 4),
                "rms_deviation": round(float(np.sqrt(total / x.shape[1])), 4),
            }
        ),
        flush=True,
    )
