//! Word alignments in GRID's `.align` format: one line per word, `start end word`, times in
//! units of 1/25000 s; `sil` and `sp` lines are silence and short pauses, not words.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// Units of an `.align` time per second.
pub const ALIGN_UNITS_PER_SECOND: f64 = 25000.0;

/// One line of an alignment.
#[derive(Debug, Clone, PartialEq)]
pub struct AlignedWord {
    /// Start, in seconds from the clip's start.
    pub start: f64,
    /// End, in seconds.
    pub end: f64,
    /// The word as written (GRID's shared copy misspells them: use it for timing only).
    pub word: String,
}

impl AlignedWord {
    /// Whether the line is silence (`sil`) or a short pause (`sp`) rather than a word.
    pub fn is_silence(&self) -> bool {
        self.word == "sil" || self.word == "sp"
    }
}

/// Every line of `text` (the contents of `path`, named in errors with the line number).
pub fn parse_alignment(text: &str, path: &Path) -> Result<Vec<AlignedWord>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [s, e, w] = parts.as_slice() else {
            bail!("{}: expected `start end word`, got `{line}`", at());
        };
        let time = |v: &str| -> Result<f64> {
            let t: f64 = v
                .parse()
                .with_context(|| format!("{}: `{v}` is not a time", at()))?;
            Ok(t / ALIGN_UNITS_PER_SECOND)
        };
        let (start, end) = (time(s)?, time(e)?);
        if !(end >= start && start >= 0.0) {
            bail!(
                "{}: the word ends ({end} s) before it starts ({start} s)",
                at()
            );
        }
        out.push(AlignedWord {
            start,
            end,
            word: w.to_string(),
        });
    }
    if out.is_empty() {
        bail!("{}: no aligned words", path.display());
    }
    Ok(out)
}

/// The alignment file at `path`.
pub fn read_alignment(path: &Path) -> Result<Vec<AlignedWord>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the word alignment", path.display()))?;
    parse_alignment(&text, path)
}

/// The `n`-th (1-based) word that is not silence, and the clip's length (the last line's end).
pub fn nth_word(words: &[AlignedWord], n: usize, path: &Path) -> Result<(AlignedWord, f64)> {
    let spoken: Vec<&AlignedWord> = words.iter().filter(|w| !w.is_silence()).collect();
    let Some(w) = n.checked_sub(1).and_then(|i| spoken.get(i)) else {
        bail!(
            "{}: word {n} asked, the alignment has {} words",
            path.display(),
            spoken.len()
        );
    };
    let length = words.iter().map(|w| w.end).fold(0.0, f64::max);
    Ok(((*w).clone(), length))
}

/// A window of `seconds` centred on the middle of `word`, moved (not cut) to stay inside
/// `[0, length]`; the whole clip when it is shorter than the window. `(start, end)` in seconds.
pub fn window_around(word: &AlignedWord, length: f64, seconds: f64) -> (f64, f64) {
    if seconds >= length {
        return (0.0, length);
    }
    let mid = (word.start + word.end) / 2.0;
    let start = (mid - seconds / 2.0).clamp(0.0, length - seconds);
    (start, start + seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BBAF2N: &str = "0 23750 sil\n23750 29500 bine\n29500 34000 blue\n34000 35500 at\n\
                          35500 41000 f\n41000 47250 twoe\n47250 53000 nowe\n53000 74500 sil\n";

    #[test]
    fn the_fifth_word_and_a_window_around_it() {
        let p = Path::new("bbaf2n.align");
        let words = parse_alignment(BBAF2N, p).unwrap();
        assert_eq!(words.len(), 8);
        let (w, length) = nth_word(&words, 5, p).unwrap();
        assert_eq!(w.word, "twoe");
        assert_eq!((w.start, w.end), (1.64, 1.89));
        assert_eq!(length, 2.98);
        let (a, b) = window_around(&w, length, 0.6);
        assert!(
            (a - 1.465).abs() < 1e-12 && (b - 2.065).abs() < 1e-12,
            "{a} {b}"
        );
        // Near the end the window moves inside the clip; longer than the clip: all of it.
        let (w6, _) = nth_word(&words, 6, p).unwrap();
        let (a6, b6) = window_around(&w6, 2.2, 1.0);
        assert!((a6 - 1.2).abs() < 1e-12 && b6 == 2.2, "{a6} {b6}");
        assert_eq!(window_around(&w, length, 5.0), (0.0, 2.98));
        let err = nth_word(&words, 7, p).unwrap_err();
        assert!(format!("{err}").contains("has 6 words"), "{err}");
        let err = parse_alignment("0 10\n", p).unwrap_err();
        assert!(format!("{err}").contains("bbaf2n.align:1"), "{err}");
    }
}
