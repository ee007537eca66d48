//! NumPy `.npy` files through the `npyz` crate: float32 and float64 arrays (either byte order,
//! C or Fortran order) read as C-order f32, and writers for float32 and int64 arrays. The
//! community layouts store spectrograms this way (Kinetics-Sounds `<name>.npy`); mmbal writes
//! contributions, their sample indices and preprocessed spectrograms with it.

use anyhow::{bail, Context, Result};
use npyz::{DType, NpyFile, NpyHeader, Order, TypeChar, WriterBuilder};
use std::path::Path;

/// Reads a float32 or float64 `.npy` array as `(shape, values)` in C order (f64 narrowed to
/// f32, a Fortran-order array transposed).
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse_f32(&bytes).with_context(|| format!("{}: not a readable .npy array", path.display()))
}

fn parse_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    let mut data = bytes;
    let header = NpyHeader::from_reader(&mut data).context("bad .npy header")?;
    let width = match header.dtype() {
        DType::Plain(t) if t.type_char() == TypeChar::Float && matches!(t.size_field(), 4 | 8) => {
            t.size_field() as usize
        }
        other => bail!(
            "expected a float32 or float64 array, found dtype {}",
            other.descr()
        ),
    };
    let shape: Vec<usize> = header.shape().iter().map(|&d| d as usize).collect();
    let n: usize = shape.iter().product();
    // npyz reads the values it needs and would ignore the rest: a size mismatch is an error.
    if data.len() != width * n {
        bail!(
            "{} data bytes for shape {shape:?} ({width}-byte values)",
            data.len()
        );
    }
    let order = header.order();
    let npy = NpyFile::with_header(header, data);
    let values: Vec<f32> = if width == 4 {
        npy.into_vec::<f32>()?
    } else {
        npy.into_vec::<f64>()?
            .into_iter()
            .map(|v| v as f32)
            .collect()
    };
    let values = match order {
        Order::C => values,
        Order::Fortran => fortran_to_c(&shape, &values),
    };
    Ok((shape, values))
}

/// Column-major values of `shape` in row-major order.
fn fortran_to_c(shape: &[usize], values: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    let mut index = vec![0usize; shape.len()];
    for v in out.iter_mut() {
        // `index` walks C order; its Fortran offset has the first axis fastest.
        let (mut off, mut stride) = (0, 1);
        for (i, &d) in index.iter().zip(shape) {
            off += i * stride;
            stride *= d;
        }
        *v = values[off];
        for (i, &d) in index.iter_mut().zip(shape).rev() {
            *i += 1;
            if *i < d {
                break;
            }
            *i = 0;
        }
    }
    out
}

/// Writes a C-order float32 array.
pub fn write_f32(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    write(path, shape, values)
}

/// Writes a C-order int64 array.
pub fn write_i64(path: &Path, shape: &[usize], values: &[i64]) -> Result<()> {
    write(path, shape, values)
}

fn write<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[usize], values: &[T]) -> Result<()> {
    if shape.iter().product::<usize>() != values.len() {
        bail!(
            "{}: {} values for shape {shape:?}",
            path.display(),
            values.len()
        );
    }
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let file = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    let written = (|| -> std::io::Result<()> {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(std::io::BufWriter::new(file))
            .begin_nd()?;
        w.extend(values.iter().copied())?;
        w.finish()
    })();
    written.with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numpy_bytes_written_by_hand() {
        // np.save of np.array([[1, 2.5]], dtype="<f8"): the header padded to 128 bytes in total.
        let mut header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }".to_string();
        header.push_str(&" ".repeat(128 - 10 - header.len() - 1));
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(1f64.to_le_bytes());
        bytes.extend(2.5f64.to_le_bytes());
        assert_eq!(parse_f32(&bytes).unwrap(), (vec![1, 2], vec![1.0, 2.5]));
        bytes.pop();
        assert!(format!("{:#}", parse_f32(&bytes).unwrap_err()).contains("data bytes"));
    }

    /// `np.save` bytes of `header` (padded to a multiple of 64 bytes) followed by `data`.
    fn npy_bytes(header: &str, data: &[u8]) -> Vec<u8> {
        let mut header = header.to_string();
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        bytes
    }

    #[test]
    fn reads_fortran_order_and_big_endian_in_c_order() {
        // np.save(np.asfortranarray(np.arange(6, dtype="<f4").reshape(2, 3))): the values in
        // column order 0 3 1 4 2 5.
        let data: Vec<u8> = [0f32, 3.0, 1.0, 4.0, 2.0, 5.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f = npy_bytes(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
            &data,
        );
        let c_order = (vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(parse_f32(&f).unwrap(), c_order);
        // np.arange(6, dtype=">f4").reshape(2, 3)
        let data: Vec<u8> = (0..6).flat_map(|v| (v as f32).to_be_bytes()).collect();
        let b = npy_bytes(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }",
            &data,
        );
        assert_eq!(parse_f32(&b).unwrap(), c_order);
        let i = npy_bytes(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }",
            &[0; 8],
        );
        let err = format!("{:#}", parse_f32(&i).unwrap_err());
        assert!(
            err.contains("float32 or float64") && err.contains("i8"),
            "{err}"
        );
    }

    #[test]
    fn round_trips_float32() {
        let dir = std::env::temp_dir().join(format!("mmbal-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        write_f32(&p, &[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, -5.5]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(
            bytes.len() % 64,
            24,
            "64-byte aligned header, then 24 data bytes"
        );
        assert_eq!(
            read_f32(&p).unwrap(),
            (vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, -5.5])
        );
        let q = dir.join("b.npy");
        write_i64(&q, &[3], &[7, -1, 1 << 40]).unwrap();
        let bytes = std::fs::read(&q).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("'descr': '<i8'"));
        assert_eq!(&bytes[bytes.len() - 8..], &(1i64 << 40).to_le_bytes());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
