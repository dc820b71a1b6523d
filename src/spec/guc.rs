//! A setting's value read as PostgreSQL reads it (src/backend/utils/misc/guc.c:
//! parse_bool, parse_int, parse_real, convert_to_base_unit, the enum lookup and the range
//! check), so that `validate` refuses what the server would refuse, with the expected
//! form, the range in human units or the allowed values in the fix. A setting's check
//! hook (e.g. a time zone's name) is the server's alone: strings are not checked here.

use super::params::{Kind, Quantity, Setting, Unit, nearest};

/// Why PostgreSQL would refuse a value, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub fix: String,
}

fn refuse(message: String, fix: String) -> Result<(), Refusal> {
    Err(Refusal { message, fix })
}

/// Checks `value`, as it is written in postgresql.conf (unquoted), against `setting`.
pub fn check(setting: &Setting, value: &str) -> Result<(), Refusal> {
    match &setting.kind {
        Kind::Bool => match parse_bool(value) {
            Some(_) => Ok(()),
            None => refuse(
                format!("`{value}` is not a boolean"),
                "write on or off (true/false, yes/no and 1/0 work too)".into(),
            ),
        },
        Kind::Integer { unit, min, max } => {
            check_number(value, *unit, true, *min as f64, *max as f64)
        }
        Kind::Real { unit, min, max } => check_number(value, *unit, false, *min, *max),
        Kind::Enum(values) => check_enum(setting.name, values, value),
        Kind::String => Ok(()),
    }
}

/// guc.c's parse_bool: on, off, and true, false, yes, no or a unique prefix of them, 1
/// and 0; case-insensitive; "o" alone is ambiguous.
pub fn parse_bool(value: &str) -> Option<bool> {
    let v = value.to_ascii_lowercase();
    let prefix_of = |word: &str| word.starts_with(v.as_str());
    match v.as_bytes().first()? {
        b't' if prefix_of("true") => Some(true),
        b'f' if prefix_of("false") => Some(false),
        b'y' if prefix_of("yes") => Some(true),
        b'n' if prefix_of("no") => Some(false),
        b'o' if v == "on" => Some(true),
        b'o' if v == "of" || v == "off" => Some(false),
        b'1' if v.len() == 1 => Some(true),
        b'0' if v.len() == 1 => Some(false),
        _ => None,
    }
}

/// What an integer or real value reads as, in the setting's base unit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reading {
    Value {
        base: f64,
        with_unit: bool,
    },
    /// Not a number, or a number with a unit that this setting does not take.
    Invalid,
    /// A number beyond the C type (`long`, `double`, then `int` for integers).
    Overflow,
}

fn check_number(
    value: &str,
    unit: Option<Unit>,
    integer: bool,
    min: f64,
    max: f64,
) -> Result<(), Refusal> {
    let range = || {
        if max == f64::MAX {
            format!("{} or more", show(min, unit, integer))
        } else {
            format!(
                "from {} to {}",
                show(min, unit, integer),
                show(max, unit, integer)
            )
        }
    };
    let base = match read_number(value, unit, integer) {
        Reading::Value { base, with_unit } => (base, with_unit),
        Reading::Overflow => {
            return refuse(
                format!("`{value}` is too large for PostgreSQL"),
                format!("choose {}", range()),
            );
        }
        Reading::Invalid => {
            return refuse(
                invalid_message(value, unit, integer),
                invalid_fix(value, unit, integer, &range()),
            );
        }
    };
    let (n, with_unit) = base;
    if n >= min && n <= max {
        return Ok(());
    }
    let Some(u) = unit.filter(|_| !with_unit && n > 0.0) else {
        return refuse(
            format!("`{value}` is out of range"),
            format!("choose {}", range()),
        );
    };
    // A bare number counts the base unit, which is rarely what was meant (work_mem = 16
    // is 16kB): say so, and offer the same number with the unit that fits.
    let fits = u
        .accepted()
        .iter()
        .rev()
        .filter(|(_, size)| *size >= u.scale)
        .map(|(name, size)| (name, n * size / u.scale))
        .find(|(_, b)| *b >= min && *b <= max)
        .map(|(name, _)| format!("; did you mean `{value}{name}`?"))
        .unwrap_or_default();
    refuse(
        format!(
            "`{value}` is out of range: a number without a unit counts {}, so this is {}",
            u.label,
            show(n, unit, integer)
        ),
        format!("choose {}, and write the unit{fits}", range()),
    )
}

