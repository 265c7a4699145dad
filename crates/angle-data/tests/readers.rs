//! Readers on small files written to a temporary folder: every layout, every detection path, every error path.

use std::path::{Path, PathBuf};

use angle_data::{
    ColumnMap, DataError, FileKind, Format, Header, Prompt, Prompts, RawDataset, ReadOptions, Role,
    SkipReason, read_file, read_from,
};
use proptest::prelude::*;

struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Files(tempfile::tempdir().unwrap())
    }
    fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

fn read(path: &Path) -> RawDataset {
    read_file(path, &ReadOptions::default()).unwrap()
}

fn err(path: &Path, options: &ReadOptions) -> DataError {
    read_file(path, options).unwrap_err()
}

fn texts(ds: &RawDataset, i: usize) -> Vec<&str> {
    ds.examples[i].texts.iter().map(|alts| alts[0].as_str()).collect()
}

/// The message names the file, the line and (where given) the column.
fn assert_names(e: &DataError, path: &Path, line: u64, column: Option<&str>) {
    let msg = e.to_string();
    assert!(msg.contains(&format!("{}:{line}:", path.display())), "{msg}");
    assert_eq!(e.line(), Some(line), "{msg}");
    if let Some(c) = column {
        assert!(msg.contains(c), "{msg} should name column {c}");
    }
}

#[test]
fn csv_with_header_detects_each_format() {
    let f = Files::new();
    let a = read(&f.write(
        "a.csv",
        "text1,text2,label\nhello,hi,1\n\"a, b\",\"say \"\"x\"\"\",0.5\n",
    ));
    assert_eq!(a.format, Format::A);
    assert_eq!(a.len(), 2);
    assert_eq!(texts(&a, 1), ["a, b", "say \"x\""]);
    assert_eq!(a.examples[1].label, Some(0.5));
    assert_eq!(a.examples[1].line, 3);

    let b = read(&f.write("b.csv", "query,positive\nq,p\n"));
    assert_eq!(
        (b.format, texts(&b, 0), b.examples[0].label),
        (Format::B, vec!["q", "p"], None)
    );

    // Column order does not matter; unknown columns are ignored.
    let c = read(&f.write("c.csv", "id,negative,query,positive\n7,n,q,p\n"));
    assert_eq!((c.format, texts(&c, 0)), (Format::C, vec!["q", "p", "n"]));
}

#[test]
fn column_mapping_renames_headers_and_keys() {
    let f = Files::new();
    let map: ColumnMap = "sentence1:text1,sentence2:text2,score:label".parse().unwrap();
    let options = ReadOptions {
        columns: map.clone(),
        ..Default::default()
    };
    let csv = f.write("m.csv", "sentence1,sentence2,score\nx,y,3\n");
    let ds = read_file(&csv, &options).unwrap();
    assert_eq!(
        (ds.format, texts(&ds, 0), ds.examples[0].label),
        (Format::A, vec!["x", "y"], Some(3.0))
    );
    let jsonl = f.write(
        "m.jsonl",
        "{\"sentence1\": \"x\", \"sentence2\": \"y\", \"score\": 3}\n",
    );
    let ds = read_file(&jsonl, &options).unwrap();
    assert_eq!(
        (ds.format, texts(&ds, 0), ds.examples[0].label),
        (Format::A, vec!["x", "y"], Some(3.0))
    );
    // Without the mapping these columns name no layout.
    assert!(matches!(
        err(&csv, &ReadOptions::default()),
        DataError::UnknownLayout { .. } | DataError::FieldCount { .. }
    ));
    assert_eq!(map.role_of("score"), Some(Role::Label));
    assert_eq!(map.role_of("query"), Some(Role::Query));

    for bad in ["sentence1", "a:b", ":text1", "a:text1,a:text2"] {
        let e = bad.parse::<ColumnMap>().unwrap_err();
        assert!(matches!(e, DataError::ColumnMap { .. }), "{bad}: {e}");
    }
    assert!("".parse::<ColumnMap>().unwrap().is_empty());
}

