"""How often two people reading the same steered answers agree (the ceiling a judge is held to).

    python tools/annotator_agreement.py [FILE] [--second COLUMN]

FILE defaults to the packaged steered test set, whose `label` is the first reading and
`second_label` a second, blind one (the second annotator saw neither the first labels nor
the conditions, in a shuffled order). Prints accuracy and Cohen's kappa with 95% bootstrap
intervals, on compliance (the judges' question) and on the four labels.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from refusal_lens.data.labelled import PACKAGED
from refusal_lens.evaluation.agreement import agreement_row
from refusal_lens.evaluation.statistics import bootstrap_mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default=str(PACKAGED["steered"]))
    parser.add_argument("--second", default="second_label")
    args = parser.parse_args()
    with open(args.file) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    first = [str(r["label"]) for r in rows]
    second = [str(r[args.second]) for r in rows]
    row = agreement_row(
        {"name": args.second},
        "steered",
        [a == "complies" for a in first],
        [b == "complies" for b in second],
    )
    low, high = row["accuracy_ci95"]
    k_low, k_high = row["kappa_ci95"]
    print(
        f"{len(rows)} answers; compliance: agreement {row['accuracy']:.3f} [{low:.3f}, "
        f"{high:.3f}], kappa {row['kappa']:.3f} [{k_low:.3f}, {k_high:.3f}]"
    )
    four = bootstrap_mean([float(a == b) for a, b in zip(first, second, strict=True)])
    print(f"four labels: agreement {four.mean:.3f} [{four.low:.3f}, {four.high:.3f}]")
    for (a, b), n in sorted(Counter(zip(first, second, strict=True)).items()):
        if a != b:
            print(f"  first {a:<10} second {b:<10} {n}")


if __name__ == "__main__":
    main()
