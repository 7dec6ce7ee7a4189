//! Byte sizes as people write them: `4096`, `4K`, `12MiB`, `1G`, `1.5M`,
//! and hexadecimal byte counts `0x1000` (no unit: `b` is a hex digit).
//!
//! Suffixes are binary (K = KiB = 1024) whether or not the `i` is written:
//! buffer sizes in this field are always powers of two of pages, and a
//! "12M" frame buffer that is 12 000 000 bytes would surprise everyone.
//!
//! ```
//! assert_eq!(dmabroker::size::parse_size("12MiB").unwrap(), 12 << 20);
//! assert_eq!(dmabroker::size::parse_size("4K").unwrap(), 4096);
//! assert_eq!(dmabroker::size::parse_size("0x10").unwrap(), 16);
//! assert_eq!(dmabroker::size::format_size(3 << 20), "3 MiB");
//! ```

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseSizeError {
    /// Nothing but whitespace.
    #[error("empty size: write a byte count such as 4096, 4K, 12MiB or 1G")]
    Empty,
    /// The number part is not a number.
    #[error("`{0}` is not a size: write a byte count such as 4096, 4K, 12MiB or 1G")]
    NotANumber(String),
    /// The unit is not one of B, K, M, G, T (with optional `i`/`iB`).
    #[error("unknown unit `{unit}` in `{input}`: use B, K/KiB, M/MiB, G/GiB or T/TiB")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit as written.
        unit: String,
    },
    /// `0x` not followed by hexadecimal digits.
    #[error("`{0}` is not a hexadecimal number: hexadecimal digits must follow 0x (e.g. 0x1000)")]
    NotHex(String),
    /// The value does not fit in 64 bits.
    #[error("`{0}` does not fit in 64 bits: at most 18446744073709551615 bytes (16 EiB - 1)")]
    Overflow(String),
    /// A fraction that is not a whole number of bytes.
    #[error("`{0}` is not a whole number of bytes")]
    Fractional(String),
}

/// Parse a byte size (see the module docs).
///
/// # Errors
/// [`ParseSizeError`] naming what is wrong with the input.
pub fn parse_size(input: &str) -> Result<u64, ParseSizeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(ParseSizeError::Empty);
    }
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        let digits: String = hex.chars().filter(|&c| c != '_').collect();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseSizeError::NotHex(input.to_owned()));
        }
        return u64::from_str_radix(&digits, 16).map_err(|_| ParseSizeError::Overflow(input.to_owned()));
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: String = num.chars().filter(|&c| c != '_').collect();
    if num.is_empty() {
        return Err(ParseSizeError::NotANumber(input.to_owned()));
    }
    let unit = unit.trim();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        _ => return Err(ParseSizeError::UnknownUnit { input: input.to_owned(), unit: unit.to_owned() }),
    };
    let multiplier = 1u128 << shift;
    // Digits only by now, so a parse failure is either too many digits
    // (overflow, told apart so the message says so) or not a number at all.
    let parse = |digits: &str| -> Result<u128, ParseSizeError> {
        digits.parse::<u128>().map_err(|e| match e.kind() {
            std::num::IntErrorKind::PosOverflow => ParseSizeError::Overflow(input.to_owned()),
            _ => ParseSizeError::NotANumber(input.to_owned()),
        })
    };
    let bytes: u128 = match num.split_once('.') {
        None => {
            let n = parse(&num)?;
            n.checked_mul(multiplier).ok_or_else(|| ParseSizeError::Overflow(input.to_owned()))?
        }
        Some((whole, frac)) => {
            if frac.is_empty() || frac.len() > 18 || whole.is_empty() && frac.is_empty() {
                return Err(ParseSizeError::NotANumber(input.to_owned()));
            }
            let whole: u128 = if whole.is_empty() { 0 } else { parse(whole)? };
            let frac_n: u128 = frac.parse().map_err(|_| ParseSizeError::NotANumber(input.to_owned()))?;
            let scale = 10u128.pow(frac.len() as u32);
            let total = whole
                .checked_mul(scale)
                .and_then(|w| w.checked_add(frac_n))
                .and_then(|v| v.checked_mul(multiplier))
                .ok_or_else(|| ParseSizeError::Overflow(input.to_owned()))?;
            if total % scale != 0 {
                return Err(ParseSizeError::Fractional(input.to_owned()));
            }
            total / scale
        }
    };
    u64::try_from(bytes).map_err(|_| ParseSizeError::Overflow(input.to_owned()))
}

/// Format a byte count with the largest binary unit that divides it exactly,
/// or with one decimal otherwise (`1.5 MiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 6] = [("EiB", 60), ("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (name, shift) in UNITS {
        let unit = 1u64 << shift;
        if bytes >= unit {
            if bytes & (unit - 1) == 0 {
                return format!("{} {name}", bytes >> shift);
            }
            return format!("{:.1} {name}", bytes as f64 / unit as f64);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("12MiB"), Ok(12 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert_eq!(parse_size(" 2 mib "), Ok(2 << 20));
        assert_eq!(parse_size("1_000"), Ok(1000));
    }

    #[test]
    fn rejects_bad_sizes_with_a_reason() {
        assert_eq!(parse_size(""), Err(ParseSizeError::Empty));
        assert!(matches!(parse_size("abc"), Err(ParseSizeError::NotANumber(_))));
        assert!(matches!(parse_size("12Q"), Err(ParseSizeError::UnknownUnit { .. })));
        assert!(matches!(parse_size("99999999999T"), Err(ParseSizeError::Overflow(_))));
        assert!(matches!(parse_size("18446744073709551616"), Err(ParseSizeError::Overflow(_))));
        // More digits than even u128 holds is still an overflow, not "not a number".
        let huge = "9".repeat(60);
        assert!(matches!(parse_size(&huge), Err(ParseSizeError::Overflow(_))));
        assert!(matches!(parse_size(&format!("{huge}.5K")), Err(ParseSizeError::Overflow(_))));
        assert!(matches!(parse_size("1.3B"), Err(ParseSizeError::Fractional(_))));
        assert!(matches!(parse_size("-1"), Err(ParseSizeError::NotANumber(_) | ParseSizeError::UnknownUnit { .. })));
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(12 << 20), "12 MiB");
        assert_eq!(format_size(3 << 19), "1.5 MiB");
        assert_eq!(format_size(1 << 63), "8 EiB");
        assert_eq!(format_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn hexadecimal_byte_counts() {
        assert_eq!(parse_size("0x10"), Ok(16));
        assert_eq!(parse_size(" 0X1000 "), Ok(4096));
        assert_eq!(parse_size("0x1_0000"), Ok(65536));
        assert_eq!(parse_size("0xffffffffffffffff"), Ok(u64::MAX));
        assert!(matches!(parse_size("0x1_0000_0000_0000_0000"), Err(ParseSizeError::Overflow(_))));
        assert!(matches!(parse_size("0x"), Err(ParseSizeError::NotHex(_))));
        assert!(matches!(parse_size("0x10K"), Err(ParseSizeError::NotHex(_))));
    }
}