#[test]
fn headerless_csv_by_position_with_quotes_and_newlines() {
    let f = Files::new();
    let p = f.write(
        "h.csv",
        "A man.,\"A man, walking.\",4.5\n\"multi\nline\",b,0\nc,d,5.0\n",
    );
    let ds = read(&p);
    assert_eq!(ds.format, Format::A);
    assert_eq!(texts(&ds, 0), ["A man.", "A man, walking."]);
    assert_eq!(texts(&ds, 1), ["multi\nline", "b"]);
    assert_eq!(ds.examples.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 2, 4]);
    // Explicit: the same file with `Header::Absent`, or positions named by the caller.
    let absent = ReadOptions {
        header: Header::Absent,
        ..Default::default()
    };
    assert_eq!(read_file(&p, &absent).unwrap().examples, ds.examples);
    let named = ReadOptions {
        positional: Some(vec!["s1".into(), "s2".into(), "score".into()]),
        columns: "s1:text1,s2:text2,score:label".parse().unwrap(),
        ..Default::default()
    };
    assert_eq!(read_file(&p, &named).unwrap().examples, ds.examples);
    // A headerless format-C file needs its positions named.
    let c = f.write("c.csv", "q,p,n\n");
    let named = ReadOptions {
        header: Header::Absent,
        positional: Some(vec!["query".into(), "positive".into(), "negative".into()]),
        ..Default::default()
    };
    let ds = read_file(&c, &named).unwrap();
    assert_eq!((ds.format, texts(&ds, 0)), (Format::C, vec!["q", "p", "n"]));
    // Two fields without a header: query, positive.
    let ds = read(&f.write("b.csv", "q,p\nq2,p2\n"));
    assert_eq!((ds.format, ds.len()), (Format::B, 2));
}

#[test]
fn sts_tsv_and_tsv_with_header() {
    let f = Files::new();
    // SentEval style: score first; quotes are plain characters in TSV.
    let p = f.write("sts.tsv", "4.0\tA \"quoted\" man.\tA man.\n0.5\tx\ty\n");
    for options in [ReadOptions::default(), ReadOptions::sts_tsv()] {
        let ds = read_file(&p, &options).unwrap();
        assert_eq!(ds.format, Format::A);
        assert_eq!(texts(&ds, 0), ["A \"quoted\" man.", "A man."]);
        assert_eq!(ds.examples[1].label, Some(0.5));
    }
    let ds = read(&f.write("h.tsv", "query\tpositive\tnegative\nq\tp, with comma\tn\n"));
    assert_eq!(
        (ds.format, texts(&ds, 0)),
        (Format::C, vec!["q", "p, with comma", "n"])
    );
    // `.txt` reads as TSV; an explicit kind overrides the extension.
    let ds = read(&f.write("s.txt", "1\ta\tb\n"));
    assert_eq!(ds.examples[0].label, Some(1.0));
    let weird = f.write("data.dat", "text1,text2,label\na,b,1\n");
    assert!(matches!(
        err(&weird, &ReadOptions::default()),
        DataError::UnknownFileKind { .. }
    ));
    let opts = ReadOptions {
        kind: Some(FileKind::Csv),
        ..Default::default()
    };
    assert_eq!(read_file(&weird, &opts).unwrap().len(), 1);
}

