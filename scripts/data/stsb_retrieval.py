"""Builds data/stsb-retrieval/ from data/stsb/: a small BEIR-layout retrieval set and format-B training pairs.

A pair of STS-B with a score of at least 4 (of 5) is a query (sentence1) and its relevant document (sentence2).
- corpus.jsonl: every distinct sentence2 of dev and test, and the sentence1 of their pairs that are not queries;
  a text that is also a query is left out (it would be found with cosine 1). Ids d0, d1, ... in first-seen order.
- queries.jsonl, qrels/{dev,test}.tsv: the queries of each split (ids q0, ...; the same text once) and their
  relevant documents (score 1).
- train-pairs.jsonl: format B (query, positive) from STS-B train, score >= 4, for `angle mine`.
Deterministic: the same files from the same inputs. Usage: python3 scripts/data/stsb_retrieval.py
"""

import csv
import json
import os

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SRC = os.path.join(ROOT, "data", "stsb")
OUT = os.path.join(ROOT, "data", "stsb-retrieval")
THRESHOLD = 4.0


def pairs(split):
    with open(os.path.join(SRC, f"stsb-en-{split}.csv"), newline="", encoding="utf-8") as f:
        return [(a.strip(), b.strip(), float(s)) for a, b, s in csv.reader(f)]


def main():
    os.makedirs(os.path.join(OUT, "qrels"), exist_ok=True)
    splits = {s: pairs(s) for s in ("dev", "test")}
    queries = {}  # text -> id
    judged = {s: [] for s in splits}  # (query text, doc text)
    for s, rows in splits.items():
        for a, b, score in rows:
            if score >= THRESHOLD and a != b:
                queries.setdefault(a, f"q{len(queries)}")
                judged[s].append((a, b))
    docs = {}  # text -> id
    for rows in splits.values():
        for a, b, score in rows:
            for t in (b, a):
                if t not in queries:
                    docs.setdefault(t, f"d{len(docs)}")
    with open(os.path.join(OUT, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for t, i in docs.items():
            f.write(json.dumps({"_id": i, "title": "", "text": t}, ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "queries.jsonl"), "w", encoding="utf-8") as f:
        for t, i in queries.items():
            f.write(json.dumps({"_id": i, "text": t}, ensure_ascii=False) + "\n")
    for s, rows in judged.items():
        seen = set()
        with open(os.path.join(OUT, "qrels", f"{s}.tsv"), "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q, d in rows:
                if d in docs and (q, d) not in seen:
                    seen.add((q, d))
                    f.write(f"{queries[q]}\t{docs[d]}\t1\n")
    with open(os.path.join(OUT, "train-pairs.jsonl"), "w", encoding="utf-8") as f:
        for a, b, score in pairs("train"):
            if score >= THRESHOLD and a != b:
                f.write(json.dumps({"query": a, "positive": b}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
