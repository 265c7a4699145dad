//! Readers: CSV, TSV and JSONL files into [`RawDataset`]s of untokenised examples.
//!
//! The layout (A, B or C) comes from the column names after renaming ([`ColumnMap`]). A CSV/TSV file's first row is
//! its header when it names a layout; otherwise the file is headerless and read by position. Bad rows are errors
//! naming file, line and column; with [`ReadOptions::skip_invalid`] they are skipped and recorded instead.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{SkipCounts, SkippedRow};
use crate::{ColumnMap, DataError, Format, Role};

/// The syntax of a data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// Comma-separated, RFC 4180 quoting (`"a, b"`, `""` for a quote inside quotes).
    Csv,
    /// Tab-separated, no quoting: quotes are ordinary characters (SentEval's STS files have unbalanced ones).
    Tsv,
    /// One JSON object per line; text fields are strings or non-empty lists of strings (one is drawn per epoch).
    Jsonl,
    /// Apache Parquet (as pyarrow and Hugging Face datasets write it): columns named like JSONL keys, text columns
    /// strings or lists of strings, labels numbers or numeric strings. Snappy, lz4 or no compression.
    #[cfg(feature = "parquet")]
    Parquet,
}

impl FileKind {
    /// From the extension: `.csv`; `.tsv` or `.txt`; `.jsonl` or `.json`; `.parquet` (with the `parquet` feature).
    pub fn from_path(path: &Path) -> Option<FileKind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(FileKind::Csv),
            "tsv" | "txt" => Some(FileKind::Tsv),
            "jsonl" | "json" => Some(FileKind::Jsonl),
            #[cfg(feature = "parquet")]
            "parquet" => Some(FileKind::Parquet),
            _ => None,
        }
    }
}

/// The data files a path names: a file is itself; a folder gives the files in it (not in subfolders) whose
/// extension [`FileKind::from_path`] knows, hidden files left out, sorted by name, so that the shards of a
/// published dataset (`train-00000-of-00004.parquet`, ...) come in order. A folder with none is an error.
pub fn data_files(path: impl AsRef<Path>) -> Result<Vec<PathBuf>, DataError> {
    let path = path.as_ref();
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !path.is_dir() {
        // a missing file is reported by whoever opens it, with the same message as a single file
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if !hidden && p.is_file() && FileKind::from_path(&p).is_some() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(DataError::NoDataFiles {
            path: path.to_path_buf(),
        });
    }
    Ok(files)
}

/// Whether a CSV/TSV file starts with a header row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Header {
    /// A header when the first row (after renaming) names a layout's columns; otherwise headerless.
    #[default]
    Auto,
    Present,
    Absent,
}

/// How to read a file. `Default` detects everything and fails on the first bad row.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// `None`: from the file extension.
    pub kind: Option<FileKind>,
    pub header: Header,
    /// Names of the positions of a headerless file (renamed by `columns` like header names; unknown names are
    /// ignored columns). `None`: 3 fields are `text1,text2,label`, or `label,text1,text2` when the first row's first
    /// field is a number and its last is not (SentEval STS TSV, `score<TAB>s1<TAB>s2`); 2 fields are
    /// `query,positive`.
    pub positional: Option<Vec<String>>,
    pub columns: ColumnMap,
    /// `None`: detected from the columns.
    pub format: Option<Format>,
    /// Inclusive range the labels must lie in, e.g. `(0.0, 5.0)` for STS-B.
    pub label_range: Option<(f32, f32)>,
    /// Skip bad rows and record them in [`RawDataset::skipped`] instead of failing.
    pub skip_invalid: bool,
}

impl ReadOptions {
    /// SentEval-style STS TSV: headerless `score<TAB>s1<TAB>s2`.
    pub fn sts_tsv() -> Self {
        ReadOptions {
            kind: Some(FileKind::Tsv),
            header: Header::Absent,
            positional: Some(vec!["label".into(), "text1".into(), "text2".into()]),
            ..Default::default()
        }
    }

