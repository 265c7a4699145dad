//! Defects found by running the binary on real files (issue 14), each pinned by a test.

use angle_data::{ReadOptions, read_file};

/// A headerless file reported the line before the bad row (the csv crate's line count drifts on `\r\n` line
/// ends): the 4th row's bad label is on line 4, with or without a header, `\n` or `\r\n`, quoted newlines or not.
#[test]
fn headerless_bad_label_names_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in [
        ("a.csv", "a,b,1\nc,d,2\ne,f,3\ng,h,abc\n"),
        ("a.tsv", "a\tb\t1\nc\td\t2\ne\tf\t3\ng\th\tabc\n"),
        ("h.csv", "text1,text2,label\na,b,1\nc,d,2\ne,f,abc\n"),
        ("q.csv", "\"a\nx\",b,1\nc,d,2\ng,h,abc\n"),
        ("n.csv", "a,b,1\nc,d,2\ne,f,3\ng,h,abc"),
        ("r.csv", "a,b,1\r\nc,d,2\r\ne,f,3\r\ng,h,abc\r\n"),
        ("hr.csv", "text1,text2,label\r\na,b,1\r\nc,d,2\r\ne,f,abc\r\n"),
        ("rt.tsv", "a\tb\t1\r\nc\td\t2\r\ne\tf\t3\r\ng\th\tabc\r\n"),
        ("s.tsv", "1\ta\tb\n2\tc\td\n3\te\tf\nabc\tg\th\n"),
        ("x.txt", "1\ta\tb\n2\tc\td\n3\te\tf\nabc\tg\th\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let e = read_file(&path, &ReadOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.line(), Some(4), "{name}: {msg}");
        assert!(msg.contains(&format!("{}:4:", path.display())), "{name}: {msg}");
    }
}
