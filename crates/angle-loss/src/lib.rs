//! angle-loss (being written)