    /// The STS-B CSV files of `../shared/data/stsb`: headerless `sentence1,sentence2,score`, scores in [0, 5].
    pub fn stsb_csv() -> Self {
        ReadOptions {
            kind: Some(FileKind::Csv),
            header: Header::Absent,
            positional: Some(vec!["text1".into(), "text2".into(), "label".into()]),
            label_range: Some((0.0, 5.0)),
            ..Default::default()
        }
    }
}

/// One example before prompts and tokenisation.
#[derive(Clone, Debug, PartialEq)]
pub struct RawExample {
    /// 1-based line where the row starts.
    pub line: u64,
    /// One entry per text role of the format (`Format::text_roles`), each a non-empty list of alternatives (one
    /// element except for list-valued JSONL fields).
    pub texts: Vec<Vec<String>>,
    /// Format A only.
    pub label: Option<f32>,
}

/// The examples of one file, or of several read as one ([`read_files`]).
#[derive(Clone, Debug)]
pub struct RawDataset {
    /// The (first) file.
    pub path: PathBuf,
    /// Each file and the number of its first example, in order (one entry, `(path, 0)`, for a single file).
    pub files: Vec<(PathBuf, usize)>,
    pub format: Format,
    pub examples: Vec<RawExample>,
    /// Rows left out under `skip_invalid` (always empty otherwise).
    pub skipped: Vec<SkippedRow>,
}

