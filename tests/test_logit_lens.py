"""The logit lens (pipeline/metrics/logit_lens.py; nostalgebraist 2020): the last depth decoded is the model's own
output (GPT-2 and a Llama with tied embeddings); the pipeline's table and exemplars against a slow reference
written with plain loops, one sentence and one piece at a time (both ranks: of the true next piece, and of the
model's final top-1 prediction, the rank nostalgebraist's essay plots), on a tiny GPT-2 trained to predict the test corpus
(so that ranks, top-1 shares and settle depths are not those of noise); independence of the token budget, the
parts, the decoding chunks and the sentence sample; the metric switched off by the config and for a bidirectional
model."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from pipeline import metrics
from pipeline.analysis import logit_lens as lens_analysis
from pipeline.analysis.logit_lens import ANALYSIS
from pipeline.config import AttendConfig, ModelConfig
from pipeline.engine import Reduction
from pipeline.metrics import logit_lens
from pipeline.metrics.logit_lens import METRIC, decode, sampled
from pipeline.models import load_adapter
from pipeline.report.figure_specs import FIGURES
from stages import STAGE_NAMES

from conftest import GPT2_TOKENIZER, PARAGRAPHS, make_config, write_corpus
from helpers import run, table

CPU = torch.device("cpu")
V = 50257
LENS_STAGES = ["corpus", "annotate", "attend", "aggregate"]
# The rank histogram's bins, restated: one per rank below 16, then edges 16·2^(k/4), k = 1..80.
EDGES = list(range(17)) + [int(16 * 2 ** (k / 4)) for k in range(1, 81)]


def save_trained_gpt2(directory: Path, steps: int = 120, seed: int = 0) -> Path:
    """A 4-layer GPT-2 (tied embeddings, vocabulary 50,257) that has learnt the test corpus's sentences. Trained
    cheaply: on the pieces the corpus uses plus one zero row standing for all the others (its logit raised by
    log(their number), which is the full softmax's), then written into the full vocabulary with zero rows for the
    unused pieces, so that its output distribution over 50,257 pieces is the one it was trained with."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))
    sentences = [s for p in PARAGRAPHS for s in re.split(r"(?<=[.!?])\s+", p)]
    ids = [tokenizer(s)["input_ids"] for s in sentences]
    used = sorted({t for s in ids for t in s})
    n, T = len(used), max(map(len, ids))
    remap = {t: k for k, t in enumerate(used)}
    x, mask = torch.zeros(len(ids), T, dtype=torch.long), torch.zeros(len(ids), T, dtype=torch.long)
    for k, s in enumerate(ids):
        x[k, : len(s)], mask[k, : len(s)] = torch.tensor([remap[t] for t in s]), 1
    labels = x.masked_fill(mask == 0, -100)
    torch.manual_seed(seed)
    shape = dict(
        n_layer=4,
        n_head=2,
        n_embd=32,
        n_positions=128,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
    )
    small = GPT2LMHeadModel(
        GPT2Config(vocab_size=n + 1, bos_token_id=None, eos_token_id=None, **shape)
    )
    rest = math.log(V - n)
    optimizer = torch.optim.Adam(small.parameters(), lr=1e-2)
    for _ in range(steps):
        with torch.no_grad():
            small.transformer.wte.weight[n] = 0.0
        logits = small(input_ids=x, attention_mask=mask).logits
        logits = torch.cat([logits[..., :n], logits[..., n:] + rest], -1)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, n + 1), labels[:, 1:].reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = small.state_dict()
    wte = torch.zeros(V, shape["n_embd"])
    wte[used] = state["transformer.wte.weight"][:n]
    full = GPT2LMHeadModel(GPT2Config(vocab_size=V, **shape))
    full.load_state_dict({**state, "transformer.wte.weight": wte, "lm_head.weight": wte})
    full.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_llama(directory: Path, tied: bool, seed: int = 0) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        initializer_range=0.2,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def trained_gpt2(tmp_path_factory) -> Path:
    return save_trained_gpt2(tmp_path_factory.mktemp("trained-gpt2"))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tied=True)


