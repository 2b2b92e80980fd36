"""Caption metrics in pure Python: corpus BLEU-1..4, CIDEr-D, token accuracy, exact match.

Captions are lists of words (``captions.normalize`` makes them from text). No Java, no downloads.

* BLEU (Papineni et al. 2002), corpus level as in the COCO caption evaluation: clipped n-gram
  precisions ``p_n`` summed over the corpus, brevity penalty ``BP = exp(1 - r / c)`` when the total
  candidate length c is below the total reference length r (each candidate's closest reference
  length, ties to the shorter), ``BLEU-n = BP exp(mean_{k <= n} log p_k)``; 0 when a ``p_k`` is 0
  (no smoothing).
* CIDEr-D (Vedantam et al. 2015), the COCO-caption form: per n = 1..4, tf-idf vectors
  ``g(w) = count(w) * (log |I| - log max(1, df(w)))`` with the document frequency ``df`` counted over
  the references of the evaluated images (an n-gram counts once per image); the similarity of a
  candidate and a reference is ``sum_w min(g_c(w), g_r(w)) g_r(w) / (|g_c| |g_r|)`` (the candidate's
  counts clipped: repeating a word does not pay) times the length penalty
  ``exp(-(l_c - l_r)^2 / (2 sigma^2))``, sigma = 6; the image's score is 10 times the mean over n and
  over its references; the corpus score is the mean over images.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence

import numpy as np

Words = Sequence[str]


def ngram_counts(words: Words, n: int) -> collections.Counter:
    """Counts of the n-grams (tuples) of ``words``."""
    return collections.Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _check_corpus(candidates: Sequence[Words], references: Sequence[Sequence[Words]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    if not candidates:
        raise ValueError("no captions to score")
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"image {i} has no reference caption")


def corpus_bleu(candidates: Sequence[Words], references: Sequence[Sequence[Words]],
                max_n: int = 4) -> dict[str, float | list[float]]:  # fmt: skip
    """``{"bleu1": .., ..., "bleu{max_n}": .., "precisions": [p_1..], "brevity_penalty": BP,
    "length_ratio": c / r}`` of a corpus (``references[i]``: the references of candidate i)."""
    _check_corpus(candidates, references)
    matches, totals = [0] * max_n, [0] * max_n
    c_len = r_len = 0
    for cand, refs in zip(candidates, references, strict=True):
        c_len += len(cand)
        r_len += min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]  # closest, then shorter
        for n in range(1, max_n + 1):
            counts = ngram_counts(cand, n)
            best: collections.Counter = collections.Counter()
            for r in refs:
                best |= ngram_counts(r, n)  # elementwise max over the references
            matches[n - 1] += sum(min(k, best[g]) for g, k in counts.items())
            totals[n - 1] += max(len(cand) - n + 1, 0)
    precisions = [m / t if t else 0.0 for m, t in zip(matches, totals, strict=True)]
    if c_len == 0:
        bp = 0.0
    else:
        bp = 1.0 if c_len > r_len else math.exp(1.0 - r_len / c_len)
    out: dict[str, float | list[float]] = {}
    for n in range(1, max_n + 1):
        ps = precisions[:n]
        out[f"bleu{n}"] = bp * math.exp(sum(math.log(p) for p in ps) / n) if min(ps) > 0 else 0.0
    out.update(precisions=precisions, brevity_penalty=bp,
               length_ratio=c_len / r_len if r_len else 0.0)  # fmt: skip
    return out


def cider_d(candidates: Sequence[Words], references: Sequence[Sequence[Words]], *,
            max_n: int = 4, sigma: float = 6.0) -> tuple[float, list[float]]:  # fmt: skip
    """(corpus CIDEr-D, per-image scores); see the module docstring."""
    _check_corpus(candidates, references)
    df: collections.Counter = collections.Counter()
    for refs in references:
        df.update({g for r in refs for n in range(1, max_n + 1) for g in ngram_counts(r, n)})
    log_images = math.log(float(len(references)))

    def vectors(words: Words) -> tuple[list[dict], list[float]]:
        vecs, norms = [], []
        for n in range(1, max_n + 1):
            v = {g: k * (log_images - math.log(max(1.0, df[g])))
                 for g, k in ngram_counts(words, n).items()}  # fmt: skip
            vecs.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        return vecs, norms

    scores = []
    for cand, refs in zip(candidates, references, strict=True):
        vc, nc = vectors(cand)
        total = 0.0
        for r in refs:
            vr, nr = vectors(r)
            penalty = math.exp(-((len(cand) - len(r)) ** 2) / (2.0 * sigma**2))
            sims = []
            for n in range(max_n):
                val = sum(min(x, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, x in vc[n].items())
                if nc[n] and nr[n]:
                    val /= nc[n] * nr[n]
                sims.append(val * penalty)
            total += sum(sims) / max_n
        scores.append(10.0 * total / len(refs))
    return float(np.mean(scores)), scores


def token_accuracy(tokens: np.ndarray, targets: np.ndarray, pad_id: int = 0) -> float:
    """The best, over the ``targets`` [T, N], fraction of a target's non-padding positions (its
    words and its end token) where ``tokens`` [N] has the same token."""
    tokens, targets = np.asarray(tokens), np.atleast_2d(np.asarray(targets))
    if targets.shape[1] != tokens.shape[0]:
        raise ValueError(f"tokens have length {tokens.shape[0]}, targets {targets.shape[1]}")
    keep = targets != pad_id  # [T, N]
    hits = ((targets == tokens[None]) & keep).sum(axis=1) / np.maximum(keep.sum(axis=1), 1)
    return float(hits.max())


def exact_match(candidate: Words, targets: Sequence[Words]) -> bool:
    """Whether the candidate's words equal those of one of the targets."""
    return any(list(candidate) == list(t) for t in targets)