impl RawDataset {
    /// The file example `example` was read from.
    pub fn file_of(&self, example: usize) -> &Path {
        let i = self.files.partition_point(|&(_, start)| start <= example);
        &self.files[i.saturating_sub(1)].0
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    pub fn skip_counts(&self) -> SkipCounts {
        SkipCounts::from_rows(&self.skipped)
    }
}

/// Reads a data file.
pub fn read_file(path: impl AsRef<Path>, options: &ReadOptions) -> Result<RawDataset, DataError> {
    let path = path.as_ref();
    let kind = match options.kind.or_else(|| FileKind::from_path(path)) {
        Some(k) => k,
        None if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet")) =>
        {
            return Err(DataError::Config(format!(
                "{}: angle-data was built without its `parquet` feature",
                path.display()
            )));
        }
        None => {
            return Err(DataError::UnknownFileKind {
                path: path.to_path_buf(),
            });
        }
    };
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    #[cfg(feature = "parquet")]
    if kind == FileKind::Parquet {
        // parquet reads the footer first: it needs the file itself, not a stream
        let mut sink = Sink::new(path, options);
        let format = crate::parquet::read_parquet(file, options, &mut sink)?;
        return sink.finish(format);
    }
    read_from(BufReader::new(file), path, kind, options)
}

/// Reads several files as one dataset (the shards of a published dataset, or the files [`data_files`] finds in
/// a folder): examples in file order, each keeping its own line. All files must have the same layout. The result's
/// `path` is the first file's; [`RawDataset::files`] says which examples came from which file.
pub fn read_files(paths: &[PathBuf], options: &ReadOptions) -> Result<RawDataset, DataError> {
    let Some((first, rest)) = paths.split_first() else {
        return Err(DataError::Config("no data files given".into()));
    };
    let mut all = read_file(first, options)?;
    for p in rest {
        let next = read_file(p, options)?;
        if next.format != all.format {
            return Err(DataError::Config(format!(
                "{} is format {:?} but {} is format {:?}: the files of one dataset must share a layout",
                p.display(),
                next.format,
                first.display(),
                all.format
            )));
        }
        let start = all.examples.len();
        all.files.push((next.path, start));
        all.examples.extend(next.examples);
        all.skipped.extend(next.skipped);
    }
    Ok(all)
}

/// Reads data of the given kind from any reader; `path` only names the source in messages.
pub fn read_from<R: Read>(
    mut reader: R,
    path: &Path,
    kind: FileKind,
    options: &ReadOptions,
) -> Result<RawDataset, DataError> {
    let mut sink = Sink::new(path, options);
    let format = match kind {
        FileKind::Csv => read_delimited(reader, b',', true, options, &mut sink)?,
        FileKind::Tsv => read_delimited(reader, b'\t', false, options, &mut sink)?,
        FileKind::Jsonl => read_jsonl(reader, options, &mut sink)?,
        #[cfg(feature = "parquet")]
        FileKind::Parquet => {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).map_err(|source| DataError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            crate::parquet::read_parquet(bytes::Bytes::from(bytes), options, &mut sink)?
        }
    };
    sink.finish(format)
}

/// Collects rows: an example is kept, a row-level error is skipped (if allowed) or returned.
pub(crate) struct Sink {
    pub(crate) path: PathBuf,
    skip: bool,
    examples: Vec<RawExample>,
    skipped: Vec<SkippedRow>,
}

impl Sink {
    fn new(path: &Path, options: &ReadOptions) -> Self {
        Sink {
            path: path.to_path_buf(),
            skip: options.skip_invalid,
            examples: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// The dataset read, or `NoExamples` when no row made an example.
    fn finish(self, format: Option<Format>) -> Result<RawDataset, DataError> {
        let sink = self;
        let Some(format) = format.filter(|_| !sink.examples.is_empty()) else {
            let skipped = if sink.skipped.is_empty() {
                String::new()
            } else {
                format!(" ({})", SkipCounts::from_rows(&sink.skipped))
            };
            return Err(DataError::NoExamples {
                path: sink.path,
                skipped,
            });
        };
        Ok(RawDataset {
            files: vec![(sink.path.clone(), 0)],
            path: sink.path,
            format,
            examples: sink.examples,
            skipped: sink.skipped,
        })
    }

    pub(crate) fn push(&mut self, row: Result<RawExample, DataError>) -> Result<(), DataError> {
        match row {
            Ok(ex) => self.examples.push(ex),
            Err(e) => match (self.skip, e.skip_reason(), e.line()) {
                (true, Some(reason), Some(line)) => self.skipped.push(SkippedRow {
                    line,
                    reason,
                    message: e.to_string(),
                }),
                _ => return Err(e),
            },
        }
        Ok(())
    }
}

/// Where each role of the format sits in a CSV/TSV row, and the column names to report.
struct Columns {
    format: Format,
    /// `(field index, column name for messages)` per role of `format.roles()`.
    fields: Vec<(usize, String)>,
    expected_fields: usize,
}

fn column_layout(
    names: &[String],
    positional: bool,
    options: &ReadOptions,
    path: &Path,
    line: u64,
) -> Result<Columns, DataError> {
    let roles: Vec<Option<Role>> = names.iter().map(|n| options.columns.role_of(n)).collect();
    let has = |r: Role| roles.contains(&Some(r));
    let format = match options.format {
        Some(f) => {
            if !f.roles().iter().all(|&r| has(r)) {
                return Err(DataError::FormatMismatch {
                    path: path.to_path_buf(),
                    format: f,
                    columns: names.to_vec(),
                });
            }
            f
        }
        None => Format::detect(has).map_err(|ambiguous| {
            let (path, columns) = (path.to_path_buf(), names.to_vec());
            if ambiguous {
                DataError::AmbiguousLayout { path, line, columns }
            } else {
                DataError::UnknownLayout { path, line, columns }
            }
        })?,
    };
    let mut fields = Vec::new();
    for &role in format.roles() {
        let found: Vec<usize> = (0..names.len()).filter(|&i| roles[i] == Some(role)).collect();
        if found.len() > 1 {
            return Err(DataError::Config(format!(
                "{}:{line}: columns {:?} all map to `{role}`",
                path.display(),
                found.iter().map(|&i| &names[i]).collect::<Vec<_>>()
            )));
        }
        let i = found[0];
        let name = if positional {
            format!("{} (field {})", names[i].trim(), i + 1)
        } else {
            names[i].trim().to_string()
        };
        fields.push((i, name));
    }
    Ok(Columns {
        format,
        fields,
        expected_fields: names.len(),
    })
}

fn looks_like_name(field: &str) -> bool {
    let f = field.trim();
    !f.is_empty() && f.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

fn default_positional(first: &csv::StringRecord) -> Option<Vec<String>> {
    let is_number = |s: &str| s.trim().parse::<f32>().is_ok_and(|v| v.is_finite());
    let names: &[&str] = match first.len() {
        3 if is_number(&first[0]) && !is_number(&first[2]) => &["label", "text1", "text2"],
        3 => &["text1", "text2", "label"],
        2 => &["query", "positive"],
        _ => return None,
    };
    Some(names.iter().map(|s| s.to_string()).collect())
}

fn read_delimited<R: Read>(
    reader: R,
    delimiter: u8,
    quoting: bool,
    options: &ReadOptions,
    sink: &mut Sink,
) -> Result<Option<Format>, DataError> {
    // The csv crate's own line numbers drift on `\r\n` files (a bad row reported a line early), so lines are
    // counted from the bytes the parser reads: the line of a record is 1 + the newlines before its first byte.
    let lines = Lines::default();
    // `flexible`: a row with the wrong number of fields is our error (naming file and line), not csv's.
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .quoting(quoting)
        .from_reader(LineCounter::new(reader, lines.clone()));
    let path = sink.path.clone();
    let mut layout: Option<Columns> = None;
    let mut record = csv::StringRecord::new();
    loop {
        let start = rdr.position().byte();
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let byte = e.position().map_or(start, |p| p.byte());
                let err = csv_error(&path, lines.line_at(byte), e)?;
                sink.push(Err(err))?;
                continue;
            }
        }
        let line = lines.line_at(record.position().map_or(start, |p| p.byte()));
        let cols = match &layout {
            Some(c) => c,
            None => {
                let first: Vec<String> = record.iter().map(str::to_string).collect();
                let header = match options.header {
                    Header::Present => true,
                    Header::Absent => false,
                    Header::Auto => {
                        let has = |r: Role| first.iter().any(|n| options.columns.role_of(n) == Some(r));
                        match Format::detect(has) {
                            Ok(_) => true,
                            Err(ambiguous) => {
                                ambiguous || options.format.is_some_and(|f| f.roles().iter().all(|&r| has(r)))
                            }
                        }
                    }
                };
                if header {
                    layout = Some(column_layout(&first, false, options, &path, line)?);
                    continue;
                }
                // Format U reads a headerless file's one field as its text (a plain file, one sentence per line).
                let unsupervised = (options.format == Some(Format::U)).then(|| vec!["text".to_string()]);
                let positional = options.positional.clone().or(unsupervised);
                let names = match positional.or_else(|| default_positional(&record)) {
                    Some(n) => n,
                    None => {
                        return Err(DataError::UnknownLayout {
                            path,
                            line,
                            columns: (1..=record.len()).map(|i| format!("field {i}")).collect(),
                        });
                    }
                };
                let cols = layout.insert(column_layout(&names, true, options, &path, line)?);
                let row = delimited_row(&record, line, cols, options, &path);
                // A first row that fails as data and looks like column names is an unrecognised header: say so
                // (with the hint to rename) rather than report a bad label on line 1.
                if row.is_err() && options.header == Header::Auto && record.iter().all(looks_like_name) {
                    return Err(DataError::UnknownLayout {
                        path,
                        line,
                        columns: record.iter().map(str::to_string).collect(),
                    });
                }
                sink.push(row)?;
                continue;
            }
        };
        sink.push(delimited_row(&record, line, cols, options, &path))?;
    }
    Ok(layout.map(|c| c.format))
}

/// Byte offsets of the newlines a [`LineCounter`] has passed on, shared with the loop that reads records.
#[derive(Clone, Default)]
struct Lines(std::rc::Rc<std::cell::RefCell<LineState>>);

#[derive(Default)]
struct LineState {
    /// Offsets of newlines not yet behind a record start (records come in order, so older ones are dropped).
    pending: std::collections::VecDeque<u64>,
    /// Newlines dropped from `pending`.
    passed: u64,
    /// Bytes read so far.
    read: u64,
}

impl Lines {
    /// The 1-based line of a record that starts at byte `offset` (offsets must not decrease between calls). On
    /// `\r\n` files the csv crate puts a record's start on the `\n` that ends the line before: a newline at
    /// `offset` is behind the record.
    fn line_at(&self, offset: u64) -> u64 {
        let mut s = self.0.borrow_mut();
        while s.pending.front().is_some_and(|&nl| nl <= offset) {
            s.pending.pop_front();
            s.passed += 1;
        }
        s.passed + 1
    }
}

/// Passes bytes through, noting where the newlines are.
struct LineCounter<R> {
    inner: R,
    lines: Lines,
}

impl<R> LineCounter<R> {
    fn new(inner: R, lines: Lines) -> Self {
        LineCounter { inner, lines }
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.lines.0.borrow_mut();
        let base = s.read;
        for (i, _) in buf[..n].iter().enumerate().filter(|(_, b)| **b == b'\n') {
            s.pending.push_back(base + i as u64);
        }
        s.read += n as u64;
        Ok(n)
    }
}

/// A csv error at `line`: a row-level `Malformed` (bad UTF-8), or a fatal I/O error.
fn csv_error(path: &Path, line: u64, e: csv::Error) -> Result<DataError, DataError> {
    let message = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(source) => Err(DataError::Io {
            path: path.to_path_buf(),
            source,
        }),
        _ => Ok(DataError::Malformed {
            path: path.to_path_buf(),
            line,
            message,
        }),
    }
}

fn delimited_row(
    record: &csv::StringRecord,
    line: u64,
    cols: &Columns,
    options: &ReadOptions,
    path: &Path,
) -> Result<RawExample, DataError> {
    if record.len() != cols.expected_fields {
        return Err(DataError::FieldCount {
            path: path.to_path_buf(),
            line,
            expected: cols.expected_fields,
            found: record.len(),
        });
    }
    let mut texts = Vec::with_capacity(cols.format.texts_per_example());
    let mut label = None;
    for (&role, (i, name)) in cols.format.roles().iter().zip(&cols.fields) {
        let value = &record[*i];
        if role == Role::Label {
            label = Some(parse_label(value, options, path, line, name)?);
        } else {
            texts.push(vec![check_text(value, path, line, name)?]);
        }
    }
    Ok(RawExample { line, texts, label })
}

fn check_text(value: &str, path: &Path, line: u64, column: &str) -> Result<String, DataError> {
    if value.trim().is_empty() {
        return Err(DataError::EmptyText {
            path: path.to_path_buf(),
            line,
            column: column.to_string(),
        });
    }
    Ok(value.to_string())
}

fn parse_label(
    value: &str,
    options: &ReadOptions,
    path: &Path,
    line: u64,
    column: &str,
) -> Result<f32, DataError> {
    let v = match value.trim().parse::<f32>() {
        Ok(v) if v.is_finite() => v,
        _ => {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                line,
                column: column.to_string(),
                value: value.to_string(),
            });
        }
    };
    check_range(v, options, path, line, column)
}

