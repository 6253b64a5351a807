"""The learned judge's alternatives, on GPTFuzz's question-held-out `evaluate.csv`.

    python bench/judge_backbones.py --data-dir ../shared/datasets [--folder TRAINED_JUDGE]

- frozen: all-MiniLM-L6-v2 sentence embeddings of the response and of the request (frozen),
  features [response, request * response, cosine], logistic regression over C in
  {0.1, 1, 10, 100} chosen on 10% of the training questions held out;
- fine-tuned: the `learned` judge (`refusal-lens train-judge`), a cross-encoder fine-tuned
  end to end (pass its folder, or the default trained one is used).

Both train on `train.csv` (questions 0-79) and are scored on `evaluate.csv` (questions
80-99): accuracy against the human labels, the time each took, and the ratio of the two.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from refusal_lens.data.labelled import load_labelled
from refusal_lens.judges import make_judge
from refusal_lens.judges.compliance import SentenceEmbedder
from refusal_lens.judges.learned import default_judge


def features(embedder: SentenceEmbedder, rows: list) -> np.ndarray:
    model = embedder.model
    response = model.encode([r.response for r in rows], batch_size=32, normalize_embeddings=True)
    request = model.encode([r.prompt for r in rows], batch_size=32, normalize_embeddings=True)
    product = request * response
    return np.concatenate([response, product, product.sum(1, keepdims=True)], 1)


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--folder", default=None, help="a trained learned-judge folder")
    args = parser.parse_args()
    train = load_labelled("gptfuzz-train", args.data_dir)
    test = load_labelled("gptfuzz", args.data_dir)
    gold = np.array([r.complied for r in test])

    started = time.perf_counter()
    embedder = SentenceEmbedder(None)
    embedder.model.max_seq_length = 256
    x_train, x_test = features(embedder, train), features(embedder, test)
    y_train = np.array([r.complied for r in train])
    questions = sorted({r.source for r in train})
    held = set(random.Random(0).sample(questions, max(1, len(questions) // 10)))
    val = np.array([r.source in held for r in train])
    best = max(
        (0.1, 1.0, 10.0, 100.0),
        key=lambda c: (
            LogisticRegression(C=c, max_iter=3000)
            .fit(x_train[~val], y_train[~val])
            .score(x_train[val], y_train[val])
        ),
    )
    head = LogisticRegression(C=best, max_iter=3000).fit(x_train, y_train)
    frozen = float((head.predict(x_test) == gold).mean())
    frozen_s = time.perf_counter() - started
    print(f"frozen MiniLM + logistic head (C={best:g}): accuracy {frozen:.3f} ({frozen_s:.0f} s)")

    started = time.perf_counter()
    judge = make_judge(f"learned:folder={args.folder or default_judge(args.data_dir)}")
    verdicts = judge.verdicts([r.prompt for r in test], [r.response for r in test])
    said = np.array([v.complied_or_not_refused() for v in verdicts])
    tuned = float((said == gold).mean())
    tuned_s = time.perf_counter() - started
    print(
        f"fine-tuned cross-encoder (learned): accuracy {tuned:.3f} (judging {tuned_s:.0f} s; "
        f"training is train-judge's); error ratio frozen/fine-tuned "
        f"{(1 - frozen) / max(1e-9, 1 - tuned):.2f}x"
    )


if __name__ == "__main__":
    main()
