//! `angle encode --quantize` and `angle eval --quantize` through the binary on a tiny random BERT: the `.npy` dtype
//! and shape of every kind, JSONL integers, calibration from another file, and the errors.

mod common;

use std::path::Path;
use std::process::Command;

use common::{stsb_head, tiny_model};

fn angle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_angle"))
}

fn run(args: &[&str]) -> std::process::Output {
    let out = angle().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// (descr, shape, data) of a version-1 `.npy` file.
fn npy(p: &Path) -> (String, String, Vec<u8>) {
    let b = std::fs::read(p).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let n = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + n]).unwrap();
    let field = |k: &str| {
        let i = header.find(k).unwrap() + k.len();
        let rest = &header[i..];
        rest[..rest.find(if k.contains("shape") { ')' } else { ',' }).unwrap()]
            .trim_matches(|c| c == '\'' || c == ' ' || c == '(')
            .to_string()
    };
    (field("'descr':"), field("'shape':"), b[10 + n..].to_vec())
}

#[test]
fn encode_writes_every_kind_with_its_dtype_and_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 21);
    let m = model.to_str().unwrap();
    let input = tmp.path().join("texts.txt");
    std::fs::write(
        &input,
        "a man plays a guitar\nthe cat sleeps\nrain falls on the city\n\n",
    )
    .unwrap();
    let i = input.to_str().unwrap();
    for (kind, descr, cols) in [
        ("int8", "|i1", 32),
        ("uint8", "|u1", 32),
        ("binary", "|i1", 4),
        ("ubinary", "|u1", 4),
    ] {
        let out = tmp.path().join(format!("{kind}.npy"));
        run(&[
            "encode",
            "--model",
            m,
            "--input",
            i,
            "--output",
            out.to_str().unwrap(),
            "--quantize",
            kind,
        ]);
        let (d, shape, data) = npy(&out);
        assert_eq!(
            (d.as_str(), shape.as_str()),
            (descr, &*format!("4, {cols}")),
            "{kind}"
        );
        assert_eq!(data.len(), 4 * cols, "{kind}");
    }
    // uint8 calibrated on the texts themselves: every dimension spans 0 ..= 254 or 255 over the 4 rows.
    let (_, _, u) = npy(&tmp.path().join("uint8.npy"));
    for j in 0..32 {
        let col: Vec<u8> = (0..4).map(|r| u[r * 32 + j]).collect();
        assert_eq!(*col.iter().min().unwrap(), 0, "dimension {j}: {col:?}");
        assert!(*col.iter().max().unwrap() >= 254, "dimension {j}: {col:?}");
    }
    // JSONL: integers, and the kind named.
    let out = run(&[
        "encode",
        "--model",
        m,
        "--input",
        i,
        "--quantize",
        "int8",
        "--normalize",
    ]);
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["quantization"], "int8");
    assert!(first["embedding"].as_array().unwrap().iter().all(|v| v.is_i64()));

    // Ranges from another file: values outside them are clipped, not wrapped.
    let cal = tmp.path().join("cal.txt");
    std::fs::write(&cal, "one\ntwo\n").unwrap();
    let out = tmp.path().join("cal.npy");
    run(&[
        "encode",
        "--model",
        m,
        "--input",
        i,
        "--output",
        out.to_str().unwrap(),
        "--quantize",
        "uint8",
        "--calibration",
        cal.to_str().unwrap(),
    ]);
    assert_eq!(npy(&out).1, "4, 32");

    for (args, needle) in [
        (vec!["--quantize", "int4"], "int4"),
        (
            vec!["--quantize", "binary", "--calibration", cal.to_str().unwrap()],
            "--calibration",
        ),
    ] {
        let o = angle()
            .args(["encode", "--model", m, "--input", i])
            .args(&args)
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{err}");
    }
    // One text cannot calibrate ranges.
    let one = tmp.path().join("one.txt");
    std::fs::write(&one, "alone\n").unwrap();
    let o = angle()
        .args([
            "encode",
            "--model",
            m,
            "--input",
            one.to_str().unwrap(),
            "--quantize",
            "uint8",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("calibrat"));
}

#[test]
fn eval_reports_the_quantized_cosine_beside_float32() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 22);
    let test = stsb_head(tmp.path(), "test", 40, "test.csv");
    let dev = stsb_head(tmp.path(), "dev", 40, "dev.csv");
    let out = run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        dev.to_str().unwrap(),
        "--quantize",
        "ubinary",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for f in v["files"].as_array().unwrap() {
        assert_eq!(f["quantized"]["quantization"], "ubinary");
        let s = f["quantized"]["cosine"]["spearman"].as_f64().unwrap();
        assert!((-100.0..=100.0).contains(&s), "{f}");
    }
    assert_eq!(v["quantized_mean"]["quantization"], "ubinary");
    let text = run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--quantize",
        "int8",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("cosine of int8 embeddings") && text.contains("against float32"),
        "{text}"
    );
    let o = angle()
        .args([
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            test.to_str().unwrap(),
            "--quantize",
            "fp8",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("fp8"));
}
