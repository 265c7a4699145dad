//! angle-encoder (being written)