fn invalid_message(value: &str, unit: Option<Unit>, integer: bool) -> String {
    let what = match unit.map(|u| u.quantity) {
        Some(Quantity::Memory) => "a memory size",
        Some(Quantity::Time) => "a duration",
        None if integer => "a whole number",
        None => "a number",
    };
    format!("`{value}` is not {what}")
}

fn invalid_fix(value: &str, unit: Option<Unit>, integer: bool, range: &str) -> String {
    let Some(u) = unit else {
        let what = if integer {
            "a whole number"
        } else {
            "a number"
        };
        return format!("write {what} without a unit, {range}");
    };
    let names: Vec<&str> = u.accepted().iter().map(|(n, _)| *n).rev().collect();
    let example = match u.quantity {
        Quantity::Memory => "64MB",
        Quantity::Time => "30s",
    };
    // A unit in the wrong case ("4mb") is the usual slip: offer the right spelling.
    let number_end = value
        .trim_end()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .len();
    let (number, written) = value.trim_end().split_at(number_end);
    let suggestion = names
        .iter()
        .find(|n| n.eq_ignore_ascii_case(written.trim()) && !written.trim().is_empty())
        .filter(|_| matches!(read_number(number, unit, integer), Reading::Value { .. }))
        .map(|n| format!("did you mean `{}{n}`? ", number.trim_end()))
        .unwrap_or_default();
    format!(
        "{suggestion}write a number with one of the units {} (case matters), e.g. {example}; \
         a number alone counts {}; {range}",
        names.join(", "),
        u.label
    )
}

/// A value in the base unit as PostgreSQL prints it: with the largest unit that divides
/// it exactly (`64kB`, `2147483647ms`); zero and negative values (often "off") bare.
fn show(base: f64, unit: Option<Unit>, integer: bool) -> String {
    let Some(u) = unit.filter(|_| base > 0.0) else {
        return format!("{base}");
    };
    if !integer {
        return format!("{base}{}", u.label);
    }
    let total = base * u.scale;
    u.accepted()
        .iter()
        .find(|(_, size)| total % size == 0.0)
        .map(|(name, size)| format!("{}{name}", total / size))
        .unwrap_or_else(|| format!("{base}{}", u.label))
}

/// parse_int and parse_real: the number (C's strtol with base 0 for integers, falling
/// back to strtod at a '.', an 'e' or an overflow; strtod for reals), spaces, an
/// optional unit converted to the setting's base unit, then (integers) rounding to an
/// `int`.
fn read_number(value: &str, unit: Option<Unit>, integer: bool) -> Reading {
    let parsed = if integer {
        match strtol(value) {
            Some((Some(n), rest)) if !rest.starts_with(['.', 'e', 'E']) => Some((n as f64, rest)),
            // No digits: strtol leaves the whole value, so only a value that starts
            // with '.' or 'e' is read again (as guc.c does).
            None if !value.starts_with(['.', 'e', 'E']) => None,
            _ => strtod(value),
        }
    } else {
        strtod(value)
    };
    let Some((mut n, rest)) = parsed else {
        return Reading::Invalid;
    };
    if n.is_nan() {
        return Reading::Invalid;
    }
    if n.is_infinite() && !is_infinity_word(value) {
        return Reading::Overflow;
    }
    let rest = rest.trim_start_matches(is_c_space);
    let with_unit = !rest.is_empty();
    if with_unit {
        let Some(converted) = unit.and_then(|u| to_base_unit(n, rest, u)) else {
            return Reading::Invalid;
        };
        n = converted;
    }
    if integer {
        n = n.round_ties_even();
        if n > i32::MAX as f64 || n < i32::MIN as f64 {
            return Reading::Overflow;
        }
    }
    Reading::Value { base: n, with_unit }
}

