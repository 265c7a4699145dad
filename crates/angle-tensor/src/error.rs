use thiserror::Error;

/// Bad input to an op: names the op and the tensor or argument at fault.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TensorError {
    /// A buffer does not have the length the dimensions imply.
    #[error("{op}: tensor `{tensor}` has {got} elements, expected {expected}")]
    Len {
        op: &'static str,
        tensor: &'static str,
        expected: usize,
        got: usize,
    },
    /// An index tensor (token ids, positions) points outside its table.
    #[error("{op}: `{tensor}`[{pos}] = {index} is out of range for a table of {size} rows")]
    Index {
        op: &'static str,
        tensor: &'static str,
        pos: usize,
        index: usize,
        size: usize,
    },
    /// A dimension, offset table or hyper-parameter is invalid.
    #[error("{op}: invalid `{arg}`: {reason}")]
    Arg {
        op: &'static str,
        arg: &'static str,
        reason: String,
    },
}

pub(crate) fn check_len(
    op: &'static str,
    tensor: &'static str,
    got: usize,
    expected: usize,
) -> Result<(), TensorError> {
    if got == expected {
        Ok(())
    } else {
        Err(TensorError::Len {
            op,
            tensor,
            expected,
            got,
        })
    }
}

pub(crate) fn arg_err(op: &'static str, arg: &'static str, reason: impl Into<String>) -> TensorError {
    TensorError::Arg {
        op,
        arg,
        reason: reason.into(),
    }
}
