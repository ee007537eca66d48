//! One line of a list file as CSV fields and back, through the `csv` crate (RFC 4180 quoting:
//! `"a, b"`, `""` inside quotes). List files are read line by line so that every error names
//! its line; a quoted field therefore cannot span lines.

use anyhow::{bail, Result};

/// The fields of one CSV line, each trimmed.
pub fn fields(line: &str) -> Result<Vec<String>> {
    // The csv crate reads an unterminated quote to the end of the input without complaint.
    if line.bytes().filter(|&b| b == b'"').count() % 2 == 1 {
        bail!("unterminated quote");
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(line.as_bytes());
    let mut record = csv::StringRecord::new();
    if !reader.read_record(&mut record)? {
        return Ok(vec![String::new()]);
    }
    Ok(record.iter().map(str::to_string).collect())
}

/// One CSV line (without its line break) of `fields`, quoting those that need it.
pub fn line<S: AsRef<str>>(fields: &[S]) -> Result<String> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    writer.write_record(fields.iter().map(|f| f.as_ref()))?;
    let mut bytes = writer.into_inner().map_err(|e| e.into_error())?;
    bytes.pop();
    Ok(String::from_utf8(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_round_trip_and_unterminated_is_an_error() {
        assert_eq!(
            fields(r#"abc,30,"dog barking, loud",test"#).unwrap(),
            ["abc", "30", "dog barking, loud", "test"]
        );
        assert_eq!(fields(r#"a,"say ""hi""""#).unwrap(), ["a", r#"say "hi""#]);
        assert_eq!(fields(" a , b ").unwrap(), ["a", "b"]);
        assert!(fields(r#"a,"open"#).is_err());
        let written = line(&["x_000030", "dog barking, loud", r#"say "hi""#]).unwrap();
        assert_eq!(written, r#"x_000030,"dog barking, loud","say ""hi""""#);
        assert_eq!(
            fields(&written).unwrap(),
            ["x_000030", "dog barking, loud", r#"say "hi""#]
        );
    }
}
