//! Parquet files, as pyarrow and Hugging Face datasets publish them, read with the `parquet` crate's record API.
//!
//! A parquet row is read like a JSONL object: the layout comes once from the schema's top-level column names
//! (after renaming), then each row's values go through the same checks as JSONL's ([`object_example`]): texts are
//! strings or non-empty lists of strings (alternatives), labels numbers or numeric strings, nulls are refused. Only
//! the layout's columns are decoded (a projection), so other columns may be of any type or codec. A row-level
//! error names the file, the row (1-based over the whole file, as `line`) and the row group.

use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use serde_json::Value;

use crate::read::{Sink, detect_named, object_example};
use crate::{DataError, Format, ReadOptions, Role};

/// Codecs this build decompresses (the `parquet` crate's `snap` and `lz4` features).
fn supported(c: Compression) -> bool {
    matches!(
        c,
        Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::LZ4 | Compression::LZ4_RAW
    )
}

pub(crate) fn read_parquet<R: ChunkReader + 'static>(
    reader: R,
    options: &ReadOptions,
    sink: &mut Sink,
) -> Result<Option<Format>, DataError> {
    let path = sink.path.clone();
    let fail = |e: ParquetError| DataError::Parquet {
        path: path.clone(),
        message: e.to_string(),
    };
    let file = SerializedFileReader::new(reader).map_err(fail)?;
    let meta = file.metadata();
    let fields = meta.file_metadata().schema().get_fields();
    let names: Vec<String> = fields.iter().map(|f| f.name().to_string()).collect();

    let format = match options.format {
        Some(f) => {
            let has = |r: Role| names.iter().any(|n| options.columns.role_of(n) == Some(r));
            if !f.roles().iter().all(|&r| has(r)) {
                return Err(DataError::FormatMismatch {
                    path: path.clone(),
                    format: f,
                    columns: names,
                });
            }
            f
        }
        None => detect_named(names.iter().map(String::as_str), options).map_err(|ambiguous| {
            let problem = if ambiguous {
                "fit more than one layout; choose the format explicitly"
            } else {
                "name no layout: expected text1,text2,label (A), query,positive (B) or query,positive,negative (C)"
            };
            DataError::SchemaLayout {
                path: path.clone(),
                columns: names.clone(),
                problem: problem.into(),
            }
        })?,
    };

    // The schema column of each role of the format.
    let mut role_cols = Vec::with_capacity(format.roles().len());
    for &role in format.roles() {
        let found: Vec<usize> = (0..names.len())
            .filter(|&i| options.columns.role_of(&names[i]) == Some(role))
            .collect();
        if found.len() > 1 {
            return Err(DataError::Config(format!(
                "{}: columns {:?} all map to `{role}`",
                path.display(),
                found.iter().map(|&i| &names[i]).collect::<Vec<_>>()
            )));
        }
        role_cols.push(found[0]);
    }
    // The projection keeps the schema's order; `slot[k]` is role k's position in a projected row.
    let mut projected = role_cols.clone();
    projected.sort_unstable();
    let slot: Vec<usize> = role_cols
        .iter()
        .map(|c| projected.iter().position(|p| p == c).unwrap_or(0))
        .collect();
    let projection = Type::group_type_builder(meta.file_metadata().schema().name())
        .with_fields(projected.iter().map(|&i| fields[i].clone()).collect())
        .build()
        .map_err(fail)?;

    let groups = meta.num_row_groups();
    for (g, rg) in meta.row_groups().iter().enumerate() {
        for col in rg.columns() {
            let top = col.column_path().parts().first().map(String::as_str);
            let used = projected.iter().any(|&i| Some(names[i].as_str()) == top);
            if used && !supported(col.compression()) {
                return Err(DataError::Parquet {
                    path: path.clone(),
                    message: format!(
                        "column `{}` (row group {} of {groups}) is compressed with {}, which this build does not \
                         read (it reads snappy, lz4 and uncompressed files); rewrite the file with snappy, e.g. \
                         pyarrow.parquet.write_table(table, path, compression=\"snappy\")",
                        col.column_path(),
                        g + 1,
                        col.compression()
                    ),
                });
            }
        }
    }

    let mut line = 0u64;
    let mut values: Vec<Value> = Vec::with_capacity(projected.len());
    for g in 0..groups {
        let in_group = |e: DataError| DataError::InRowGroup {
            source: Box::new(e),
            row_group: g + 1,
            row_groups: groups,
        };
        let group = file.get_row_group(g).map_err(|e| in_group(fail(e)))?;
        let rows = group
            .get_row_iter(Some(projection.clone()))
            .map_err(|e| in_group(fail(e)))?;
        for row in rows {
            line += 1;
            let row = row.map_err(|e| {
                in_group(DataError::Malformed {
                    path: path.clone(),
                    line,
                    message: e.to_string(),
                })
            })?;
            values.clear();
            values.extend(row.into_columns().into_iter().map(|(_, f)| to_value(f)));
            let ex = object_example(format, line, options, &path, |role| {
                let k = format.roles().iter().position(|&r| r == role).unwrap_or(0);
                Ok((names[role_cols[k]].as_str(), &values[slot[k]]))
            });
            sink.push(ex.map_err(in_group))?;
        }
    }
    Ok(Some(format))
}

/// A parquet value as the JSON value [`object_example`] checks: strings, numbers, lists and nulls as themselves;
/// anything else (dates, decimals, structs, maps, binary that is not UTF-8) as an object naming it, which is neither
/// a text nor a label.
fn to_value(f: Field) -> Value {
    let float = |v: f64| match serde_json::Number::from_f64(v) {
        Some(n) => Value::Number(n),
        // NaN and infinities: a string that fails as a label with its own spelling
        None => Value::String(v.to_string()),
    };
    match f {
        Field::Null => Value::Null,
        Field::Str(s) => Value::String(s),
        Field::Bytes(b) => match String::from_utf8(b.data().to_vec()) {
            Ok(s) => Value::String(s),
            Err(_) => other("binary (not UTF-8)"),
        },
        Field::Byte(v) => v.into(),
        Field::Short(v) => v.into(),
        Field::Int(v) => v.into(),
        Field::Long(v) => v.into(),
        Field::UByte(v) => v.into(),
        Field::UShort(v) => v.into(),
        Field::UInt(v) => v.into(),
        Field::ULong(v) => v.into(),
        Field::Float16(v) => float(f64::from(v.to_f32())),
        Field::Float(v) => float(f64::from(v)),
        Field::Double(v) => float(v),
        Field::Bool(v) => Value::Bool(v),
        Field::ListInternal(list) => Value::Array(list.elements().iter().cloned().map(to_value).collect()),
        other_field => other(&other_field.to_string()),
    }
}

fn other(what: &str) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("parquet value".into(), Value::String(what.into()));
    Value::Object(m)
}