fn check_range(
    v: f32,
    options: &ReadOptions,
    path: &Path,
    line: u64,
    column: &str,
) -> Result<f32, DataError> {
    if let Some((min, max)) = options.label_range
        && !(min..=max).contains(&v)
    {
        return Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            line,
            column: column.to_string(),
            value: v,
            min,
            max,
        });
    }
    Ok(v)
}

fn read_jsonl<R: Read>(
    reader: R,
    options: &ReadOptions,
    sink: &mut Sink,
) -> Result<Option<Format>, DataError> {
    let path = sink.path.clone();
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    let mut line = 0u64;
    let mut format = options.format;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| DataError::Io {
                path: path.clone(),
                source,
            })?;
        if n == 0 {
            break;
        }
        line += 1;
        let mut bytes = &buf[..];
        if line == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row = json_row(bytes, line, &mut format, options, &path);
        if let Err(e @ (DataError::UnknownLayout { .. } | DataError::AmbiguousLayout { .. })) = row {
            return Err(e);
        }
        sink.push(row)?;
    }
    Ok(format)
}

fn json_row(
    bytes: &[u8],
    line: u64,
    format: &mut Option<Format>,
    options: &ReadOptions,
    path: &Path,
) -> Result<RawExample, DataError> {
    let malformed = |message: String| DataError::Malformed {
        path: path.to_path_buf(),
        line,
        message,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let serde_json::Value::Object(obj) = value else {
        return Err(malformed("not a JSON object".into()));
    };
    let format = match *format {
        Some(f) => f,
        None => {
            let f = detect_named(obj.keys().map(String::as_str), options).map_err(|ambiguous| {
                let columns = obj.keys().cloned().collect();
                let path = path.to_path_buf();
                if ambiguous {
                    DataError::AmbiguousLayout { path, line, columns }
                } else {
                    DataError::UnknownLayout { path, line, columns }
                }
            })?;
            *format = Some(f);
            f
        }
    };
    object_example(format, line, options, path, |role| {
        let mut keys = obj.keys().filter(|k| options.columns.role_of(k) == Some(role));
        let Some(key) = keys.next() else {
            return Err(DataError::MissingColumn {
                path: path.to_path_buf(),
                line,
                column: role.name().to_string(),
            });
        };
        if let Some(other) = keys.next() {
            return Err(DataError::BadField {
                path: path.to_path_buf(),
                line,
                column: key.clone(),
                message: format!("`{key}` and `{other}` both map to `{role}`"),
            });
        }
        Ok((key.as_str(), &obj[key]))
    })
}

/// The layout named by a row's keys or a schema's columns (after renaming); `Err(ambiguous)` as
/// [`Format::detect`].
pub(crate) fn detect_named<'a>(
    names: impl Iterator<Item = &'a str> + Clone,
    options: &ReadOptions,
) -> Result<Format, bool> {
    Format::detect(|r: Role| names.clone().any(|k| options.columns.role_of(k) == Some(r)))
}

