//! angle-train (being written)