@pytest.fixture(scope="module")
def lens_run(trained_gpt2, tmp_path_factory):
    """Every stage, report included, on the trained model and the test corpus (parts of 5 sentences, batches of 128
    padded pieces, a bootstrap of 20 replicates for the other metrics)."""
    base = tmp_path_factory.mktemp("lens")
    cfg = make_config(
        base, trained_gpt2, write_corpus(base / "corpus.txt"), "attend.bootstrap_replicates=20"
    )
    run(cfg, list(STAGE_NAMES))
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# The slow reference: one sentence at a time, the model's own forward (float64), loops over pieces and depths.


def relation_of(word, head, dep, i) -> str:
    wc, wn = word[i], word[i + 1]
    if wc >= 0 and wn >= 0 and wc == wn:
        return "same word"
    if wc >= 0 and wn >= 0 and head[i + 1] == wc:
        return f"next depends on current: {dep[i + 1]}"
    if wc >= 0 and wn >= 0 and head[i] == wn:
        return f"current depends on next: {dep[i]}"
    return "unrelated"


def reference_records(model_dir: Path, tokens: pl.DataFrame) -> list[dict]:
    """One record per (sentence, piece i with a next piece, depth): rank, p, log p, KL(final ‖ depth), the groups, and
    final_rank: the rank at this depth of the model's own top-1 prediction (nostalgebraist's rank: "ranks of the model's
    final top-1 prediction, not the true token")."""
    from transformers import AutoModelForCausalLM

    lm = (
        AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager")
        .eval()
        .double()
    )
    W = lm.get_output_embeddings().weight.detach().numpy()
    records = []
    for (sid,), s in tokens.sort("position").group_by("sentence_id", maintain_order=True):
        ids = s["token_id"].to_list()
        word, head, dep, pos = (
            s[c].to_list() for c in ("word_index", "head_word_index", "dep", "pos")
        )
        with torch.no_grad():
            out = lm(input_ids=torch.tensor([ids]), output_hidden_states=True)
            L = (
                len(out.hidden_states) - 1
            )  # hidden_states[d], d < L: the input of block d; the last has ln_f applied
            logits = [
                (lm.transformer.ln_f(out.hidden_states[d])[0].numpy() @ W.T) for d in range(L)
            ]
            logits.append(out.logits[0].numpy())  # depth L: the model's own output
        for i in range(len(ids) - 1):
            target = ids[i + 1]
            final = logits[L][i]
            final_logp = final - np.log(np.exp(final - final.max()).sum()) - final.max()
            predicted = int(np.argmax(final))  # the model's own top-1 prediction
            for d in range(L + 1):
                z = logits[d][i]
                logp = z - np.log(np.exp(z - z.max()).sum()) - z.max()
                rank = 0
                for v in np.nonzero(z > z[target])[0]:  # entries with a strictly larger logit
                    rank += 1
                final_rank = 0
                for v in range(len(z)):
                    if z[v] > z[predicted]:
                        final_rank += 1
                records.append(
                    {
                        "sentence_id": sid,
                        "i": i,
                        "depth": d,
                        "rank": rank,
                        "final_rank": final_rank,
                        "log_prob": float(logp[target]),
                        "prob": float(np.exp(logp[target])),
                        "kl": float(np.sum(np.exp(final_logp) * (final_logp - logp))),
                        "pos": pos[i + 1],
                        "relation": relation_of(word, head, dep, i),
                    }
                )
    return records


def lower_median_bin(ranks: list[int]) -> tuple[int, int]:
    """The smallest r with at least half of the ranks ≤ r, then the edges of the bin that holds it."""
    r = sorted(ranks)[math.ceil(len(ranks) / 2) - 1]
    b = max(k for k, e in enumerate(EDGES) if e <= r)
    return EDGES[b], EDGES[b + 1] - 1


