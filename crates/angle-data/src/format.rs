//! The three data layouts angle-emb knows, the column roles they are made of, and column renaming.

use std::fmt;
use std::str::FromStr;

use crate::DataError;

/// angle-emb's data formats, and the unsupervised one. The row layout of a batch follows the format: A is zigzag (rows
/// `2k`, `2k+1` are the two texts of pair `k`, one label per pair), B interleaves query/positive, C
/// query/positive/negative, U repeats each text (rows `2k`, `2k+1` are two views of text `k`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `text1`, `text2`, `label`: a graded or binary similarity per pair.
    A,
    /// `query`, `positive`.
    B,
    /// `query`, `positive`, `negative`.
    C,
    /// `text` (or one sentence per line): unsupervised, SimCSE-style. Each text is its own positive; the two rows
    /// sit at different positions of the packed batch, so dropout draws an independent mask for each. Never
    /// detected from the columns: a run asks for it (`--unsupervised`, `--format U`).
    U,
}

impl Format {
    /// The text roles of one example as stored, in row order.
    pub fn text_roles(self) -> &'static [Role] {
        match self {
            Format::A => &[Role::Text1, Role::Text2],
            Format::B => &[Role::Query, Role::Positive],
            Format::C => &[Role::Query, Role::Positive, Role::Negative],
            Format::U => &[Role::Text],
        }
    }

    /// Texts stored per example: 2 for A and B, 3 for C, 1 for U.
    pub fn texts_per_example(self) -> usize {
        self.text_roles().len()
    }

    /// Rows per example in a batch: 2 for A, B and U (two views of one text), 3 for C.
    pub fn rows_per_example(self) -> usize {
        match self {
            Format::U => 2,
            f => f.texts_per_example(),
        }
    }

    pub fn has_label(self) -> bool {
        self == Format::A
    }

    /// Every role the format reads, label included.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Format::A => &[Role::Text1, Role::Text2, Role::Label],
            Format::B => &[Role::Query, Role::Positive],
            Format::C => &[Role::Query, Role::Positive, Role::Negative],
            Format::U => &[Role::Text],
        }
    }

    /// The format named by a set of columns: C over B when `negative` is there; an error when both A and B/C fit.
    pub(crate) fn detect(has: impl Fn(Role) -> bool) -> Result<Format, bool> {
        let a = Format::A.roles().iter().all(|&r| has(r));
        let bc = if Format::C.roles().iter().all(|&r| has(r)) {
            Some(Format::C)
        } else if Format::B.roles().iter().all(|&r| has(r)) {
            Some(Format::B)
        } else {
            None
        };
        match (a, bc) {
            (true, None) => Ok(Format::A),
            (false, Some(f)) => Ok(f),
            (true, Some(_)) => Err(true),
            (false, None) => Err(false),
        }
    }
}

impl FromStr for Format {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.trim() {
            "A" | "a" => Ok(Format::A),
            "B" | "b" => Ok(Format::B),
            "C" | "c" => Ok(Format::C),
            "U" | "u" => Ok(Format::U),
            other => Err(DataError::Config(format!(
                "unknown data format {other:?}: expected A, B, C or U (unsupervised)"
            ))),
        }
    }
}

/// What a column means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Format U's one text.
    Text,
    Text1,
    Text2,
    Label,
    Query,
    Positive,
    Negative,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Text,
        Role::Text1,
        Role::Text2,
        Role::Label,
        Role::Query,
        Role::Positive,
        Role::Negative,
    ];

    /// The column name angle-emb uses for the role.
    pub fn name(self) -> &'static str {
        match self {
            Role::Text => "text",
            Role::Text1 => "text1",
            Role::Text2 => "text2",
            Role::Label => "label",
            Role::Query => "query",
            Role::Positive => "positive",
            Role::Negative => "negative",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A column rename mapping, `from:to` pairs separated by commas, e.g. `sentence1:text1,sentence2:text2,score:label`.
/// Targets must be role names; a column not in the mapping keeps its name. It applies to CSV/TSV headers, JSONL keys,
/// and to the names given for headerless files' positions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnMap {
    pairs: Vec<(String, Role)>,
}

impl ColumnMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `from` → `to`; a later mapping of the same source replaces the earlier.
    pub fn insert(&mut self, from: impl Into<String>, to: Role) -> &mut Self {
        let from = from.into();
        self.pairs.retain(|(f, _)| *f != from);
        self.pairs.push((from, to));
        self
    }

    /// The role a column name stands for: its mapping, else the role of that name, else none (the column is ignored).
    pub fn role_of(&self, column: &str) -> Option<Role> {
        let column = column.trim();
        match self.pairs.iter().find(|(f, _)| f == column) {
            Some(&(_, r)) => Some(r),
            None => Role::from_name(column),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

impl FromStr for ColumnMap {
    type Err = DataError;

    fn from_str(spec: &str) -> Result<Self, DataError> {
        let err = |message: String| DataError::ColumnMap {
            spec: spec.to_string(),
            message,
        };
        let mut map = ColumnMap::new();
        if spec.trim().is_empty() {
            return Ok(map);
        }
        for item in spec.split(',') {
            let Some((from, to)) = item.split_once(':') else {
                return Err(err(format!("{item:?} is not `from:to`")));
            };
            let (from, to) = (from.trim(), to.trim());
            if from.is_empty() {
                return Err(err(format!("{item:?} has an empty source column")));
            }
            let Some(role) = Role::from_name(to) else {
                return Err(err(format!(
                    "{to:?} is not a column role (text1, text2, label, query, positive, negative)"
                )));
            };
            if map.pairs.iter().any(|(f, _)| f == from) {
                return Err(err(format!("column {from:?} is mapped twice")));
            }
            map.pairs.push((from.to_string(), role));
        }
        Ok(map)
    }
}