#[test]
fn jsonl_formats_and_list_fields() {
    let f = Files::new();
    let p = f.write(
        "d.jsonl",
        "{\"query\": \"q1\", \"positive\": [\"p1\", \"p2\", \"p3\"], \"extra\": 1}\n\n  \n{\"query\": \"q2\", \"positive\": \"p\"}\r\n",
    );
    let ds = read(&p);
    assert_eq!(ds.format, Format::B);
    assert_eq!(ds.examples[0].texts[1], ["p1", "p2", "p3"]);
    assert_eq!(ds.examples[1].line, 4);
    assert_eq!(texts(&ds, 1), ["q2", "p"]);
    let ds = read(&f.write(
        "a.jsonl",
        "\u{feff}{\"text1\": \"a\", \"text2\": \"b\", \"label\": \"0.25\"}\n",
    ));
    assert_eq!((ds.format, ds.examples[0].label), (Format::A, Some(0.25)));
    let ds = read(&f.write(
        "c.jsonl",
        "{\"query\": \"a\", \"positive\": \"b\", \"negative\": [\"c\"]}",
    ));
    assert_eq!(ds.format, Format::C);
}

#[test]
fn explicit_format_and_layout_errors() {
    let f = Files::new();
    let both = f.write("both.csv", "text1,text2,label,query,positive\na,b,1,c,d\n");
    assert!(matches!(
        err(&both, &ReadOptions::default()),
        DataError::AmbiguousLayout { .. }
    ));
    let opts = ReadOptions {
        format: Some(Format::B),
        ..Default::default()
    };
    assert_eq!(texts(&read_file(&both, &opts).unwrap(), 0), ["c", "d"]);
    let opts = ReadOptions {
        format: Some(Format::C),
        header: Header::Present,
        ..Default::default()
    };
    assert!(matches!(err(&both, &opts), DataError::FormatMismatch { .. }));
    let none = f.write("none.csv", "a,b,c,d\n1,2,3,4\n");
    let e = err(&none, &ReadOptions::default());
    assert!(matches!(e, DataError::UnknownLayout { line: 1, .. }), "{e}");
    let e = err(&f.write("none.jsonl", "{\"a\": 1}\n"), &ReadOptions::default());
    assert!(matches!(e, DataError::UnknownLayout { line: 1, .. }), "{e}");
    for empty in ["empty.csv", "empty.jsonl", "header.csv"] {
        let content = if empty == "header.csv" {
            "text1,text2,label\n"
        } else {
            ""
        };
        let e = err(&f.write(empty, content), &ReadOptions::default());
        assert!(matches!(e, DataError::NoExamples { .. }), "{e}");
    }
    let e = err(&f.0.path().join("missing.csv"), &ReadOptions::default());
    assert!(
        matches!(e, DataError::Io { .. }) && e.to_string().contains("missing.csv"),
        "{e}"
    );
}