def reference_table(records: list[dict]) -> pl.DataFrame:
    groups = defaultdict(list)
    for r in records:
        groups["all", "all", r["depth"]].append(r)
        groups["pos", r["pos"], r["depth"]].append(r)
        groups["relation", r["relation"], r["depth"]].append(r)
    rows = []
    for (grouping, group, depth), rs in groups.items():
        n = len(rs)
        low, high = lower_median_bin([r["rank"] for r in rs])
        final_low, final_high = lower_median_bin([r["final_rank"] for r in rs])
        rows.append(
            {
                "depth": depth,
                "grouping": grouping,
                "group": group,
                "n": n,
                "top1_share": sum(r["rank"] == 0 for r in rs) / n,
                "top10_share": sum(r["rank"] < 10 for r in rs) / n,
                "mean_prob": sum(r["prob"] for r in rs) / n,
                "mean_log_prob": sum(r["log_prob"] for r in rs) / n,
                "mean_kl": sum(r["kl"] for r in rs) / n,
                "median_rank": low,
                "median_rank_upper": high,
                "final_pred_top1_share": sum(r["final_rank"] == 0 for r in rs) / n,
                "final_pred_top10_share": sum(r["final_rank"] < 10 for r in rs) / n,
                "final_pred_median_rank": final_low,
                "final_pred_median_rank_upper": final_high,
            }
        )
    return pl.DataFrame(rows)


def reference_exemplars(records: list[dict], k: int) -> dict[str, list[tuple]]:
    """{kind: [(sentence_id, mean settle depth, pieces settled, pieces decoded)]}: per piece that the final depth
    predicts (rank 0), the smallest depth from which it is top-1 at every later depth; sentences with ≥ 3 such."""
    by_piece = defaultdict(dict)
    for r in records:
        by_piece[r["sentence_id"], r["i"]][r["depth"]] = r["rank"]
    settle, decoded = defaultdict(list), defaultdict(int)
    for (sid, _), ranks in by_piece.items():
        decoded[sid] += 1
        L = max(ranks)
        if ranks[L] != 0:
            continue
        d = L
        while d > 0 and ranks[d - 1] == 0:
            d -= 1
        settle[sid].append(d)
    means = [
        (sum(v) / len(v), sid, len(v), decoded[sid]) for sid, v in settle.items() if len(v) >= 3
    ]
    earliest = sorted(means, key=lambda m: (m[0], m[1]))[:k]
    latest = sorted(means, key=lambda m: (-m[0], m[1]))[:k]
    return {
        kind: [(sid, mean, n, dec) for mean, sid, n, dec in rows]
        for kind, rows in (("earliest", earliest), ("latest", latest))
    }


# Counts, ranks and what is read from them (shares, medians) must agree exactly; probabilities, log-probabilities and
# KL to FLOAT32: the model runs in float32 and the lens decodes in float32, and the trained model's logits (up to ~25
# in magnitude) carry errors of ~4e-6 from the forward pass and the unembedding alone (one sentence's logits decoded in
# float32 and in float64 from the same residual stream differ by up to 4.7e-6; the table and the float64 reference by
# up to 7.6e-6 here, and a float32 reference does no better), as do two batchings of the same sentences.
FLOAT32 = 2e-5


def assert_tables_equal(got: pl.DataFrame, want: pl.DataFrame, atol: float = FLOAT32):
    keys = ["depth", "grouping", "group"]
    joined = got.join(want, on=keys, how="full", coalesce=True, suffix="_want")
    assert joined.height == got.height == want.height, (got.height, want.height, joined.height)
    for column in (
        "n",
        "median_rank",
        "median_rank_upper",
        "final_pred_median_rank",
        "final_pred_median_rank_upper",
    ):
        assert (joined[column] == joined[f"{column}_want"]).all(), column
    for column in ("top1_share", "top10_share", "final_pred_top1_share", "final_pred_top10_share"):
        assert np.allclose(
            joined[column].to_numpy(), joined[f"{column}_want"].to_numpy(), rtol=0, atol=1e-12
        ), column
    for column in ("mean_prob", "mean_log_prob", "mean_kl"):
        assert np.allclose(
            joined[column].to_numpy(), joined[f"{column}_want"].to_numpy(), rtol=0, atol=atol
        ), column