/// convert_to_base_unit: a unit of at most 3 characters, spaces, nothing else. A
/// fraction is rounded to a whole number of the next smaller unit ("1.5GB" is 1536MB).
fn to_base_unit(n: f64, text: &str, unit: Unit) -> Option<f64> {
    let name_len = text
        .char_indices()
        .take_while(|(i, c)| *i < 3 && !is_c_space(*c))
        .map(|(i, c)| i + c.len_utf8())
        .last()
        .unwrap_or(0);
    let (name, after) = text.split_at(name_len);
    if !after.trim_start_matches(is_c_space).is_empty() {
        return None;
    }
    let table = unit.accepted();
    let i = table.iter().position(|(n, _)| *n == name)?;
    let mut converted = n * (table[i].1 / unit.scale);
    if let Some((_, smaller)) = table.get(i + 1) {
        let step = smaller / unit.scale;
        converted = (converted / step).round_ties_even() * step;
    }
    Some(converted)
}

fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn is_infinity_word(value: &str) -> bool {
    let v = value
        .trim_start_matches(is_c_space)
        .trim_start_matches(['+', '-']);
    v.len() >= 3 && v[..3].eq_ignore_ascii_case("inf")
}

/// C's strtol(value, &end, 0) for a 64-bit long: spaces, a sign, then `0x` and hex
/// digits, `0` and octal digits, or decimal digits. None when no digit is read; the
/// number is None when it overflows (ERANGE).
fn strtol(value: &str) -> Option<(Option<i64>, &str)> {
    let s = value.trim_start_matches(is_c_space);
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let hex = s.len() > 2
        && (s.starts_with("0x") || s.starts_with("0X"))
        && s.as_bytes()[2].is_ascii_hexdigit();
    let (radix, digits) = if hex {
        (16, &s[2..])
    } else if s.starts_with('0') {
        (8, s)
    } else {
        (10, s)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let magnitude = i128::from_str_radix(&digits[..end], radix).ok();
    let n = magnitude
        .map(|m| if negative { -m } else { m })
        .and_then(|m| i64::try_from(m).ok());
    Some((n, &digits[end..]))
}

/// C's strtod: spaces, a sign, then a decimal number with an optional exponent, `inf`,
/// `infinity` or `nan`, or a hexadecimal number with an optional `p` exponent. None when
/// nothing is read or the result underflows; an overflow (ERANGE too) is infinite.
fn strtod(value: &str) -> Option<(f64, &str)> {
    let s = value.trim_start_matches(is_c_space);
    let sign_len = usize::from(s.starts_with(['+', '-']));
    let negative = s.starts_with('-');
    let body = &s[sign_len..];
    let lower = body.to_ascii_lowercase();
    for word in ["infinity", "inf", "nan"] {
        if lower.starts_with(word) {
            let n = if word == "nan" {
                f64::NAN
            } else {
                f64::INFINITY
            };
            return Some((if negative { -n } else { n }, &body[word.len()..]));
        }
    }
    if lower.starts_with("0x")
        && let Some((n, len)) = hex_float(&body[2..])
    {
        return Some((if negative { -n } else { n }, &body[2 + len..]));
    }
    let b = body.as_bytes();
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let int_len = digits(0);
    let mut len = int_len;
    let mut frac_len = 0;
    if b.get(len) == Some(&b'.') {
        frac_len = digits(len + 1);
        if int_len + frac_len > 0 {
            len += 1 + frac_len;
        }
    }
    if int_len + frac_len == 0 {
        return None;
    }
    if matches!(b.get(len), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(len + 1), Some(b'+' | b'-')));
        let exp = digits(len + 1 + sign);
        if exp > 0 {
            len += 1 + sign + exp;
        }
    }
    let text = &s[..sign_len + len];
    let n: f64 = text.parse().ok()?;
    let mantissa_nonzero = body[..len]
        .split(['e', 'E'])
        .next()
        .is_some_and(|m| m.bytes().any(|c| (b'1'..=b'9').contains(&c)));
    if (n == 0.0 && mantissa_nonzero) || (n != 0.0 && n.abs() < f64::MIN_POSITIVE) {
        return None; // underflow: ERANGE
    }
    Some((n, &body[len..]))
}

