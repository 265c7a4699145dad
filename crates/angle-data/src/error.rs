//! Errors and the record of skipped rows.
//!
//! Every row-level error names the file and the 1-based line where the row starts, and the column (a header name, a
//! JSON key, or a 1-based field position) where one is involved. In a parquet file the line is the 1-based row in
//! the file, and the message adds the row group. With `skip_invalid` the same errors become
//! [`SkippedRow`]s, counted per [`SkipReason`], so a run summary can say what was left out and why.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong reading, tokenising or batching a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax the reader cannot make a row of: bad CSV, bad JSON, invalid UTF-8, a JSON line that is not an object.
    #[error("{path}:{line}: malformed row: {message}")]
    Malformed {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}:{line}: expected {expected} fields, found {found}")]
    FieldCount {
        path: PathBuf,
        line: u64,
        expected: usize,
        found: usize,
    },
    #[error("{path}:{line}: missing column `{column}`")]
    MissingColumn {
        path: PathBuf,
        line: u64,
        column: String,
    },
    /// A JSON value of the wrong type (a number where a text belongs, an empty list, ...).
    #[error("{path}:{line}: column `{column}`: {message}")]
    BadField {
        path: PathBuf,
        line: u64,
        column: String,
        message: String,
    },
    #[error("{path}:{line}: column `{column}`: label {value:?} is not a finite number")]
    BadLabel {
        path: PathBuf,
        line: u64,
        column: String,
        value: String,
    },
    #[error("{path}:{line}: column `{column}`: label {value} outside the allowed range [{min}, {max}]")]
    LabelOutOfRange {
        path: PathBuf,
        line: u64,
        column: String,
        value: f32,
        min: f32,
        max: f32,
    },
    #[error("{path}:{line}: column `{column}`: empty text")]
    EmptyText {
        path: PathBuf,
        line: u64,
        column: String,
    },
    /// The columns name none of the layouts A (`text1,text2,label`), B (`query,positive`), C
    /// (`query,positive,negative`).
    #[error(
        "{path}:{line}: columns {columns:?} name no layout: expected text1,text2,label (A), query,positive (B) or \
         query,positive,negative (C); rename columns with a mapping such as `sentence1:text1,sentence2:text2,score:label`"
    )]
    UnknownLayout {
        path: PathBuf,
        line: u64,
        columns: Vec<String>,
    },
    #[error("{path}:{line}: columns {columns:?} fit more than one layout; choose the format explicitly")]
    AmbiguousLayout {
        path: PathBuf,
        line: u64,
        columns: Vec<String>,
    },
    #[error("{path}: the file does not have the columns of format {format:?} (columns: {columns:?})")]
    FormatMismatch {
        path: PathBuf,
        format: crate::Format,
        columns: Vec<String>,
    },
    #[error("{path}: no examples{skipped}")]
    NoExamples { path: PathBuf, skipped: String },
    #[error(
        "{path}: cannot tell the file type from the extension (expected .csv, .tsv, .txt, .jsonl or .parquet)"
    )]
    UnknownFileKind { path: PathBuf },
    #[error("{path}: folder holds no data file (.csv, .tsv, .txt, .jsonl, .json, .parquet)")]
    NoDataFiles { path: PathBuf },
    /// A parquet file's columns (its schema, read once) name no layout, or more than one.
    #[error(
        "{path}: columns {columns:?} {problem}; rename columns with a mapping such as \
         `sentence1:text1,sentence2:text2,score:label`"
    )]
    SchemaLayout {
        path: PathBuf,
        columns: Vec<String>,
        problem: String,
    },
    /// A parquet file that cannot be read: not parquet, damaged, or compressed with a codec this build lacks.
    #[error("{path}: {message}")]
    Parquet { path: PathBuf, message: String },
    /// A row-level error in a parquet file; `line` (of the inner error) is the 1-based row in the file.
    #[error("{source} (row group {row_group} of {row_groups})")]
    InRowGroup {
        source: Box<DataError>,
        /// 1-based.
        row_group: usize,
        row_groups: usize,
    },
    #[error("column mapping {spec:?}: {message}")]
    ColumnMap { spec: String, message: String },
    #[error("prompt {prompt:?} has no `{{text}}` placeholder")]
    Prompt { prompt: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
}

