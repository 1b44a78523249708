//! String building without `core::fmt`: `format!` and `write!` link the
//! formatting machinery (KiBs of the component), and these three helpers are
//! all the engine's messages and snapshots need.

use alloc::string::String;

/// Append `n` in decimal.
pub fn push_u64(out: &mut String, n: u64) {
    // The power of ten of the leading digit, then the digits from there.
    let mut unit = 1u64;
    while n / unit >= 10 {
        unit *= 10;
    }
    loop {
        out.push(char::from(b'0' + (n / unit % 10) as u8));
        if unit == 1 {
            break;
        }
        unit /= 10;
    }
}

/// Append `n` in decimal.
pub fn push_i64(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_u64(out, n.unsigned_abs());
}

/// Append `s` as a JSON string literal: `"` and `\` escaped, control
/// characters as `\u00XX` (lower-case hex), everything else as is.
pub fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\0'..='\u{1f}' => {
                let b = c as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn test_text_integers_as_format_writes_them() {
        let mut samples = alloc::vec![0, 1, 9, 10, 99, 100, 4_294_967_295, u64::MAX - 1, u64::MAX];
        samples.extend((0..64).map(|bit| 1u64 << bit));
        samples.extend((1..20).map(|k| 10u64.pow(k) - 1));
        for n in samples {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, format!("{n}"));
        }
        for n in [0, -1, 7, -10, i64::MIN, i64::MAX, -32602] {
            let mut s = String::new();
            push_i64(&mut s, n);
            assert_eq!(s, format!("{n}"));
        }
    }

    #[test]
    fn test_text_json_str_escapes() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\n\u{1f}\u{7f}é✓😀");
        assert_eq!(s, "\"a\\\"b\\\\c\\u000a\\u001f\u{7f}é✓😀\"");
    }
}