/// Each bad row: the error names file, line and column; with `skip_invalid` the row is skipped and counted.
#[test]
fn bad_rows_are_errors_or_counted_skips() {
    let f = Files::new();
    let range = Some((0.0, 5.0));
    let cases: Vec<(&str, &str, u64, Option<&str>, SkipReason)> = vec![
        (
            "fields.csv",
            "text1,text2,label\na,b,1\na,b\nc,d,2\n",
            3,
            None,
            SkipReason::FieldCount,
        ),
        (
            "extra.csv",
            "text1,text2,label\na,b,1,9\nc,d,2\n",
            2,
            None,
            SkipReason::FieldCount,
        ),
        (
            "label.csv",
            "text1,text2,label\na,b,high\nc,d,2\n",
            2,
            Some("label"),
            SkipReason::BadLabel,
        ),
        (
            "nan.csv",
            "text1,text2,label\na,b,NaN\nc,d,2\n",
            2,
            Some("label"),
            SkipReason::BadLabel,
        ),
        (
            "range.csv",
            "a,b,1\nc,d,7.5\ne,f,2\n",
            2,
            Some("label (field 3)"),
            SkipReason::LabelOutOfRange,
        ),
        (
            "empty.csv",
            "text1,text2,label\na,b,1\nc,\"  \",2\n",
            3,
            Some("text2"),
            SkipReason::EmptyText,
        ),
        ("utf8.csv", "", 3, None, SkipReason::Malformed),
        (
            "tsv.tsv",
            "1\ta\tb\n2\t\tb\n",
            2,
            Some("text1 (field 2)"),
            SkipReason::EmptyText,
        ),
        (
            "json.jsonl",
            "{\"query\":\"q\",\"positive\":\"p\"}\n{\"query\": \"q\",\n",
            2,
            None,
            SkipReason::Malformed,
        ),
        (
            "array.jsonl",
            "{\"query\":\"q\",\"positive\":\"p\"}\n[1,2]\n",
            2,
            None,
            SkipReason::Malformed,
        ),
        (
            "missing.jsonl",
            "{\"query\":\"q\",\"positive\":\"p\"}\n{\"query\":\"q\"}\n",
            2,
            Some("positive"),
            SkipReason::MissingColumn,
        ),
        (
            "type.jsonl",
            "{\"query\":\"q\",\"positive\":\"p\"}\n{\"query\":\"q\",\"positive\":3}\n",
            2,
            Some("positive"),
            SkipReason::BadField,
        ),
        (
            "list.jsonl",
            "{\"query\":\"q\",\"positive\":\"p\"}\n{\"query\":\"q\",\"positive\":[]}\n",
            2,
            Some("positive"),
            SkipReason::BadField,
        ),
        (
            "jlabel.jsonl",
            "{\"text1\":\"a\",\"text2\":\"b\",\"label\":1}\n{\"text1\":\"a\",\"text2\":\"b\",\"label\":true}\n",
            2,
            Some("label"),
            SkipReason::BadLabel,
        ),
        (
            "jrange.jsonl",
            "{\"text1\":\"a\",\"text2\":\"b\",\"label\":1}\n{\"text1\":\"a\",\"text2\":\"b\",\"label\":-1}\n",
            2,
            Some("label"),
            SkipReason::LabelOutOfRange,
        ),
        (
            "jempty.jsonl",
            "{\"query\":\"q\",\"positive\":\"p\"}\n{\"query\":\"\",\"positive\":\"p\"}\n",
            2,
            Some("query"),
            SkipReason::EmptyText,
        ),
    ];
    for (name, content, line, column, reason) in cases {
        // The invalid-UTF-8 case is written as raw bytes.
        let bytes: Vec<u8> = if name == "utf8.csv" {
            b"text1,text2,label\na,b,1\nc,\xff\xfe,2\n".to_vec()
        } else {
            content.as_bytes().to_vec()
        };
        let p = f.write(name, bytes);
        let strict = ReadOptions {
            label_range: range,
            ..Default::default()
        };
        let e = err(&p, &strict);
        assert_eq!(e.skip_reason(), Some(reason), "{name}: {e}");
        assert_names(&e, &p, line, column);

        let lenient = ReadOptions {
            skip_invalid: true,
            ..strict
        };
        let ds = read_file(&p, &lenient).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ds.skipped.len(), 1, "{name}");
        assert_eq!(
            (ds.skipped[0].line, ds.skipped[0].reason),
            (line, reason),
            "{name}"
        );
        assert!(ds.skipped[0].message.contains(&format!(":{line}:")));
        let counts = ds.skip_counts();
        assert_eq!((counts.total, counts.get(reason)), (1, 1));
        assert!(counts.to_string().starts_with("1 row skipped ("), "{counts}");
        assert!(!ds.is_empty());
    }
}

#[test]
fn all_rows_skipped_is_an_error_that_says_so() {
    let f = Files::new();
    let p = f.write("bad.csv", "text1,text2,label\na,b,x\nc,d,y\n");
    let opts = ReadOptions {
        skip_invalid: true,
        ..Default::default()
    };
    let e = err(&p, &opts);
    assert!(
        e.to_string().contains("2 rows skipped (2 unparsable label)"),
        "{e}"
    );
}