@pytest.fixture(scope="module")
def records(lens_run, trained_gpt2):
    return reference_records(trained_gpt2, table(lens_run, "tokens"))


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_last_depth_is_the_models_own_output(which, tiny_gpt2, tiny_llama):
    """The residual stream handed over in the attention's forward pass (depth 0 by a pre-hook on the first block,
    d ≥ 1 by hooks on the blocks) decoded at the last depth is the model's own logits, padding or not; the earlier
    depths are the model's hidden states."""
    from transformers import AutoModelForCausalLM

    model_dir = tiny_gpt2 if which == "gpt2" else tiny_llama
    adapter = load_adapter(ModelConfig(name=str(model_dir), device="cpu"), CPU)
    assert METRIC.model_reason(adapter) is None
    L = adapter.num_layers
    ids = torch.tensor([[464, 3290, 3332, 319, 262, 2603, 13], [464, 3797, 13, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0]])
    kept, heads = {}, []
    adapter.map_attention(
        ids,
        mask,
        lambda index, att: heads.append(index),
        residuals=lambda depth, hidden: kept.__setitem__(depth, hidden.clone()),
    )
    assert sorted(kept) == list(range(L + 1)) and heads == list(range(L))
    lm = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    with torch.inference_mode():
        out = lm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    for b, n in enumerate(mask.sum(1).tolist()):
        assert torch.allclose(adapter.unembed(kept[L][b, :n]), out.logits[b, :n], atol=1e-5, rtol=0)
        for d in range(
            L
        ):  # hidden_states[d]: the input of block d (the last entry has the final norm applied)
            assert torch.allclose(kept[d][b, :n], out.hidden_states[d][b, :n], atol=1e-5, rtol=0)
    assert torch.equal(kept[0][0], adapter.residual_stream(ids, mask, embeddings=True)[0][0])
    # decode(): the final depth's log-probabilities, ranks and KL = 0 from the model's own logits
    n = 7
    rank, log_prob, kl, final_rank = decode(
        adapter, [kept[d][0, : n - 1] for d in range(L + 1)], ids[0, 1:n]
    )
    logits = out.logits[0, : n - 1].double()
    target = logits.gather(1, ids[0, 1:n, None])
    assert torch.equal(
        final_rank[-1], torch.zeros(n - 1, dtype=torch.int64)
    )  # the final prediction ranks 0 at depth L
    for d in range(L):  # the rank of the model's own top-1 prediction under each depth's logits
        z = adapter.unembed(kept[d][0, : n - 1]).double()
        assert torch.equal(
            final_rank[d], (z > z.gather(1, logits.argmax(-1, keepdim=True))).sum(-1)
        )
    assert torch.allclose(
        log_prob[-1], (logits.log_softmax(-1).gather(1, ids[0, 1:n, None]))[:, 0], atol=1e-5, rtol=0
    )
    assert torch.equal(rank[-1], (logits > target).sum(-1))
    assert torch.equal(kl[-1], torch.zeros(n - 1, dtype=kl.dtype)) and (kl[:-1] > 0).all()


