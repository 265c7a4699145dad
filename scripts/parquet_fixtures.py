"""Writes the parquet fixtures of crates/angle-data/tests/data with a real pyarrow (run from the repository root):

    python scripts/parquet_fixtures.py

- pyarrow-a.parquet: Hugging Face's STS layout (sentence1, sentence2, score as double), snappy (pyarrow's and
  Hugging Face datasets' default), 2 row groups of 3 and 2 rows, plus an ignored int64 `idx` column.
- pyarrow-gzip.parquet: the same rows compressed with gzip, a codec angle-data does not read (its error test).
"""

import pathlib

import pyarrow as pa
import pyarrow.parquet as pq

OUT = pathlib.Path("crates/angle-data/tests/data")

table = pa.table(
    {
        "idx": pa.array([0, 1, 2, 3, 4], pa.int64()),
        "sentence1": ["A plane is taking off.", "A man is playing a flute.", "A cat sits.", "Two dogs run.", "Rain."],
        "sentence2": ["An air plane is taking off.", "A man plays a flute.", "A dog barks.", "Dogs are running.", "Sun."],
        "score": pa.array([5.0, 3.8, 0.5, 4.2, 0.0], pa.float64()),
    }
)

OUT.mkdir(parents=True, exist_ok=True)
pq.write_table(table, OUT / "pyarrow-a.parquet", compression="snappy", row_group_size=3)
pq.write_table(table, OUT / "pyarrow-gzip.parquet", compression="gzip", row_group_size=3)
