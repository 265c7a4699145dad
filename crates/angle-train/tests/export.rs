//! `angle export --layers N --dim K`: a smaller checkpoint that encodes, with no flags, as the source does under
//! those flags (issue 12: the trained settings recorded so the defaults follow them).

mod common;

use std::process::Command;

use common::tiny_model;

fn angle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_angle"))
}

fn stdout_ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn an_export_encodes_as_its_source_under_the_same_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 7);
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "A man plays guitar.\nA dog runs in the park.\n").unwrap();
    let out = tmp.path().join("small");
    stdout_ok(
        angle()
            .arg("export")
            .arg("--model")
            .arg(&model)
            .args(["--layers", "1", "--dim", "16", "--output"])
            .arg(&out),
    );

    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 1);
    let angle_cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("angle_config.json")).unwrap()).unwrap();
    assert_eq!(angle_cfg["dim"], 16);
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        st.names().iter().all(|n| !n.contains("layer.1.")),
        "a cut layer was saved"
    );

    let flags = stdout_ok(
        angle()
            .arg("encode")
            .arg("--model")
            .arg(&model)
            .args(["--layers", "1", "--dim", "16", "--input"])
            .arg(&input),
    );
    let exported = stdout_ok(
        angle()
            .arg("encode")
            .arg("--model")
            .arg(&out)
            .arg("--input")
            .arg(&input),
    );
    assert_eq!(flags, exported);
    let first: serde_json::Value = serde_json::from_str(exported.lines().next().unwrap()).unwrap();
    assert_eq!(first["embedding"].as_array().unwrap().len(), 16);

    // The export is new: an existing folder is not overwritten.
    let o = angle()
        .arg("export")
        .arg("--model")
        .arg(&model)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists already"));
}
