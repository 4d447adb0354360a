"""A deliberately slow, independent reference: one sentence at a time, no padding, plain Python
loops over i and j written straight from the paper's equations (3)-(7) and footnotes 3-4; for an
encoder (causal=False), j runs over the whole sentence and the null pieces are its special pieces."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import polars as pl
import torch
from transformers import AutoModel


def attention_maps(model_dir, tokens: pl.DataFrame) -> dict[int, np.ndarray]:
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    maps = {}
    for (sid,), group in tokens.sort("position").group_by("sentence_id", maintain_order=True):
        ids = torch.tensor([group["token_id"].to_list()])
        with torch.no_grad():
            att = model(input_ids=ids, output_attentions=True).attentions
        maps[sid] = np.stack([a[0].double().numpy() for a in att])  # [L, H, n, n]
    return maps


SPECIAL = ("BOS", "[CLS]", "[SEP]")


def reference_tables(
    model_dir,
    tokens: pl.DataFrame,
    window: int = 10,
    threshold: float = 0.9,
    k: int = 3,
    maps: dict[int, np.ndarray] | None = None,
    causal: bool = True,
    null_pieces: str = "first",
):
    """maps: {sentence id: [L, H, n, n] weights} to use instead of the model's attention (norm-weighted attention,
    whose rows do not sum to 1: every statistic is a ratio of sums, and footnote 4 compares the null pieces' share of
    the row with the threshold). null_pieces: "first" (position 0) or "special" (pieces tagged BOS, [CLS], [SEP])."""
    maps = attention_maps(model_dir, tokens) if maps is None else maps
    feats = {sid: g.sort("position") for (sid,), g in tokens.group_by("sentence_id")}
    L, H = next(iter(maps.values())).shape[:2]
    nulls = {
        sid: (
            {0}
            if null_pieces == "first"
            else {p for p, t in enumerate(f["pos"].to_list()) if t in SPECIAL}
        )
        for sid, f in feats.items()
    }

    def columns(i, n):
        return range(0, i + 1) if causal else range(0, n)

    heads, pos_rows, dep_rows, exemplars = [], [], [], []
    for layer in range(L):
        for h in range(H):
            s = defaultdict(float)
            pos_to, pos_from, dep_to = defaultdict(float), defaultdict(float), defaultdict(float)
            best = []
            for sid, A in maps.items():
                a = A[layer, h]
                n = a.shape[0]
                f = feats[sid]
                word, head = f["word_index"].to_list(), f["head_word_index"].to_list()
                pos, dep = f["pos"].to_list(), f["dep"].to_list()
                null = nulls[sid]
                top = (-1.0, -1, -1)
                for i in range(n):
                    if i in null:
                        continue
                    for j in columns(i, n):
                        w = a[i, j]
                        s["mass_all"] += w
                        if j in null:
                            s["mass_null"] += w
                            continue
                        s["mass"] += w
                        s["distance"] += w * abs(i - j)
                        different = word[i] >= 0 and word[j] >= 0 and word[i] != word[j]
                        if different and head[j] == word[i]:
                            s["dep_attending_parent"] += w
                        if different and head[i] == word[j]:
                            s["dep_receiving_parent"] += w
                        pos_to[pos[j]] += w
                        pos_from[pos[i]] += w
                        dep_to[dep[j]] += w
                        if w > top[0]:
                            top = (w, i, j)
                    if (
                        sum(a[i, j] for j in null if j in columns(i, n))
                        / sum(a[i, j] for j in columns(i, n))
                        > threshold
                    ):
                        continue
                    kept = [j for j in columns(i, n) if j not in null]
                    rest = sum(a[i, j] for j in kept)
                    entropy = -sum(
                        (a[i, j] / rest) * math.log(a[i, j] / rest) for j in kept if a[i, j] > 0
                    )
                    s["entropy_sum"] += entropy
                    s["entropy_rows"] += 1
                best.append((-top[0], sid, top[1], top[2], list(a[top[1]])))
            # Variability (Eq. 5): first `window` positions, ᾱ over the sentences in which (i, j) is a non-null pair.
            num = den = 0.0
            for i in range(window):
                for j in range(i + 1) if causal else range(window):
                    reach = [
                        A[layer, h]
                        for sid, A in maps.items()
                        if A.shape[2] > max(i, j) and i not in nulls[sid] and j not in nulls[sid]
                    ]
                    if not reach:
                        continue
                    mean = sum(a[i, j] for a in reach) / len(reach)
                    num += sum(abs(a[i, j] - mean) for a in reach)
                    den += sum(a[i, j] for a in reach)
            row = {
                "layer": layer,
                "head": h,
                "null_share": s["mass_null"] / s["mass_all"],
                "dep_align_attending_parent": s["dep_attending_parent"] / s["mass"],
                "dep_align_receiving_parent": s["dep_receiving_parent"] / s["mass"],
                "dep_align_either": (s["dep_attending_parent"] + s["dep_receiving_parent"])
                / s["mass"],
                "variability": num / (2 * den),
                "mean_distance": s["distance"] / s["mass"],
                "mean_entropy": s["entropy_sum"] / s["entropy_rows"],
            }
            heads.append(row)
            pos_rows += [(layer, h, "to", t, v / s["mass"]) for t, v in pos_to.items()]
            pos_rows += [(layer, h, "from", t, v / s["mass"]) for t, v in pos_from.items()]
            dep_rows += [(layer, h, t, v / s["mass"]) for t, v in dep_to.items()]
            for rank, (neg, sid, i, j, row) in enumerate(sorted(best, key=lambda b: b[:2])[:k]):
                exemplars.append((layer, h, rank, sid, -neg, i, j, row))
    return (
        pl.DataFrame(heads),
        pl.DataFrame(pos_rows, schema=["layer", "head", "direction", "tag", "share"], orient="row"),
        pl.DataFrame(dep_rows, schema=["layer", "head", "label", "share"], orient="row"),
        pl.DataFrame(
            exemplars,
            schema=[
                "layer",
                "head",
                "rank",
                "sentence_id",
                "weight",
                "attending_position",
                "receiving_position",
                "attention_row",
            ],
            orient="row",
        ),
    )


CLARK_OFFSETS = (-3, -2, -1, 0, 1, 2)  # Clark et al. (2019): offset_predictor for i in range(-3, 3)


def clark_dependency_accuracy(
    maps: dict[int, np.ndarray],
    tokens: pl.DataFrame,
    null_pieces: str = "first",
    tolerance: float = 1e-5,
):
    """Clark et al. (2019, section 4.2, Table 1), slowly, one sentence and one word at a time, from their definition:
    word-level attention (a word's attention to another word is the sum over that word's pieces; a word of several
    pieces attends with the mean of its pieces' rows; null pieces — position 0, or the special pieces — dropped, as
    they drop [CLS] and [SEP]); each word's prediction is its most-attended-to *other* word ("dep->head"), or, on the
    transposed matrix, the other word that attends to it most ("head<-dep"); the first maximum on ties, and no
    prediction where every other word has weight 0 (a causal model's first or last word). Cases: every
    word with a non-null piece whose head has one too, or that is the root (gold head ROOT, which no word can be).
    Baseline: the head of word d is word d + o, clamped as theirs (before the first word: ROOT; past the last: the last).

    Returns ({(layer, head, relation, direction): (sure, possible)}, {relation: n}, {relation: {o: correct}}):
    `sure` counts the cases whose gold head is the prediction by more than `tolerance` over every other candidate,
    `possible` those whose gold head is within `tolerance` of the maximum (float32 sums may break a near-tie either
    way)."""
    L, H = next(iter(maps.values())).shape[:2]
    correct = defaultdict(lambda: [0, 0])
    cases = defaultdict(int)
    baseline = defaultdict(lambda: dict.fromkeys(CLARK_OFFSETS, 0))
    for (sid,), s in tokens.sort("position").group_by("sentence_id", maintain_order=True):
        word, head, dep, pos = (
            s[c].to_list() for c in ("word_index", "head_word_index", "dep", "pos")
        )
        null = {0} if null_pieces == "first" else {p for p, t in enumerate(pos) if t in SPECIAL}
        pieces = defaultdict(list)  # word → its non-null pieces
        for p, w in enumerate(word):
            if w >= 0 and p not in null:
                pieces[w].append(p)
        present = sorted(pieces)
        head_of = {w: head[p] for p, w in enumerate(word) if w >= 0}
        label = {w: dep[p] for p, w in enumerate(word) if w >= 0}
        n_words = max(word) + 1
        A = maps[sid]
        for d in present:
            root = head_of[d] == d
            if not root and head_of[d] not in pieces:
                continue
            gold = None if root else head_of[d]
            relation = label[d]
            cases[relation] += 1
            for o in CLARK_OFFSETS:
                guess = min(max(d + o, -1), n_words - 1)
                baseline[relation][o] += (guess == -1) if root else (guess == gold)
            for layer in range(L):
                for h in range(H):
                    a = A[layer, h]

                    def attention(
                        v, w
                    ):  # word v → word w: mean over v's pieces of the sum over w's pieces
                        return sum(sum(a[i, j] for j in pieces[w]) for i in pieces[v]) / len(
                            pieces[v]
                        )

                    for direction, score in (
                        ("dependent_to_head", lambda b: attention(d, b)),
                        ("head_to_dependent", lambda b: attention(b, d)),
                    ):
                        others = [b for b in present if b != d]
                        if gold is None or not others:
                            correct[layer, h, relation, direction]  # a case, never correct
                            continue
                        values = {b: score(b) for b in others}
                        top = max(values.values())
                        if (
                            top <= 0
                        ):  # it attends to no other word (a causal model's first or last word): no prediction
                            correct[layer, h, relation, direction]
                            continue
                        rivals = [
                            b for b in others if b != gold and values[b] >= values[gold] - tolerance
                        ]
                        tally = correct[layer, h, relation, direction]
                        tally[0] += values[gold] >= top and not rivals
                        tally[1] += values[gold] >= top - tolerance
    return dict(correct), dict(cases), {r: dict(v) for r, v in baseline.items()}
