//! angle-data (being written)
