"""COMET scorer run as a subprocess in an environment that has unbabel-comet.

COMET pins its own versions of transformers and torch, so mtforget does not import it. It runs
this file with the other environment's interpreter. The script uses only the standard library and
``comet``, and follows a small protocol that any stand-in scorer can follow too:

    PYTHON comet_score.py --checkpoint CKPT --input IN.jsonl --output OUT.jsonl [--batch-size N] [--gpus G]

``IN.jsonl`` holds one ``{"src", "mt", "ref"}`` object per line. ``OUT.jsonl`` receives one
``{"score": float}`` per input line, in the same order. The exit status is 0 on success; on failure
the reason goes to stderr. Inputs are scored in length-sorted batches.
"""

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--gpus", type=int, default=0)
    args = parser.parse_args()
    try:
        from comet import load_from_checkpoint
    except ImportError:
        sys.stderr.write(f"{sys.executable} has no unbabel-comet (pip install unbabel-comet there)\n")
        return 3
    with open(args.input, encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
    order = sorted(range(len(items)), key=lambda i: len(items[i]["src"]) + len(items[i]["mt"]))
    model = load_from_checkpoint(args.checkpoint)
    output = model.predict([items[i] for i in order], batch_size=args.batch_size, gpus=args.gpus,
                           progress_bar=False)
    scores = [0.0] * len(items)
    for i, score in zip(order, output.scores):
        scores[i] = float(score)
    with open(args.output, "w", encoding="utf-8") as f:
        for score in scores:
            f.write(json.dumps({"score": score}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
