"""Checks `angle eval --retrieval` against sentence-transformers' InformationRetrievalEvaluator on the same
embeddings: every metric within 1e-6.

angle embeds and scores a BEIR folder and writes the embeddings it scored (--save-embeddings); the evaluator
then ranks the same embeddings with its own code (cosine, torch.topk, ties by ascending corpus id) and computes
its metrics. Needs torch and sentence-transformers (not a CI dependency).

Usage: python3 scripts/retrieval/ir_check.py --angle target/release/angle --model DIR --data DIR [--split test]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
try:
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
except ImportError:  # sentence-transformers < 6
    from sentence_transformers.evaluation import InformationRetrievalEvaluator
from sentence_transformers.util import cos_sim

# angle's JSON key -> (the evaluator's metric, k)
METRICS = {
    "ndcg_at_10": ("ndcg@k", 10),
    "mrr_at_10": ("mrr@k", 10),
    "map_at_100": ("map@k", 100),
    "recall_at_1": ("recall@k", 1),
    "recall_at_10": ("recall@k", 10),
    "recall_at_100": ("recall@k", 100),
    "precision_at_1": ("precision@k", 1),
    "precision_at_10": ("precision@k", 10),
    "accuracy_at_1": ("accuracy@k", 1),
    "accuracy_at_10": ("accuracy@k", 10),
}


class GivenEmbeddings(InformationRetrievalEvaluator):
    """The evaluator with the query embeddings given instead of computed by a model."""

    def __init__(self, query_embeddings, **kw):
        super().__init__(**kw)
        self.given = query_embeddings

    def embed_inputs(self, model, sentences, encode_fn_name=None, **kw):
        assert encode_fn_name == "query" and len(sentences) == len(self.given)
        return self.given


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--angle", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--tolerance", type=float, default=1e-6)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "emb")
        out = subprocess.run(
            [a.angle, "eval", "--model", a.model, "--retrieval", a.data, "--split", a.split, "--json",
             "--save-embeddings", saved],
            check=True, capture_output=True, text=True,
        ).stdout
        ours = json.loads(out.strip().splitlines()[-1])
        ids = json.load(open(os.path.join(saved, "ids.json")))
        q = torch.from_numpy(np.load(os.path.join(saved, "queries.npy")))
        c = torch.from_numpy(np.load(os.path.join(saved, "corpus.npy")))
    corpus = {cid: "" for cid in ids["corpus_ids"]}
    queries = {qid: "" for qid in ids["query_ids"]}
    relevant = {qid: {ids["corpus_ids"][d] for d in rel} for qid, rel in zip(ids["query_ids"], ids["relevant"])}
    ev = GivenEmbeddings(
        q, queries=queries, corpus=corpus, relevant_docs=relevant, mrr_at_k=[10], ndcg_at_k=[10],
        accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10, 100], map_at_k=[100],
        score_functions={"cosine": cos_sim}, write_csv=False,
    )
    theirs = ev.compute_all_metrics(model=None, corpus_embeddings=c)["cosine"]
    worst = 0.0
    print(f"{a.data} ({a.split}): {len(queries)} queries, {len(corpus)} documents")
    print("| metric | angle | sentence-transformers | difference |")
    print("| --- | --- | --- | --- |")
    for key, (name, k) in METRICS.items():
        t = float(theirs[name][k])
        d = abs(ours[key] - t)
        worst = max(worst, d)
        print(f"| {key} | {ours[key]:.9f} | {t:.9f} | {d:.1e} |")
    ok = worst <= a.tolerance
    print(f"largest difference {worst:.1e} ({'within' if ok else 'ABOVE'} {a.tolerance:g})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