impl DataError {
    /// The 1-based line of the row the error is about, if it is about a row.
    pub fn line(&self) -> Option<u64> {
        match self {
            DataError::Malformed { line, .. }
            | DataError::FieldCount { line, .. }
            | DataError::MissingColumn { line, .. }
            | DataError::BadField { line, .. }
            | DataError::BadLabel { line, .. }
            | DataError::LabelOutOfRange { line, .. }
            | DataError::EmptyText { line, .. }
            | DataError::UnknownLayout { line, .. }
            | DataError::AmbiguousLayout { line, .. } => Some(*line),
            DataError::InRowGroup { source, .. } => source.line(),
            _ => None,
        }
    }

    /// The skip reason when this is a row-level error that `skip_invalid` may skip.
    pub fn skip_reason(&self) -> Option<SkipReason> {
        Some(match self {
            DataError::Malformed { .. } => SkipReason::Malformed,
            DataError::FieldCount { .. } => SkipReason::FieldCount,
            DataError::MissingColumn { .. } => SkipReason::MissingColumn,
            DataError::BadField { .. } => SkipReason::BadField,
            DataError::BadLabel { .. } => SkipReason::BadLabel,
            DataError::LabelOutOfRange { .. } => SkipReason::LabelOutOfRange,
            DataError::EmptyText { .. } => SkipReason::EmptyText,
            DataError::InRowGroup { source, .. } => return source.skip_reason(),
            _ => return None,
        })
    }
}

/// Why a row was skipped (the kinds of row-level [`DataError`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    Malformed,
    FieldCount,
    MissingColumn,
    BadField,
    BadLabel,
    LabelOutOfRange,
    EmptyText,
}

impl SkipReason {
    pub const ALL: [SkipReason; 7] = [
        SkipReason::Malformed,
        SkipReason::FieldCount,
        SkipReason::MissingColumn,
        SkipReason::BadField,
        SkipReason::BadLabel,
        SkipReason::LabelOutOfRange,
        SkipReason::EmptyText,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Malformed => "malformed row",
            SkipReason::FieldCount => "wrong field count",
            SkipReason::MissingColumn => "missing column",
            SkipReason::BadField => "bad field",
            SkipReason::BadLabel => "unparsable label",
            SkipReason::LabelOutOfRange => "label out of range",
            SkipReason::EmptyText => "empty text",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row left out because `skip_invalid` was set; `message` is the error that would have been returned.
#[derive(Clone, Debug, PartialEq)]
pub struct SkippedRow {
    pub line: u64,
    pub reason: SkipReason,
    pub message: String,
}

/// Counts of skipped rows per reason, for a run summary. `Display` gives e.g. `3 rows skipped (2 empty text, 1
/// unparsable label)`, or `no rows skipped`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SkipCounts {
    pub total: usize,
    /// Nonzero counts only, in the order of [`SkipReason::ALL`].
    pub by_reason: Vec<(SkipReason, usize)>,
}

impl SkipCounts {
    pub fn from_rows(rows: &[SkippedRow]) -> Self {
        let by_reason = SkipReason::ALL
            .iter()
            .map(|&r| (r, rows.iter().filter(|s| s.reason == r).count()))
            .filter(|&(_, n)| n > 0)
            .collect();
        SkipCounts {
            total: rows.len(),
            by_reason,
        }
    }

    pub fn get(&self, reason: SkipReason) -> usize {
        self.by_reason
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |&(_, n)| n)
    }
}

impl fmt::Display for SkipCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.total == 0 {
            return f.write_str("no rows skipped");
        }
        let plural = if self.total == 1 { "row" } else { "rows" };
        write!(f, "{} {plural} skipped (", self.total)?;
        for (i, (r, n)) in self.by_reason.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n} {r}")?;
        }
        f.write_str(")")
    }
}
