"""sentence-transformers' `mine_hard_negatives` on the same pairs, corpus and settings as an `angle mine` run, for
`cargo xtask bench-mine --torch PYTHON`; measured on *this* machine, in the same run as ours.

Reads (query, positive) pairs (JSONL `query`/`positive`, a list-valued positive giving one pair per element, as
`angle mine` reads format B) and an optional corpus (`.jsonl` `text` with a non-empty `title` joined before it, or one
text per line, as `angle mine --corpus`), mines with `sampling_strategy="top"`, `output_format="triplet"`, exact
search (no FAISS), float32, --threads torch threads, and times the model load and the `mine_hard_negatives` call
(embedding + search + filtering; it has no separate timers), and the script from its start to the end of that
call (imports, data, model load, mining: what `angle mine`'s process does, less writing its output).

--ours FILE (the format-C JSONL `angle mine` wrote) compares the two: both give every positive of a query the same
negatives, so the comparison is per distinct query: the (query, negative) pairs in common, and the queries whose
negative lists are identical (same texts, same order). --explain N prints N queries where the lists differ, with
each side's candidates and their cosines under this model.
--json ends the output with one JSON line (seconds, counts, overlap, peak_rss_bytes).
Usage: python3 scripts/bench/st_mine.py --data PAIRS.jsonl [--corpus CORPUS.jsonl] [--model DIR] [--range-min 0]
       [--range-max 10] [--margin M] [--relative-margin R] [--max-score S] [--num-negatives 3] [--batch-size 64]
       [--threads 2] [--ours FILE] [--explain N] [--json]
Needs torch, sentence-transformers and datasets (not a CI dependency).
"""
import argparse, json, sys, time

started = time.perf_counter()
import torch


def rss_bytes(key="VmHWM:"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return None


def read_pairs(path):
    pairs = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            q, p = row["query"], row["positive"]
            q = q[0] if isinstance(q, list) else q
            pairs += [(q, x) for x in (p if isinstance(p, list) else [p])]
    return pairs


def read_corpus(path):
    out = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            if not path.endswith(".jsonl"):
                out.append(line.rstrip("\n"))
                continue
            row = json.loads(line)
            body, title = row["text"].strip(), (row.get("title") or "").strip()
            out.append(f"{title} {body}" if title else body)
    return out


def negatives_by_query(rows):
    """(query, positive, negative or [negatives]) rows -> {query: [negatives in order]} (first row of a query)."""
    out = {}
    for q, _, n in rows:
        out.setdefault(q, n if isinstance(n, list) else [n])
    return out


ap = argparse.ArgumentParser()
ap.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
ap.add_argument("--data", required=True)
ap.add_argument("--corpus", action="append", default=[])
ap.add_argument("--range-min", type=int, default=0)
ap.add_argument("--range-max", type=int, default=10)
ap.add_argument("--margin", type=float, default=None, help="absolute_margin")
ap.add_argument("--relative-margin", type=float, default=None)
ap.add_argument("--max-score", type=float, default=None)
ap.add_argument("--num-negatives", type=int, default=3)
ap.add_argument("--batch-size", type=int, default=64)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--ours", help="angle mine's output to compare with")
ap.add_argument("--explain", type=int, default=0)
ap.add_argument("--json", action="store_true")
a = ap.parse_args()

torch.set_num_threads(a.threads)
import sentence_transformers
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import mine_hard_negatives

pairs = read_pairs(a.data)
corpus = [t for c in a.corpus for t in read_corpus(c)] or None
t0 = time.perf_counter()
model = SentenceTransformer(a.model, device="cpu")
load_s = time.perf_counter() - t0
dataset = Dataset.from_dict({"query": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
t0 = time.perf_counter()
mined = mine_hard_negatives(
    dataset,
    model,
    corpus=corpus,
    range_min=a.range_min,
    range_max=a.range_max,
    absolute_margin=a.margin,
    relative_margin=a.relative_margin,
    max_score=a.max_score,
    num_negatives=a.num_negatives,
    sampling_strategy="top",
    batch_size=a.batch_size,
    output_format="triplet",
    use_faiss=False,
    verbose=False,
)
mine_s = time.perf_counter() - t0
process_s = time.perf_counter() - started
# triplet rows: one per (query, positive, negative); gather each query's negatives in rank order
theirs = {}
for q, n in zip(mined["query"], mined["negative"]):
    lst = theirs.setdefault(q, [])
    if n not in lst:
        lst.append(n)
result = {
    "measure": "sentence-transformers mine_hard_negatives",
    "sentence_transformers": sentence_transformers.__version__,
    "torch": torch.__version__,
    "threads": a.threads,
    "pairs": len(pairs),
    "queries": len(dict.fromkeys(q for q, _ in pairs)),
    "corpus": len(corpus or []),
    "load_seconds": load_s,
    "mine_seconds": mine_s,
    "process_seconds": process_s,
    "rows": len(mined),
    "negatives": sum(len(v) for v in theirs.values()),
    "queries_with_negatives": len(theirs),
    "peak_rss_bytes": rss_bytes(),
}

if a.ours:
    rows = []
    with open(a.ours) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows.append((r["query"], r["positive"], r["negative"]))
    ours = negatives_by_query(rows)
    ours_pairs = {(q, n) for q, ns in ours.items() for n in ns}
    their_pairs = {(q, n) for q, ns in theirs.items() for n in ns}
    common = len(ours_pairs & their_pairs)
    queries = set(ours) | set(theirs)
    identical = sum(ours.get(q) == theirs.get(q) for q in queries)
    same_set = sum(set(ours.get(q, [])) == set(theirs.get(q, [])) for q in queries)
    result.update(
        {
            "ours_negatives": len(ours_pairs),
            "common_pairs": common,
            "pairs_in_common_of_ours": common / max(len(ours_pairs), 1),
            "pairs_in_common_of_theirs": common / max(len(their_pairs), 1),
            "compared_queries": len(queries),
            "identical_lists": identical,
            "identical_share": identical / max(len(queries), 1),
            "same_sets": same_set,
        }
    )
    differ = [q for q in sorted(queries) if ours.get(q) != theirs.get(q)]
    if a.explain and differ:
        emb = lambda xs: model.encode(xs, batch_size=a.batch_size, normalize_embeddings=True, convert_to_tensor=True)
        positives = {}
        for q, p in pairs:
            positives.setdefault(q, []).append(p)
        for q in differ[: a.explain]:
            cands = list(dict.fromkeys(ours.get(q, []) + theirs.get(q, []) + positives[q]))
            s = (emb([q]) @ emb(cands).T)[0].tolist()
            score = dict(zip(cands, s))
            show = lambda xs: ", ".join(f"{score[x]:.6f} {x[:40]!r}" for x in xs)
            print(f"query {q[:60]!r}\n  positives: {show(positives[q])}\n  ours:   {show(ours.get(q, []))}\n"
                  f"  theirs: {show(theirs.get(q, []))}", file=sys.stderr)

if a.json:
    print(json.dumps(result))
else:
    for k, v in result.items():
        print(f"{k}: {v}")