/// The part of a C hexadecimal float after `0x`: hex digits with an optional point, then
/// an optional binary exponent `p±digits`. Returns the value and the length read.
fn hex_float(s: &str) -> Option<(f64, usize)> {
    let b = s.as_bytes();
    let mut n = 0.0f64;
    let mut scale = 0i32;
    let mut i = 0;
    let mut seen_point = false;
    let mut any = false;
    while let Some(&c) = b.get(i) {
        if c == b'.' && !seen_point {
            seen_point = true;
        } else if let Some(d) = (c as char).to_digit(16) {
            n = n * 16.0 + f64::from(d);
            any = true;
            if seen_point {
                scale -= 4;
            }
        } else {
            break;
        }
        i += 1;
    }
    if !any {
        return None;
    }
    if matches!(b.get(i), Some(b'p' | b'P')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        let len = b[i + 1 + sign..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if len > 0 {
            let exp: i32 = s[i + 1..i + 1 + sign + len].parse().unwrap_or(i32::MAX);
            scale = scale.saturating_add(exp);
            i += 1 + sign + len;
        }
    }
    Some((n * 2f64.powi(scale), i))
}

/// The enum lookup: the whole value, case-insensitive, against the values pg_settings
/// lists and the spellings guc.c accepts without listing them.
fn check_enum(name: &str, values: &[&'static str], value: &str) -> Result<(), Refusal> {
    let hidden = hidden_values(name, values);
    if values
        .iter()
        .chain(hidden)
        .any(|v| v.eq_ignore_ascii_case(value))
    {
        return Ok(());
    }
    let shown: Vec<String> = values
        .iter()
        .map(|v| {
            if v.is_empty() {
                "'' (empty)".to_string()
            } else {
                v.to_string()
            }
        })
        .collect();
    let hint = nearest(value, values.iter().copied().filter(|v| !v.is_empty()), 2)
        .map(|v| format!("did you mean `{v}`? "))
        .unwrap_or_default();
    refuse(
        format!("`{value}` is not one of its values"),
        format!("{hint}use one of {}", shown.join(", ")),
    )
}

/// Entries of guc.c's enum tables marked hidden (accepted, not listed in pg_settings).
fn hidden_values(name: &str, values: &[&str]) -> &'static [&'static str] {
    let has = |v: &str| values.contains(&v);
    if has("on") && has("off") {
        // Enums that grew out of booleans keep the boolean spellings.
        &["true", "false", "yes", "no", "1", "0"]
    } else if has("debug1") && !has("info") {
        &["debug", "info"] // client_message_level_options
    } else if has("debug1") {
        &["debug"] // server_message_level_options
    } else if name == "wal_level" {
        &["archive", "hot_standby"]
    } else {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::super::params::setting;
    use super::*;

    fn ok(name: &str, value: &str) -> bool {
        check(setting(15, name).unwrap(), value).is_ok()
    }

    fn refusal(name: &str, value: &str) -> Refusal {
        check(setting(15, name).unwrap(), value).expect_err(value)
    }

    fn base(name: &str, value: &str) -> Reading {
        let s = setting(15, name).unwrap();
        match s.kind {
            Kind::Integer { unit, .. } => read_number(value, unit, true),
            Kind::Real { unit, .. } => read_number(value, unit, false),
            _ => panic!("{name} is not a number"),
        }
    }

    fn value(base: f64, with_unit: bool) -> Reading {
        Reading::Value { base, with_unit }
    }

    #[test]
    fn booleans_as_parse_bool_reads_them() {
        for yes in ["on", "ON", "true", "t", "tr", "TRUE", "yes", "y", "Ye", "1"] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["off", "of", "OFF", "false", "f", "fa", "no", "n", "NO", "0"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        for bad in [
            "", "o", "onn", "offf", "truex", "yess", "nope", "2", "01", "10", " on", "maybe",
        ] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
        assert!(ok("autovacuum", "Yes"));
        let r = refusal("autovacuum", "maybe");
        assert_eq!(r.message, "`maybe` is not a boolean");
        assert!(r.fix.contains("on or off"), "{}", r.fix);
    }

    #[test]
    fn integers_with_and_without_units() {
        // work_mem counts kB; shared_buffers 8kB blocks; wal_segment-like B units.
        assert_eq!(base("work_mem", "4MB"), value(4096.0, true));
        assert_eq!(base("work_mem", "4 MB "), value(4096.0, true));
        assert_eq!(base("work_mem", " 64"), value(64.0, false));
        assert_eq!(base("work_mem", "1GB"), value(1_048_576.0, true));
        assert_eq!(base("work_mem", "1TB"), value(1_073_741_824.0, true));
        assert_eq!(base("work_mem", "2048B"), value(2.0, true));
        assert_eq!(base("work_mem", "1.5MB"), value(1536.0, true));
        assert_eq!(base("shared_buffers", "128MB"), value(16384.0, true));
        assert_eq!(base("shared_buffers", "1kB"), value(0.0, true));
        assert_eq!(base("shared_buffers", "12kB"), value(2.0, true)); // 1.5 rounds to even
        assert_eq!(base("shared_buffers", "20kB"), value(2.0, true)); // 2.5 rounds to even
        assert_eq!(
            base("track_activity_query_size", "1kB"),
            value(1024.0, true)
        );
        assert_eq!(base("max_wal_size", "1GB"), value(1024.0, true));
        assert_eq!(base("max_wal_size", "1536kB"), value(2.0, true)); // 1.5MB: ties to even
        assert_eq!(base("max_connections", "0x10"), value(16.0, false));
        assert_eq!(base("max_connections", "010"), value(8.0, false)); // octal, as strtol
        assert_eq!(base("max_connections", "+7"), value(7.0, false));
        assert_eq!(base("max_connections", "2.5"), value(2.0, false));
        assert_eq!(base("max_connections", "3.5"), value(4.0, false));
        assert_eq!(base("max_connections", "1e2"), value(100.0, false));
        assert_eq!(base("max_connections", ".5e1"), value(5.0, false));
        assert_eq!(base("max_connections", "0x1.8p1"), value(3.0, false));
        assert_eq!(base("max_connections", "-.5"), Reading::Invalid);
        assert_eq!(base("max_connections", "09"), Reading::Invalid);
        assert_eq!(base("max_connections", "5kB"), Reading::Invalid); // takes no unit
        assert_eq!(base("max_connections", ""), Reading::Invalid);
        assert_eq!(base("max_connections", "inf"), Reading::Invalid);
        assert_eq!(base("max_connections", "1e"), Reading::Invalid);
        assert_eq!(base("max_connections", "0x"), Reading::Invalid);
        assert_eq!(base("max_connections", "3000000000"), Reading::Overflow);
        assert_eq!(base("max_connections", "-3000000000"), Reading::Overflow);
        assert_eq!(
            base("max_connections", "99999999999999999999"),
            Reading::Overflow
        );
        assert_eq!(base("max_connections", "1e400"), Reading::Overflow);
        assert_eq!(base("work_mem", "4mb"), Reading::Invalid);
        assert_eq!(base("work_mem", "4MBs"), Reading::Invalid);
        assert_eq!(base("work_mem", "4MB x"), Reading::Invalid);
        assert_eq!(base("work_mem", "4 s"), Reading::Invalid); // a time unit for a size
        assert_eq!(base("work_mem", "4096TB"), Reading::Overflow);
    }

    #[test]
    fn durations_convert_to_the_base_unit() {
        assert_eq!(base("statement_timeout", "1.5s"), value(1500.0, true));
        assert_eq!(base("statement_timeout", "1min"), value(60_000.0, true));
        assert_eq!(base("statement_timeout", "1h"), value(3_600_000.0, true));
        assert_eq!(base("statement_timeout", "1d"), value(86_400_000.0, true));
        assert_eq!(base("statement_timeout", "1500us"), value(2.0, true));
        assert_eq!(base("checkpoint_timeout", "5min"), value(300.0, true));
        assert_eq!(base("checkpoint_timeout", "1500ms"), value(2.0, true));
        assert_eq!(base("log_rotation_age", "90s"), value(2.0, true)); // 1.5min: to even
        assert_eq!(base("log_rotation_age", "1d"), value(1440.0, true));
        assert_eq!(base("vacuum_cost_delay", "500us"), value(0.5, true));
        assert_eq!(base("vacuum_cost_delay", "2.25"), value(2.25, false));
        assert_eq!(base("statement_timeout", "1 sec"), Reading::Invalid);
        assert_eq!(base("statement_timeout", "1S"), Reading::Invalid);
    }

    #[test]
    fn reals_as_strtod_reads_them() {
        assert_eq!(strtod("1.5x"), Some((1.5, "x")));
        assert_eq!(strtod(" -2e3"), Some((-2000.0, "")));
        assert_eq!(strtod("5."), Some((5.0, "")));
        assert_eq!(strtod("1e+"), Some((1.0, "e+")));
        assert_eq!(strtod("Infinity"), Some((f64::INFINITY, "")));
        assert_eq!(strtod("-inF"), Some((f64::NEG_INFINITY, "")));
        assert!(strtod("nan").unwrap().0.is_nan());
        assert_eq!(strtod("0x10"), Some((16.0, "")));
        assert_eq!(strtod("0x.8"), Some((0.5, "")));
        assert_eq!(strtod("0x1p-2"), Some((0.25, "")));
        assert_eq!(strtod("0xg"), Some((0.0, "xg")));
        assert_eq!(strtod("."), None);
        assert_eq!(strtod("e5"), None);
        assert_eq!(strtod("1e999"), Some((f64::INFINITY, "")));
        assert_eq!(strtod("1e-999"), None);
        assert_eq!(strtod("1e-310"), None); // subnormal: ERANGE
        assert_eq!(strtod("0e-999"), Some((0.0, "")));
        assert!(ok("random_page_cost", "1.1"));
        assert!(ok("random_page_cost", "1e300"));
        assert!(ok("geqo_selection_bias", "1.5"));
        assert!(ok("geqo_selection_bias", "2"));
        assert!(!ok("geqo_selection_bias", "2.0001"));
        assert!(!ok("geqo_selection_bias", "1.4999"));
        assert!(!ok("random_page_cost", "nan"));
        assert!(!ok("random_page_cost", "-1"));
        let r = refusal("random_page_cost", "inf");
        assert_eq!(r.message, "`inf` is out of range");
        assert_eq!(r.fix, "choose 0 or more");
        let r = refusal("random_page_cost", "cheap");
        assert_eq!(r.message, "`cheap` is not a number");
        assert_eq!(r.fix, "write a number without a unit, 0 or more");
        assert_eq!(
            refusal("random_page_cost", "1e999").message,
            "`1e999` is too large for PostgreSQL"
        );
    }

    #[test]
    fn out_of_range_names_the_range_in_human_units() {
        assert!(ok("work_mem", "64kB"));
        assert!(ok("work_mem", "2147483647"));
        assert!(ok("shared_buffers", "128kB"));
        assert!(!ok("shared_buffers", "120kB"));
        let r = refusal("work_mem", "1kB");
        assert_eq!(r.message, "`1kB` is out of range");
        assert_eq!(r.fix, "choose from 64kB to 2147483647kB");
        let r = refusal("max_parallel_workers", "-2");
        assert_eq!(r.message, "`-2` is out of range");
        assert_eq!(r.fix, "choose from 0 to 1024");
        let r = refusal("shared_buffers", "3");
        assert_eq!(
            r.message,
            "`3` is out of range: a number without a unit counts 8kB, so this is 24kB"
        );
        assert_eq!(
            r.fix,
            "choose from 128kB to 8589934584kB, and write the unit; did you mean `3MB`?"
        );
        let r = refusal("work_mem", "16");
        assert!(r.fix.ends_with("did you mean `16MB`?"), "{}", r.fix);
        let r = refusal("checkpoint_timeout", "10");
        assert_eq!(
            r.message,
            "`10` is out of range: a number without a unit counts s, so this is 10s"
        );
        assert_eq!(
            r.fix,
            "choose from 30s to 1d, and write the unit; did you mean `10min`?"
        );
        // No unit makes it fit: no suggestion.
        let r = refusal("authentication_timeout", "99999999");
        assert_eq!(r.fix, "choose from 1s to 10min, and write the unit");
        let r = refusal("log_min_duration_statement", "-5");
        assert_eq!(r.message, "`-5` is out of range");
        assert_eq!(r.fix, "choose from -1 to 2147483647ms");
        let r = refusal("statement_timeout", "3000000000ms");
        assert_eq!(r.message, "`3000000000ms` is too large for PostgreSQL");
        let r = refusal("vacuum_cost_delay", "200");
        assert_eq!(r.fix, "choose from 0 to 100ms, and write the unit");
        let r = refusal("vacuum_cost_delay", "1s");
        assert_eq!(r.message, "`1s` is out of range");
    }

    #[test]
    fn malformed_numbers_name_the_units() {
        let r = refusal("work_mem", "lots");
        assert_eq!(r.message, "`lots` is not a memory size");
        assert_eq!(
            r.fix,
            "write a number with one of the units B, kB, MB, GB, TB (case matters), e.g. 64MB; \
             a number alone counts kB; from 64kB to 2147483647kB"
        );
        let r = refusal("work_mem", "4mb");
        assert!(r.fix.starts_with("did you mean `4MB`? write"), "{}", r.fix);
        let r = refusal("work_mem", "4 gb ");
        assert!(r.fix.starts_with("did you mean `4GB`? write"), "{}", r.fix);
        let r = refusal("work_mem", "lots mb");
        assert!(r.fix.starts_with("write"), "{}", r.fix);
        let r = refusal("statement_timeout", "soon");
        assert_eq!(r.message, "`soon` is not a duration");
        assert!(
            r.fix.contains(
                "us, ms, s, min, h, d (case matters), e.g. 30s; a number alone counts ms"
            ),
            "{}",
            r.fix
        );
        let r = refusal("statement_timeout", "5MIN");
        assert!(r.fix.starts_with("did you mean `5min`?"), "{}", r.fix);
        let r = refusal("max_connections", "many");
        assert_eq!(r.message, "`many` is not a whole number");
        assert_eq!(
            r.fix,
            "write a whole number without a unit, from 1 to 262143"
        );
        assert_eq!(
            refusal("max_connections", "on").message,
            "`on` is not a whole number"
        );
    }

    #[test]
    fn enums_case_insensitive_with_hidden_spellings() {
        assert!(ok("synchronous_commit", "REMOTE_APPLY"));
        assert!(ok("synchronous_commit", "yes"));
        assert!(ok("synchronous_commit", "0"));
        assert!(ok("huge_pages", "TRUE"));
        assert!(ok("log_min_messages", "debug"));
        assert!(!ok("log_min_messages", "informative"));
        assert!(ok("client_min_messages", "info"));
        assert!(ok("wal_level", "hot_standby"));
        assert!(ok("ssl_max_protocol_version", ""));
        assert!(ok("default_transaction_isolation", "Read Committed"));
        assert!(!ok("default_transaction_isolation", "read  committed"));
        assert!(!ok("bytea_output", "1"));
        assert!(!ok("synchronous_commit", "y")); // enums take whole words
        let r = refusal("synchronous_commit", "maybe");
        assert_eq!(r.message, "`maybe` is not one of its values");
        assert_eq!(
            r.fix,
            "use one of local, remote_write, remote_apply, on, off"
        );
        let r = refusal("synchronous_commit", "remote_aply");
        assert_eq!(
            r.fix,
            "did you mean `remote_apply`? use one of local, remote_write, remote_apply, on, off"
        );
        let r = refusal("ssl_max_protocol_version", "TLS1.3");
        assert!(
            r.fix
                .starts_with("did you mean `TLSv1.3`? use one of '' (empty), TLSv1"),
            "{}",
            r.fix
        );
        assert_eq!(hidden_values("x", &["a"]), &[] as &[&str]);
    }

    #[test]
    fn strings_are_the_servers_to_check() {
        assert!(ok("DateStyle", "anything at all"));
        assert!(ok("shared_preload_libraries", "pg_stat_statements"));
    }

    #[test]
    fn show_prints_the_largest_exact_unit() {
        let kb = match setting(15, "work_mem").unwrap().kind {
            Kind::Integer { unit, .. } => unit,
            _ => None,
        };
        assert_eq!(show(1024.0, kb, true), "1MB");
        assert_eq!(show(1536.0, kb, true), "1536kB");
        assert_eq!(show(0.0, kb, true), "0");
        assert_eq!(show(-1.0, kb, true), "-1");
        assert_eq!(show(5.0, None, true), "5");
        assert_eq!(show(0.5, None, false), "0.5");
    }
}
