//! angle-tensor (being written)