/// An example from named values, as JSONL objects and parquet rows have them: `value_of(role)` gives the column
/// name (for messages) and the value of each role of `format`. Text values are strings or non-empty lists of
/// strings (alternatives); labels numbers or numeric strings; nulls are refused.
pub(crate) fn object_example<'v>(
    format: Format,
    line: u64,
    options: &ReadOptions,
    path: &Path,
    mut value_of: impl FnMut(Role) -> Result<(&'v str, &'v serde_json::Value), DataError>,
) -> Result<RawExample, DataError> {
    let mut texts = Vec::with_capacity(format.texts_per_example());
    let mut label = None;
    for &role in format.roles() {
        let (key, value) = value_of(role)?;
        if value.is_null() {
            return Err(DataError::BadField {
                path: path.to_path_buf(),
                line,
                column: key.to_string(),
                message: "null value".into(),
            });
        }
        if role == Role::Label {
            label = Some(json_label(value, options, path, line, key)?);
        } else {
            texts.push(json_texts(value, path, line, key)?);
        }
    }
    Ok(RawExample { line, texts, label })
}

fn json_label(
    value: &serde_json::Value,
    options: &ReadOptions,
    path: &Path,
    line: u64,
    key: &str,
) -> Result<f32, DataError> {
    match value {
        serde_json::Value::String(s) => parse_label(s, options, path, line, key),
        serde_json::Value::Number(n) => match n.as_f64().map(|v| v as f32) {
            Some(v) if v.is_finite() => check_range(v, options, path, line, key),
            _ => Err(DataError::BadLabel {
                path: path.to_path_buf(),
                line,
                column: key.to_string(),
                value: n.to_string(),
            }),
        },
        other => Err(DataError::BadLabel {
            path: path.to_path_buf(),
            line,
            column: key.to_string(),
            value: other.to_string(),
        }),
    }
}

fn json_texts(
    value: &serde_json::Value,
    path: &Path,
    line: u64,
    key: &str,
) -> Result<Vec<String>, DataError> {
    let bad = |message: &str| DataError::BadField {
        path: path.to_path_buf(),
        line,
        column: key.to_string(),
        message: message.to_string(),
    };
    match value {
        serde_json::Value::String(s) => Ok(vec![check_text(s, path, line, key)?]),
        serde_json::Value::Array(items) if items.is_empty() => Err(bad("empty list of texts")),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => check_text(s, path, line, key),
                _ => Err(bad("a list of texts must hold only strings")),
            })
            .collect(),
        _ => Err(bad("expected a string or a list of strings")),
    }
}