#[test]
fn prompts_need_a_placeholder_and_apply_per_role() {
    assert!(matches!(
        Prompt::new("no placeholder"),
        Err(DataError::Prompt { .. })
    ));
    let prompts = Prompts::from_templates(Some("T: {text}"), Some("Q: {text}"), Some("D: {text}")).unwrap();
    assert_eq!(prompts.apply(Role::Text1, "x"), "T: x");
    assert_eq!(prompts.apply(Role::Text2, "x"), "T: x");
    assert_eq!(prompts.apply(Role::Query, "x"), "Q: x");
    assert_eq!(prompts.apply(Role::Positive, "x"), "D: x");
    assert_eq!(prompts.apply(Role::Negative, "x"), "D: x");
    assert_eq!(Prompts::default().apply(Role::Query, "x"), "x");
    assert!(Prompts::from_templates(None, Some("oops"), None).is_err());
}

/// Quotes, separators, tabs, newlines and non-ASCII: the kinds of characters that break hand-rolled readers.
fn field() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('"'),
            Just(','),
            Just('\t'),
            Just('\n'),
            Just('\r'),
            Just(' '),
            Just('é'),
            Just('{'),
            Just('\\'),
            proptest::char::range('a', 'e')
        ],
        0..12,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn check_outcome(r: Result<RawDataset, DataError>) -> Result<(), TestCaseError> {
    match r {
        Ok(ds) => prop_assert!(!ds.examples.is_empty()),
        Err(DataError::NoExamples { .. }) => {}
        Err(e) => prop_assert!(e.line().is_some(), "error without a line: {e}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes: never a panic; a dataset, or an error with a line number.
    #[test]
    fn readers_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300), skip in any::<bool>()) {
        for kind in [FileKind::Csv, FileKind::Tsv, FileKind::Jsonl] {
            let opts = ReadOptions { skip_invalid: skip, label_range: Some((0.0, 5.0)), ..Default::default() };
            check_outcome(read_from(bytes.as_slice(), Path::new("fuzz"), kind, &opts))?;
        }
    }

    /// Random rows of nasty fields, written with correct CSV quoting: non-empty rows read back exactly, the others
    /// are errors naming their line.
    #[test]
    fn csv_round_trips_nasty_fields(rows in proptest::collection::vec((field(), field(), 0u8..=5), 1..8)) {
        let mut content = String::from("text1,text2,label\n");
        for (a, b, l) in &rows {
            let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            content.push_str(&format!("{},{},{l}\n", q(a), q(b)));
        }
        let r = read_from(content.as_bytes(), Path::new("rt.csv"), FileKind::Csv, &ReadOptions::default());
        let valid = rows.iter().all(|(a, b, _)| !a.trim().is_empty() && !b.trim().is_empty());
        if valid {
            let ds = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(ds.len(), rows.len());
            for (ex, (a, b, l)) in ds.examples.iter().zip(&rows) {
                prop_assert_eq!(&ex.texts[0][0], a);
                prop_assert_eq!(&ex.texts[1][0], b);
                prop_assert_eq!(ex.label, Some(*l as f32));
            }
        } else {
            let e = r.unwrap_err();
            prop_assert!(matches!(e, DataError::EmptyText { .. }), "{}", e);
        }
    }

    /// The same for JSONL written by serde_json, with list-valued positives.
    #[test]
    fn jsonl_round_trips_nasty_fields(rows in proptest::collection::vec((field(), proptest::collection::vec(field(), 1..4)), 1..8)) {
        let mut content = String::new();
        for (q, ps) in &rows {
            content.push_str(&serde_json::json!({"query": q, "positive": ps}).to_string());
            content.push('\n');
        }
        let r = read_from(content.as_bytes(), Path::new("rt.jsonl"), FileKind::Jsonl, &ReadOptions::default());
        let valid = rows.iter().all(|(q, ps)| !q.trim().is_empty() && ps.iter().all(|p| !p.trim().is_empty()));
        if valid {
            let ds = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
            for (ex, (q, ps)) in ds.examples.iter().zip(&rows) {
                prop_assert_eq!(&ex.texts[0], &vec![q.clone()]);
                prop_assert_eq!(&ex.texts[1], ps);
            }
        } else {
            check_outcome(r)?;
        }
    }
}
