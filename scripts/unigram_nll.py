"""The unigram level of a scale's corpus: what a model that learned only token frequencies scores
on the validation windows `final_val_loss` is computed on (keelctl/repro/scale_map.py's "trains"
rule; Scale.unigram_nll). Reads the scale's token store (prepared on a miss), trains nothing.

    OMP_NUM_THREADS=1 python scripts/unigram_nll.py [SCALE]      # default cpu

Prints, in nats/token:
  heldout entropy     H(q) of the scored validation targets' own frequencies q: the lowest loss
                      any unigram model reaches on them (unigram_nll in a repro scale file)
  train cross-entropy H(q, p) with p the training split's frequencies (add-one smoothed): what a
                      unigram model fitted on the training split actually scores there
"""

import sys

import numpy as np

from keelctl.data.prepare import prepare_data_section
from keelctl.repro.plan import make_recipe
from keelctl.repro.scales import get_scale


def frequencies(tokens: np.ndarray, vocab: int) -> np.ndarray:
    return np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab).astype(np.float64)


def main(scale_name: str = "cpu") -> None:
    scale = get_scale(scale_name)
    recipe = make_recipe(
        scale, [], scheme="keel", depth=2, seed=0, lr=scale.lr, steps=1, warmup_steps=1
    )
    d, vocab = recipe.data, recipe.model.vocab_size
    data = prepare_data_section(d)
    # ValWindows: targets are tokens 1 .. n_predicted of the validation split
    n_predicted = d.seq_len * (min(d.val_tokens, len(data.val) - 1) // d.seq_len)
    targets = np.asarray(data.val[1 : 1 + n_predicted])
    q = frequencies(targets, vocab)
    q /= q.sum()
    p = frequencies(data.train[:], vocab) + 1.0
    p /= p.sum()
    seen = q > 0
    entropy = float(-(q[seen] * np.log(q[seen])).sum())
    cross = float(-(q[seen] * np.log(p[seen])).sum())
    print(f"scale {scale.name}: {d.corpus}, {n_predicted} scored validation tokens")
    print(f"heldout entropy     {entropy:.4f} nats/token")
    print(f"train cross-entropy {cross:.4f} nats/token")


if __name__ == "__main__":
    main(*sys.argv[1:])
