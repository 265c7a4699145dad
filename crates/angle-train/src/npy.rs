//! A `.npy` writer for 2-D little-endian arrays (NumPy format version 1.0): float32 for `angle encode --output X.npy`,
//! int8 / uint8 for `--quantize`.

use std::io::Write;

/// Write `data` (row-major, `rows × cols`) as a NumPy `<f4` array.
pub fn write_npy_f32<W: Write>(out: &mut W, data: &[f32], rows: usize, cols: usize) -> std::io::Result<()> {
    debug_assert_eq!(data.len(), rows * cols);
    let mut bytes = Vec::with_capacity(data.len() * 4);
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    write_npy(out, "<f4", &bytes, rows, cols)
}

/// Write `bytes` (row-major, `rows × cols` elements of type `descr`, e.g. `|i1`, already little-endian) as a NumPy
/// array.
pub fn write_npy<W: Write>(
    out: &mut W,
    descr: &str,
    bytes: &[u8],
    rows: usize,
    cols: usize,
) -> std::io::Result<()> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + dict + padding + '\n' must be a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header_len = (dict.len() + pad + 1) as u16;
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&header_len.to_le_bytes())?;
    out.write_all(dict.as_bytes())?;
    out.write_all(&vec![b' '; pad])?;
    out.write_all(b"\n")?;
    out.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_data_follows() {
        let mut buf = Vec::new();
        write_npy_f32(&mut buf, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3).unwrap();
        assert_eq!(&buf[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([buf[8], buf[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&buf[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (2, 3)") && header.ends_with('\n'));
        let body = &buf[10 + hlen..];
        assert_eq!(body.len(), 24);
        assert_eq!(f32::from_le_bytes(body[20..24].try_into().unwrap()), 6.0);
    }
}
