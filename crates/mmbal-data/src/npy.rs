//! NumPy `.npy` files (format 1.0/2.0, C order): float32 and float64 arrays read as f32, and a
//! minimal writer. The community layouts store spectrograms this way (Kinetics-Sounds
//! `<name>.npy`); mmbal writes contributions and preprocessed spectrograms with it.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;

/// Reads a C-order float32 or float64 `.npy` array as `(shape, values)` (f64 narrowed to f32).
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse_f32(&bytes).with_context(|| format!("{}: not a readable .npy array", path.display()))
}

fn parse_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("no .npy magic");
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => bail!("truncated header"),
    };
    if bytes.len() < start + len {
        bail!("truncated header");
    }
    let header = std::str::from_utf8(&bytes[start..start + len]).context("header is not text")?;
    if header.contains("'fortran_order': True") {
        bail!("Fortran-order arrays are not supported, header {header}");
    }
    let width = if header.contains("'descr': '<f4'") {
        4
    } else if header.contains("'descr': '<f8'") {
        8
    } else {
        bail!("expected a float32 or float64 array, header {header}");
    };
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .context("no shape in header")?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad shape ({shape_txt})"))?;
    let data = &bytes[start + len..];
    let n: usize = shape.iter().product();
    if data.len() != width * n {
        bail!(
            "{} data bytes for shape {shape:?} ({width}-byte values)",
            data.len()
        );
    }
    let values = if width == 4 {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect()
    };
    Ok((shape, values))
}

/// Writes a float32 array.
pub fn write_f32(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    if shape.iter().product::<usize>() != values.len() {
        bail!(
            "{}: {} values for shape {shape:?}",
            path.display(),
            values.len()
        );
    }
    write(path, "<f4", shape, |w| {
        values
            .iter()
            .try_for_each(|v| w.write_all(&v.to_le_bytes()))
    })
}

/// Writes a `.npy` file with dtype `descr` (`<f4`, `<i8`, ...); `body` writes the values.
pub fn write(
    path: &Path,
    descr: &str,
    shape: &[usize],
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let file = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    body(&mut w).with_context(|| format!("{}: cannot write", path.display()))?;
    w.flush()
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
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
        std::fs::remove_dir_all(dir).unwrap();
    }
}