@pytest.mark.slow
def test_table_matches_slow_reference(lens_run, records):
    got = table(lens_run, "logit_lens")
    assert got.schema == pl.Schema(lens_analysis.SCHEMA)
    want = reference_table(records)
    assert_tables_equal(got, want)
    assert logit_lens.RANK_EDGES.tolist() == EDGES
    # the trained model predicts the corpus: the test is not one of noise
    final = got.filter((pl.col("grouping") == "all") & (pl.col("depth") == got["depth"].max()))
    first = got.filter((pl.col("grouping") == "all") & (pl.col("depth") == 0))
    assert (
        final["top1_share"][0] > 0.8
        and first["top1_share"][0] < 0.5
        and first["median_rank"][0] > 0
    )
    # the two ranks are two measurements: the final prediction ranks 0 at the last depth, the true next piece not always
    assert final["final_pred_top1_share"][0] == 1.0 and final["top1_share"][0] < 1.0
    assert (got["final_pred_median_rank"] != got["median_rank"]).any()
    assert set(
        got.filter(pl.col("grouping") == "relation")["group"].str.split(":").list.first()
    ) == {"same word", "unrelated", "next depends on current", "current depends on next"}
    assert (
        not table(lens_run, "findings")["statistic"].str.starts_with("logit").any()
    )  # not a weighting's number
    stored = np.load(
        lens_run.run_dir / "attend" / "part-00000.npz"
    ).files  # sums over the batch, no replicates
    boot = [k for k in stored if k.startswith("boot.")]
    assert (
        {"logit_lens.lens_stats", "logit_lens.lens_rank_hist", "logit_lens.lens_final_rank_hist"}
        <= set(stored)
        and boot
        and not any("logit_lens." in k for k in boot)
    )


@pytest.mark.slow
def test_exemplars_match_reference(lens_run, records):
    k = lens_run.attend.exemplars_per_head
    want = reference_exemplars(records, k)
    got = table(lens_run, "logit_lens_exemplars")
    assert got.schema == pl.Schema(lens_analysis.EXEMPLAR_SCHEMA)
    texts = dict(table(lens_run, "sentences").select("sentence_id", "text").iter_rows())
    for kind in ("earliest", "latest"):
        rows = got.filter(pl.col("kind") == kind).sort("rank")
        assert rows["rank"].to_list() == list(range(len(want[kind])))
        assert rows["sentence_id"].to_list() == [w[0] for w in want[kind]], kind
        assert np.allclose(
            rows["mean_settle_depth"].to_numpy(), [w[1] for w in want[kind]], atol=1e-12
        )
        assert rows["n_settled"].to_list() == [w[2] for w in want[kind]]
        assert rows["n_decoded"].to_list() == [w[3] for w in want[kind]]
        assert rows["text"].to_list() == [texts[w[0]] for w in want[kind]]
    assert (
        len(want["earliest"]) == k and want["earliest"][0][1] < want["latest"][0][1]
    )  # not a degenerate case
    html = (Path(lens_run.reports_dir) / lens_run.run_name / "index.html").read_text()
    for spec in (s for s in FIGURES if s.metric == "logit_lens"):
        assert (
            Path(lens_run.reports_dir) / lens_run.run_name / "figures" / f"{spec.stem}.png"
        ).is_file()
        assert spec.title in html
    assert (
        "nostalgebraist (2020)" in html
        and "Settling earliest" in html
        and "Settling latest" in html
    )


