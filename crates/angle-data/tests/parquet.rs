//! Parquet files written in the test by the `parquet` crate's writer (every layout, lists, renamed columns, row
//! groups, nulls, bad rows), one fixture written by a real pyarrow (`scripts/parquet_fixtures.py`), and several
//! files read as one dataset.
#![cfg(feature = "parquet")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use angle_data::{
    ColumnMap, DataError, FileKind, Format, ReadOptions, SkipReason, data_files, read_file, read_files,
    read_from,
};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// One column of one row group.
#[derive(Clone)]
enum Col {
    Str(&'static str, Vec<Option<&'static str>>),
    Double(&'static str, Vec<Option<f64>>),
    Int(&'static str, Vec<i32>),
    /// A list of strings per row (pyarrow's three-level LIST).
    List(&'static str, Vec<Vec<&'static str>>),
}

impl Col {
    fn schema(&self) -> String {
        match self {
            Col::Str(n, _) => format!("OPTIONAL BYTE_ARRAY {n} (UTF8);"),
            Col::Double(n, _) => format!("OPTIONAL DOUBLE {n};"),
            Col::Int(n, _) => format!("REQUIRED INT32 {n};"),
            Col::List(n, _) => {
                format!(
                    "OPTIONAL GROUP {n} (LIST) {{ REPEATED GROUP list {{ OPTIONAL BYTE_ARRAY element (UTF8); }} }}"
                )
            }
        }
    }
}

/// Writes row groups of columns (the same columns in each) as a snappy parquet file.
fn write(dir: &Path, name: &str, groups: &[Vec<Col>]) -> PathBuf {
    let path = dir.join(name);
    let fields: String = groups[0].iter().map(Col::schema).collect::<Vec<_>>().join(" ");
    let schema = Arc::new(parse_message_type(&format!("message schema {{ {fields} }}")).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut w = SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, props).unwrap();
    for cols in groups {
        let mut rg = w.next_row_group().unwrap();
        for col in cols {
            let mut c = rg.next_column().unwrap().unwrap();
            match col {
                Col::Str(_, v) => {
                    let vals: Vec<ByteArray> = v.iter().flatten().map(|s| ByteArray::from(*s)).collect();
                    let defs: Vec<i16> = v.iter().map(|s| i16::from(s.is_some())).collect();
                    c.typed::<ByteArrayType>()
                        .write_batch(&vals, Some(&defs), None)
                        .unwrap();
                }
                Col::Double(_, v) => {
                    let vals: Vec<f64> = v.iter().flatten().copied().collect();
                    let defs: Vec<i16> = v.iter().map(|s| i16::from(s.is_some())).collect();
                    c.typed::<DoubleType>()
                        .write_batch(&vals, Some(&defs), None)
                        .unwrap();
                }
                Col::Int(_, v) => {
                    c.typed::<Int32Type>().write_batch(v, None, None).unwrap();
                }
                Col::List(_, rows) => {
                    let (mut vals, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
                    for row in rows {
                        if row.is_empty() {
                            defs.push(1);
                            reps.push(0);
                        }
                        for (i, s) in row.iter().enumerate() {
                            vals.push(ByteArray::from(*s));
                            defs.push(3);
                            reps.push(i16::from(i > 0));
                        }
                    }
                    c.typed::<ByteArrayType>()
                        .write_batch(&vals, Some(&defs), Some(&reps))
                        .unwrap();
                }
            }
            c.close().unwrap();
        }
        rg.close().unwrap();
    }
    w.close().unwrap();
    path
}

fn s(v: &[&'static str]) -> Vec<Option<&'static str>> {
    v.iter().map(|s| Some(*s)).collect()
}

fn texts(ds: &angle_data::RawDataset, i: usize) -> Vec<Vec<&str>> {
    ds.examples[i]
        .texts
        .iter()
        .map(|alts| alts.iter().map(String::as_str).collect())
        .collect()
}

/// Format A in two row groups: lines count rows over the whole file.
fn layout_a(dir: &Path, name: &str, bad: Option<&'static str>) -> PathBuf {
    let g1 = vec![
        Col::Str("text1", s(&["a", "b", "c"])),
        Col::Str("text2", s(&["x", "y", "z"])),
        Col::Str("label", s(&["1", "0.5", "0"])),
    ];
    let g2 = vec![
        Col::Str("text1", s(&["d", "e"])),
        Col::Str("text2", s(&["w", "v"])),
        Col::Str("label", s(&["2", bad.unwrap_or("3")])),
    ];
    write(dir, name, &[g1, g2])
}

#[test]
fn extension_is_detected() {
    assert_eq!(
        FileKind::from_path(Path::new("x/train-00000-of-00004.parquet")),
        Some(FileKind::Parquet)
    );
    assert_eq!(
        FileKind::from_path(Path::new("T.PARQUET")),
        Some(FileKind::Parquet)
    );
}

#[test]
fn layout_a_over_row_groups_with_numeric_strings() {
    let dir = tempfile::tempdir().unwrap();
    let p = layout_a(dir.path(), "a.parquet", None);
    let ds = read_file(&p, &ReadOptions::default()).unwrap();
    assert_eq!(ds.format, Format::A);
    assert_eq!(ds.len(), 5);
    assert_eq!(texts(&ds, 3), vec![vec!["d"], vec!["w"]]);
    let labels: Vec<f32> = ds.examples.iter().map(|e| e.label.unwrap()).collect();
    assert_eq!(labels, vec![1.0, 0.5, 0.0, 2.0, 3.0]);
    let lines: Vec<u64> = ds.examples.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![1, 2, 3, 4, 5]);
    // the same bytes through `read_from`
    let bytes = std::fs::read(&p).unwrap();
    let again = read_from(&bytes[..], &p, FileKind::Parquet, &ReadOptions::default()).unwrap();
    assert_eq!(again.examples, ds.examples);
}

#[test]
fn layout_b_with_a_list_column_and_an_ignored_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "b.parquet",
        &[vec![
            Col::Int("id", vec![7, 8]),
            Col::Str("query", s(&["q1", "q2"])),
            Col::List("positive", vec![vec!["p1", "p1b"], vec!["p2"]]),
        ]],
    );
    let ds = read_file(&p, &ReadOptions::default()).unwrap();
    assert_eq!(ds.format, Format::B);
    assert_eq!(texts(&ds, 0), vec![vec!["q1"], vec!["p1", "p1b"]]);
    assert_eq!(texts(&ds, 1), vec![vec!["q2"], vec!["p2"]]);
    assert_eq!(ds.examples[0].label, None);
}

#[test]
fn layout_c_and_an_empty_list() {
    let dir = tempfile::tempdir().unwrap();
    let cols = vec![
        Col::Str("query", s(&["q1", "q2"])),
        Col::Str("positive", s(&["p1", "p2"])),
        Col::List("negative", vec![vec!["n1"], vec![]]),
    ];
    let p = write(dir.path(), "c.parquet", &[cols]);
    let e = read_file(&p, &ReadOptions::default()).unwrap_err();
    assert_eq!(e.line(), Some(2), "{e}");
    assert!(
        e.to_string().contains("column `negative`: empty list of texts"),
        "{e}"
    );
    let ds = read_file(
        &p,
        &ReadOptions {
            skip_invalid: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ds.format, Format::C);
    assert_eq!(texts(&ds, 0), vec![vec!["q1"], vec!["p1"], vec!["n1"]]);
    assert_eq!(ds.skipped.len(), 1);
}

#[test]
fn renamed_columns_with_double_and_int_scores() {
    let dir = tempfile::tempdir().unwrap();
    let map: ColumnMap = "sentence1:text1,sentence2:text2,score:label".parse().unwrap();
    let options = ReadOptions {
        columns: map,
        label_range: Some((0.0, 5.0)),
        ..Default::default()
    };
    let p = write(
        dir.path(),
        "sts.parquet",
        &[vec![
            Col::Str("sentence1", s(&["a", "b"])),
            Col::Str("sentence2", s(&["x", "y"])),
            Col::Double("score", vec![Some(4.5), Some(0.25)]),
        ]],
    );
    let ds = read_file(&p, &options).unwrap();
    assert_eq!(ds.format, Format::A);
    assert_eq!(ds.examples[1].label, Some(0.25));
    let q = write(
        dir.path(),
        "int.parquet",
        &[vec![
            Col::Str("sentence1", s(&["a", "b"])),
            Col::Str("sentence2", s(&["x", "y"])),
            Col::Int("score", vec![5, 7]),
        ]],
    );
    let e = read_file(&q, &options).unwrap_err();
    assert!(
        matches!(e.skip_reason(), Some(SkipReason::LabelOutOfRange)),
        "{e}"
    );
    assert_eq!(e.line(), Some(2));
    // without the mapping the schema names no layout: one error naming the file and the columns
    let e = read_file(&p, &ReadOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataError::SchemaLayout { .. }), "{msg}");
    assert!(
        msg.contains("sts.parquet") && msg.contains("sentence1") && msg.contains("score"),
        "{msg}"
    );
}

#[test]
fn a_bad_label_in_row_group_2_names_row_and_row_group() {
    let dir = tempfile::tempdir().unwrap();
    let p = layout_a(dir.path(), "train.parquet", Some("high"));
    let e = read_file(&p, &ReadOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{}:5: column `label`", p.display())),
        "{msg}"
    );
    assert!(
        msg.contains("\"high\"") && msg.ends_with("(row group 2 of 2)"),
        "{msg}"
    );
    assert_eq!(e.line(), Some(5));
    assert_eq!(e.skip_reason(), Some(SkipReason::BadLabel));

    let ds = read_file(
        &p,
        &ReadOptions {
            skip_invalid: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.skipped.len(), 1);
    assert_eq!(ds.skipped[0].line, 5);
    assert_eq!(ds.skipped[0].reason, SkipReason::BadLabel);
    assert!(ds.skipped[0].message.contains("row group 2 of 2"));
}

#[test]
fn nulls_and_empty_texts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "nulls.parquet",
        &[vec![
            Col::Str("text1", vec![Some("a"), None, Some("c"), Some(" ")]),
            Col::Str("text2", s(&["x", "y", "z", "w"])),
            Col::Double("label", vec![Some(1.0), Some(1.0), None, Some(1.0)]),
        ]],
    );
    let e = read_file(&p, &ReadOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains(":2: column `text1`: null value (row group 1 of 1)"),
        "{e}"
    );
    let ds = read_file(
        &p,
        &ReadOptions {
            skip_invalid: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ds.len(), 1);
    let skipped: Vec<(u64, SkipReason)> = ds.skipped.iter().map(|s| (s.line, s.reason)).collect();
    assert_eq!(
        skipped,
        vec![
            (2, SkipReason::BadField),
            (3, SkipReason::BadField),
            (4, SkipReason::EmptyText)
        ]
    );
    assert!(ds.skipped[1].message.contains("column `label`: null value"));
}

#[test]
fn not_parquet_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.parquet");
    std::fs::write(&p, "text1,text2,label\n").unwrap();
    let e = read_file(&p, &ReadOptions::default()).unwrap_err();
    assert!(matches!(e, DataError::Parquet { .. }), "{e}");
    assert!(e.to_string().contains("junk.parquet"), "{e}");
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[test]
fn pyarrow_snappy_file_in_the_hugging_face_sts_layout() {
    let options = ReadOptions {
        columns: "sentence1:text1,sentence2:text2,score:label".parse().unwrap(),
        ..Default::default()
    };
    let ds = read_file(fixture("pyarrow-a.parquet"), &options).unwrap();
    assert_eq!(ds.format, Format::A);
    assert_eq!(ds.len(), 5);
    assert_eq!(
        texts(&ds, 0),
        vec![
            vec!["A plane is taking off."],
            vec!["An air plane is taking off."]
        ]
    );
    assert_eq!(texts(&ds, 4), vec![vec!["Rain."], vec!["Sun."]]);
    let labels: Vec<f32> = ds.examples.iter().map(|e| e.label.unwrap()).collect();
    assert_eq!(labels, vec![5.0, 3.8, 0.5, 4.2, 0.0]);
    assert_eq!(ds.examples[3].line, 4);
}

#[test]
fn an_unsupported_codec_names_the_file_and_the_codec() {
    let options = ReadOptions {
        columns: "sentence1:text1,sentence2:text2,score:label".parse().unwrap(),
        ..Default::default()
    };
    let e = read_file(fixture("pyarrow-gzip.parquet"), &options).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("pyarrow-gzip.parquet") && msg.contains("GZIP"),
        "{msg}"
    );
}

#[test]
fn shards_in_a_folder_read_as_one_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let shard = |name: &str, a: &'static str| {
        write(
            dir.path(),
            name,
            &[vec![
                Col::Str("query", s(&[a, "q"])),
                Col::Str("positive", s(&["p", "p2"])),
            ]],
        )
    };
    let second = shard("train-00001-of-00002.parquet", "second");
    let first = shard("train-00000-of-00002.parquet", "first");
    std::fs::write(dir.path().join(".hidden.csv"), "x").unwrap();
    std::fs::write(dir.path().join("README.md"), "x").unwrap();
    let files = data_files(dir.path()).unwrap();
    assert_eq!(files, vec![first.clone(), second.clone()]);
    assert_eq!(data_files(&first).unwrap(), vec![first.clone()]);

    let ds = read_files(&files, &ReadOptions::default()).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.examples[2].texts[0], vec!["second".to_string()]);
    assert_eq!(ds.examples[2].line, 1);
    assert_eq!(ds.file_of(1), first.as_path());
    assert_eq!(ds.file_of(2), second.as_path());

    // a shard of another layout is refused, naming both files
    let other = layout_a(dir.path(), "train-00002-of-00002.parquet", None);
    let e = read_files(&[first.clone(), other.clone()], &ReadOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&*first.to_string_lossy()) && msg.contains(&*other.to_string_lossy()),
        "{msg}"
    );

    let empty = tempfile::tempdir().unwrap();
    let e = data_files(empty.path()).unwrap_err();
    assert!(e.to_string().contains(&*empty.path().to_string_lossy()), "{e}");
}