@pytest.mark.slow
def test_independent_of_budget_parts_chunks_and_sample(
    lens_run, records, trained_gpt2, tmp_path, monkeypatch
):
    """Batches of 16 padded pieces, parts of 2 sentences and decoding chunks of 3 pieces give the same tables; a
    sample of half the sentences is the same subset whatever the parts and batches, and its table is the reference's
    on exactly those sentences."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    monkeypatch.setattr(logit_lens, "CHUNK_BYTES", 3 * logit_lens.BYTES_PER_LOGIT * V)
    small = make_config(
        tmp_path,
        trained_gpt2,
        corpus,
        "attend.token_budget=16",
        "corpus.part_sentences=2",
        "attend.bootstrap_replicates=0",
        run_name="small",
    )
    run(small, LENS_STAGES)
    assert len(list((small.run_dir / "attend").glob("part-*.npz"))) > len(
        list((lens_run.run_dir / "attend").glob("part-*.npz"))
    )
    assert_tables_equal(table(small, "logit_lens"), table(lens_run, "logit_lens"))
    assert table(small, "logit_lens_exemplars").equals(table(lens_run, "logit_lens_exemplars"))

    halves = []
    for name, overrides in (
        ("half-a", ("corpus.part_sentences=5",)),
        ("half-b", ("corpus.part_sentences=3", "attend.token_budget=16")),
    ):
        cfg = make_config(
            tmp_path,
            trained_gpt2,
            corpus,
            "attend.logit_lens_sample=0.5",
            "attend.bootstrap_replicates=0",
            *overrides,
            run_name=name,
        )
        run(cfg, LENS_STAGES)
        halves.append(table(cfg, "logit_lens"))
    assert_tables_equal(halves[0], halves[1])
    ids = sorted({r["sentence_id"] for r in records})
    chosen = set(np.asarray(ids)[sampled(np.asarray(ids), 0.5, 0)].tolist())
    assert 0 < len(chosen) < len(ids)
    assert chosen == {
        i for i in ids if sampled(np.array([i]), 0.5, 0)[0]
    }  # one sentence at a time: the same
    assert_tables_equal(
        halves[0], reference_table([r for r in records if r["sentence_id"] in chosen])
    )


def test_sample_is_uniform_and_seeded():
    ids = np.arange(200_000)
    for share in (0.1, 0.5):
        chosen = sampled(ids, share, 0)
        assert abs(chosen.mean() - share) < 0.005
        assert np.array_equal(
            chosen[::-1], sampled(ids[::-1], share, 0)
        )  # a function of the id alone
    assert not np.array_equal(sampled(ids, 0.5, 0), sampled(ids, 0.5, 1))
    assert sampled(ids, 1.0, 0).all()


@pytest.mark.slow
def test_disabled_with_a_reason(tiny_gpt2, tmp_path):
    assert METRIC.disabled_reason(AttendConfig(logit_lens=False)) == "attend.logit_lens is false"
    assert METRIC not in metrics.enabled(AttendConfig(logit_lens=False))
    # a bidirectional model: every piece sees the next one
    adapter = load_adapter(ModelConfig(name=str(tiny_gpt2), device="cpu"), CPU)
    reduction = Reduction(AttendConfig(), 1, 1)
    assert reduction.residual_metrics(adapter) == [METRIC]
    adapter.causal = False
    try:
        assert "not causal" in METRIC.model_reason(adapter)
        assert "not causal" in METRIC.disabled_reason(AttendConfig(), adapter)
        assert metrics.status(AttendConfig(), adapter)["logit_lens"].startswith(
            "disabled: the model's attention is not causal"
        )
        assert reduction.residual_metrics(adapter) == []
    finally:
        adapter.causal = True
    # switched off: the whole run says so (an untied LM head is decoded since the adapter loads the model's own head;
    # that the last depth is the model's own logits for every family is the adapter's invariant, tested with it)
    cfg = make_config(
        tmp_path,
        tiny_gpt2,
        write_corpus(tmp_path / "corpus.txt"),
        "attend.bootstrap_replicates=0",
        "attend.logit_lens=false",
        "report.formats=[png]",
    )
    run(cfg, list(STAGE_NAMES))
    status = json.loads((cfg.run_dir / "run.json").read_text())["metrics"]["logit_lens"]
    assert status == "disabled: attend.logit_lens is false"
    for name, schema in ANALYSIS.table_schemas.items():
        t = table(cfg, name)
        assert t.is_empty() and t.schema == pl.Schema(schema), name
    html = (Path(cfg.reports_dir) / cfg.run_name / "index.html").read_text()
    assert "logit_lens was not computed (disabled: attend.logit_lens is false)" in html
    assert not any(
        k.startswith("logit_lens.")
        for k in np.load(cfg.run_dir / "attend" / "part-00000.npz").files
    )
