//! Calendar arithmetic and the text forms of PostgreSQL's date/time types,
//! without a date library.
//!
//! PostgreSQL counts dates in days and timestamps in microseconds since
//! 2000-01-01 on the proleptic Gregorian calendar with astronomical year
//! numbering inside (year 0 = 1 BC), and prints BC years with a ` BC` suffix.
//! ±infinity are the extreme integers (`i32::MIN/MAX`, `i64::MIN/MAX`).
//!
//! Parsing accepts what the output functions print with `DateStyle = ISO` and
//! `IntervalStyle = postgres`, and rejects values PostgreSQL itself would
//! reject (out of range dates, minutes ≥ 60 …).

use std::fmt::Write as _;

/// `date` −infinity.
pub const DATE_NEG_INFINITY: i32 = i32::MIN;
/// `date` +infinity.
pub const DATE_POS_INFINITY: i32 = i32::MAX;
/// `timestamp`/`timestamptz` −infinity.
pub const TIMESTAMP_NEG_INFINITY: i64 = i64::MIN;
/// `timestamp`/`timestamptz` +infinity.
pub const TIMESTAMP_POS_INFINITY: i64 = i64::MAX;

pub(crate) const USECS_PER_SEC: i64 = 1_000_000;
pub(crate) const USECS_PER_MINUTE: i64 = 60 * USECS_PER_SEC;
pub(crate) const USECS_PER_HOUR: i64 = 60 * USECS_PER_MINUTE;
pub(crate) const USECS_PER_DAY: i64 = 24 * USECS_PER_HOUR;

/// Days from 1970-01-01 to 2000-01-01.
pub(crate) const UNIX_TO_PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
pub(crate) const UNIX_TO_PG_EPOCH_USECS: i64 = UNIX_TO_PG_EPOCH_DAYS * USECS_PER_DAY;

/// Julian day of 2000-01-01.
const POSTGRES_EPOCH_JDATE: i64 = 2_451_545;
/// First valid date: Julian day 0 (4714-11-24 BC), in days since 2000.
const DATE_MIN_DAYS: i64 = -POSTGRES_EPOCH_JDATE;
/// First invalid date: Julian day 2147483494 (5874898-01-01).
const DATE_END_DAYS: i64 = 2_147_483_494 - POSTGRES_EPOCH_JDATE;
/// First valid timestamp (4714-11-24 00:00 BC).
const TIMESTAMP_MIN: i64 = -211_813_488_000_000_000;
/// First invalid timestamp (294277-01-01 00:00).
const TIMESTAMP_END: i64 = 9_223_371_331_200_000_000;
/// `timetz` offsets must be strictly inside ±16:00.
const TZDISP_LIMIT: i32 = 16 * 3600;

pub(crate) type Reason = String;

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical years).
/// Exact for every `y` whose result fits in i64 (Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date (astronomical year, month 1–12, day 1–31)
/// `z` days after 1970-01-01. Total for every i64 input that is not within
/// 719468 of i64::MAX; callers pass i32-range values.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    y.rem_euclid(4) == 0 && (y.rem_euclid(100) != 0 || y.rem_euclid(400) == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// A PostgreSQL `date` (days since 2000-01-01) from an astronomical date,
/// or an error when PostgreSQL could not store it.
fn pg_days(y: i64, m: u32, d: u32) -> Result<i64, Reason> {
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return Err(format!("no such date: month {m}, day {d}"));
    }
    if !(-10_000_000..=10_000_000).contains(&y) {
        return Err("date out of range".into());
    }
    let days = days_from_civil(y, m, d) - UNIX_TO_PG_EPOCH_DAYS;
    if !(DATE_MIN_DAYS..DATE_END_DAYS).contains(&days) {
        return Err("date out of range".into());
    }
    Ok(days)
}

/// Checks a `date` sent in binary: a finite day PostgreSQL can store, or ±infinity.
pub(crate) fn check_date(days: i32) -> Result<i32, Reason> {
    if days == DATE_NEG_INFINITY
        || days == DATE_POS_INFINITY
        || (DATE_MIN_DAYS..DATE_END_DAYS).contains(&i64::from(days))
    {
        Ok(days)
    } else {
        Err("date out of range".into())
    }
}

/// Checks a `timestamp[tz]` sent in binary: finite within PostgreSQL's range, or ±infinity.
pub(crate) fn check_timestamp(us: i64) -> Result<i64, Reason> {
    if us == TIMESTAMP_NEG_INFINITY
        || us == TIMESTAMP_POS_INFINITY
        || (TIMESTAMP_MIN..TIMESTAMP_END).contains(&us)
    {
        Ok(us)
    } else {
        Err("timestamp out of range".into())
    }
}

/// Checks a `time` sent in binary: 00:00:00 to 24:00:00 inclusive.
pub(crate) fn check_time(us: i64) -> Result<i64, Reason> {
    if (0..=USECS_PER_DAY).contains(&us) {
        Ok(us)
    } else {
        Err("time out of range".into())
    }
}

/// Checks a `timetz` zone offset (seconds east of UTC).
pub(crate) fn check_offset(secs: i32) -> Result<i32, Reason> {
    if secs > -TZDISP_LIMIT && secs < TZDISP_LIMIT {
        Ok(secs)
    } else {
        Err("time zone displacement out of range".into())
    }
}

/// A small cursor over ASCII text.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor {
            s: s.as_bytes(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), Reason> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}'", c as char))
        }
    }

    fn rest(&self) -> &'a [u8] {
        self.s.get(self.pos..).unwrap_or(&[])
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    /// An unsigned decimal of `min..=max` digits.
    fn digits(&mut self, min: usize, max: usize) -> Result<i64, Reason> {
        let mut n: i64 = 0;
        let mut count = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            if count == max {
                return Err("too many digits".into());
            }
            n = n * 10 + i64::from(c - b'0');
            count += 1;
            self.pos += 1;
        }
        if count < min {
            return Err("expected digits".into());
        }
        Ok(n)
    }

    /// Optional `.ffffff` (1–6 digits) as microseconds.
    fn fraction(&mut self) -> Result<i64, Reason> {
        if !self.eat(b'.') {
            return Ok(0);
        }
        let start = self.pos;
        let f = self.digits(1, 6)?;
        let n = self.pos - start;
        Ok(f * 10_i64.pow(6 - n as u32))
    }
}

/// `YYYY-MM-DD` (4 or more year digits); returns (year as printed, month, day).
fn parse_ymd(c: &mut Cursor) -> Result<(i64, u32, u32), Reason> {
    let y = c.digits(4, 9)?;
    c.expect(b'-')?;
    let m = c.digits(2, 2)? as u32;
    c.expect(b'-')?;
    let d = c.digits(2, 2)? as u32;
    Ok((y, m, d))
}

/// `HH:MM:SS[.ffffff]` as microseconds since midnight, `24:00:00` included.
fn parse_hms(c: &mut Cursor) -> Result<i64, Reason> {
    let h = c.digits(2, 2)?;
    c.expect(b':')?;
    let mi = c.digits(2, 2)?;
    c.expect(b':')?;
    let s = c.digits(2, 2)?;
    let f = c.fraction()?;
    if mi > 59 || s > 59 || h > 24 {
        return Err("time field out of range".into());
    }
    let us = h * USECS_PER_HOUR + mi * USECS_PER_MINUTE + s * USECS_PER_SEC + f;
    check_time(us)
}

/// `+HH[:MM[:SS]]` or `-…` as seconds east of UTC.
fn parse_offset(c: &mut Cursor) -> Result<i32, Reason> {
    let neg = match c.peek() {
        Some(b'+') => false,
        Some(b'-') => true,
        _ => return Err("expected a zone offset".into()),
    };
    c.pos += 1;
    let h = c.digits(2, 2)?;
    let mut m = 0;
    let mut s = 0;
    if c.eat(b':') {
        m = c.digits(2, 2)?;
        if c.eat(b':') {
            s = c.digits(2, 2)?;
        }
    }
    if m > 59 || s > 59 {
        return Err("zone offset field out of range".into());
    }
    let secs = (h * 3600 + m * 60 + s) as i32;
    check_offset(if neg { -secs } else { secs })
}

/// Year as printed plus the optional ` BC` suffix → astronomical year.
fn astronomical_year(printed: i64, bc: bool) -> Result<i64, Reason> {
    if printed == 0 {
        return Err("year 0 does not exist".into());
    }
    Ok(if bc { 1 - printed } else { printed })
}

fn eat_bc(c: &mut Cursor) -> bool {
    if c.rest() == b" BC" {
        c.pos += 3;
        true
    } else {
        false
    }
}

fn finish(c: &Cursor) -> Result<(), Reason> {
    if c.at_end() {
        Ok(())
    } else {
        Err("unexpected trailing characters".into())
    }
}

/// `date` text (`2024-01-31`, `0044-03-15 BC`, `infinity`, `-infinity`) →
/// days since 2000-01-01.
pub(crate) fn parse_date(s: &str) -> Result<i32, Reason> {
    match s {
        "infinity" => return Ok(DATE_POS_INFINITY),
        "-infinity" => return Ok(DATE_NEG_INFINITY),
        _ => {}
    }
    let mut c = Cursor::new(s);
    let (y, m, d) = parse_ymd(&mut c)?;
    let bc = eat_bc(&mut c);
    finish(&c)?;
    let days = pg_days(astronomical_year(y, bc)?, m, d)?;
    i32::try_from(days).map_err(|_| "date out of range".into())
}

/// `time` text → microseconds since midnight.
pub(crate) fn parse_time(s: &str) -> Result<i64, Reason> {
    let mut c = Cursor::new(s);
    let us = parse_hms(&mut c)?;
    finish(&c)?;
    Ok(us)
}

/// `timetz` text (`12:34:56.5+05:30`) → (microseconds, seconds east of UTC).
pub(crate) fn parse_timetz(s: &str) -> Result<(i64, i32), Reason> {
    let mut c = Cursor::new(s);
    let us = parse_hms(&mut c)?;
    let off = parse_offset(&mut c)?;
    finish(&c)?;
    Ok((us, off))
}

/// `timestamp` text (`2024-01-02 03:04:05.123456`, optional ` BC`) or
/// `timestamptz` text (the same with a zone offset before ` BC`) →
/// microseconds since 2000-01-01 (UTC for `timestamptz`).
pub(crate) fn parse_timestamp(s: &str, with_zone: bool) -> Result<i64, Reason> {
    match s {
        "infinity" => return Ok(TIMESTAMP_POS_INFINITY),
        "-infinity" => return Ok(TIMESTAMP_NEG_INFINITY),
        _ => {}
    }
    let mut c = Cursor::new(s);
    let (y, m, d) = parse_ymd(&mut c)?;
    c.expect(b' ')?;
    let time = parse_hms(&mut c)?;
    let offset = if with_zone { parse_offset(&mut c)? } else { 0 };
    let bc = eat_bc(&mut c);
    finish(&c)?;
    let days = pg_days(astronomical_year(y, bc)?, m, d)?;
    let us = i128::from(days) * i128::from(USECS_PER_DAY) + i128::from(time)
        - i128::from(offset) * i128::from(USECS_PER_SEC);
    let us = i64::try_from(us).map_err(|_| "timestamp out of range".to_string())?;
    if !(TIMESTAMP_MIN..TIMESTAMP_END).contains(&us) {
        return Err("timestamp out of range".into());
    }
    Ok(us)
}

/// An interval's three fields, as PostgreSQL stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IntervalParts {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

/// PostgreSQL 17's `infinity` interval (all fields at their maximum).
pub(crate) const INTERVAL_POS_INFINITY: IntervalParts = IntervalParts {
    months: i32::MAX,
    days: i32::MAX,
    micros: i64::MAX,
};
/// PostgreSQL 17's `-infinity` interval (all fields at their minimum).
pub(crate) const INTERVAL_NEG_INFINITY: IntervalParts = IntervalParts {
    months: i32::MIN,
    days: i32::MIN,
    micros: i64::MIN,
};

/// `interval` text in IntervalStyle `postgres`
/// (`1 year 2 mons 3 days 04:05:06.5`, `-1 days +02:00:00`, `00:00:00`),
/// plus PostgreSQL 17's `infinity`/`-infinity`.
pub(crate) fn parse_interval(s: &str) -> Result<IntervalParts, Reason> {
    match s {
        "infinity" => return Ok(INTERVAL_POS_INFINITY),
        "-infinity" => return Ok(INTERVAL_NEG_INFINITY),
        _ => {}
    }
    let mut months: i64 = 0;
    let mut days: i64 = 0;
    let mut micros: i128 = 0;
    let mut saw_time = false;
    let mut saw_any = false;
    let mut tokens = s.split(' ');
    while let Some(tok) = tokens.next() {
        if saw_time {
            return Err("unexpected text after the time part".into());
        }
        saw_any = true;
        if tok.contains(':') {
            micros = parse_interval_time(tok)?;
            saw_time = true;
            continue;
        }
        let n: i64 = parse_signed(tok)?;
        let unit = tokens.next().ok_or("number without a unit")?;
        match unit {
            "year" | "years" => months += n.checked_mul(12).ok_or("interval out of range")?,
            "mon" | "mons" => months += n,
            "day" | "days" => days += n,
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} (only IntervalStyle postgres is supported)"
                ))
            }
        }
        if months.abs() > i64::from(u32::MAX) || days.abs() > i64::from(u32::MAX) {
            return Err("interval out of range".into());
        }
    }
    if !saw_any {
        return Err("empty interval".into());
    }
    Ok(IntervalParts {
        months: i32::try_from(months).map_err(|_| "interval months out of range")?,
        days: i32::try_from(days).map_err(|_| "interval days out of range")?,
        micros: i64::try_from(micros).map_err(|_| "interval time out of range")?,
    })
}

/// An optionally signed decimal integer (`3`, `-1`, `+3`).
fn parse_signed(tok: &str) -> Result<i64, Reason> {
    let digits = tok.strip_prefix(['+', '-']).unwrap_or(tok);
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected a number, found {tok:?}"));
    }
    tok.parse::<i64>()
        .map_err(|_| format!("expected a number, found {tok:?}"))
}

/// `[+-]H+:MM:SS[.ffffff]` → signed microseconds (the sign covers all fields).
fn parse_interval_time(tok: &str) -> Result<i128, Reason> {
    let (neg, body) = match tok.as_bytes().first() {
        Some(b'-') => (true, tok.get(1..).unwrap_or("")),
        Some(b'+') => (false, tok.get(1..).unwrap_or("")),
        _ => (false, tok),
    };
    let mut c = Cursor::new(body);
    let h = c.digits(1, 12)?;
    c.expect(b':')?;
    let m = c.digits(2, 2)?;
    c.expect(b':')?;
    let s = c.digits(2, 2)?;
    let f = c.fraction()?;
    finish(&c)?;
    if m > 59 || s > 59 {
        return Err("interval time field out of range".into());
    }
    let mag = i128::from(h) * i128::from(USECS_PER_HOUR)
        + i128::from(m * USECS_PER_MINUTE + s * USECS_PER_SEC + f);
    Ok(if neg { -mag } else { mag })
}

// ---------------------------------------------------------------------------
// Output (ISO 8601)

/// Year in ISO 8601 form with astronomical numbering, as `java.time` prints
/// it: 4 digits for 0000–9999, a `-` sign below 0 (1 BC = `0000`,
/// 44 BC = `-0043`), a `+` sign above 9999.
fn push_iso_year(out: &mut String, y: i64) {
    // Writing to a String cannot fail.
    let _ = if y < 0 {
        write!(out, "-{:04}", -y)
    } else if y > 9999 {
        write!(out, "+{y}")
    } else {
        write!(out, "{y:04}")
    };
}

fn push_iso_date(out: &mut String, days_since_2000: i64) {
    let (y, m, d) = civil_from_days(days_since_2000 + UNIX_TO_PG_EPOCH_DAYS);
    push_iso_year(out, y);
    let _ = write!(out, "-{m:02}-{d:02}");
}

/// `.ffffff` with trailing zeros removed, nothing for a whole second.
fn push_fraction(out: &mut String, frac_us: i64) {
    if frac_us != 0 {
        let digits = format!("{:06}", frac_us.unsigned_abs());
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

fn push_hms(out: &mut String, us: i64) {
    let h = us / USECS_PER_HOUR;
    let m = us / USECS_PER_MINUTE % 60;
    let s = us / USECS_PER_SEC % 60;
    let _ = write!(out, "{h:02}:{m:02}:{s:02}");
    push_fraction(out, us % USECS_PER_SEC);
}

/// A `date` as `YYYY-MM-DD` (see [`push_iso_year`]) or `infinity`/`-infinity`.
pub(crate) fn format_date_iso(days: i32) -> String {
    match days {
        DATE_POS_INFINITY => "infinity".into(),
        DATE_NEG_INFINITY => "-infinity".into(),
        d => {
            let mut out = String::with_capacity(10);
            push_iso_date(&mut out, i64::from(d));
            out
        }
    }
}

/// A `time` as `HH:MM:SS[.ffffff]` (`24:00:00` stays as is).
pub(crate) fn format_time_iso(us: i64) -> String {
    let mut out = String::with_capacity(15);
    push_hms(&mut out, us.clamp(0, USECS_PER_DAY));
    out
}

/// A zone offset (seconds east) as `+HH:MM` or `+HH:MM:SS`.
pub(crate) fn push_offset(out: &mut String, secs: i32) {
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.unsigned_abs();
    let _ = write!(out, "{sign}{:02}:{:02}", a / 3600, a / 60 % 60);
    if !a.is_multiple_of(60) {
        let _ = write!(out, ":{:02}", a % 60);
    }
}

/// A `timetz` as `HH:MM:SS[.ffffff]+HH:MM[:SS]`.
pub(crate) fn format_timetz_iso(us: i64, offset_secs: i32) -> String {
    let mut out = format_time_iso(us);
    push_offset(&mut out, offset_secs);
    out
}

/// A timestamp as `YYYY-MM-DDTHH:MM:SS[.ffffff]` followed by `suffix`
/// (`""` or `"Z"`), or `infinity`/`-infinity`.
pub(crate) fn format_timestamp_iso(us: i64, suffix: &str) -> String {
    match us {
        TIMESTAMP_POS_INFINITY => "infinity".into(),
        TIMESTAMP_NEG_INFINITY => "-infinity".into(),
        us => {
            let mut out = String::with_capacity(27);
            push_iso_date(&mut out, us.div_euclid(USECS_PER_DAY));
            out.push('T');
            push_hms(&mut out, us.rem_euclid(USECS_PER_DAY));
            out.push_str(suffix);
            out
        }
    }
}

/// An interval as an ISO 8601 duration exactly as PostgreSQL prints it with
/// `IntervalStyle = iso_8601`: `P1Y2M3DT4H5M6.5S`, each field with its own
/// sign (`P-1DT2H`, `PT-1.5S`), `PT0S` for zero. PostgreSQL 17's infinite
/// intervals print as `infinity`/`-infinity`.
pub(crate) fn format_interval_iso(iv: IntervalParts) -> String {
    if iv == INTERVAL_POS_INFINITY {
        return "infinity".into();
    }
    if iv == INTERVAL_NEG_INFINITY {
        return "-infinity".into();
    }
    let year = iv.months / 12;
    let mon = iv.months % 12;
    let hour = iv.micros / USECS_PER_HOUR;
    let min = iv.micros % USECS_PER_HOUR / USECS_PER_MINUTE;
    let sec = iv.micros % USECS_PER_MINUTE / USECS_PER_SEC;
    let fsec = iv.micros % USECS_PER_SEC;
    if iv.months == 0 && iv.days == 0 && iv.micros == 0 {
        return "PT0S".into();
    }
    let mut out = String::from("P");
    let part = |out: &mut String, v: i64, unit: char| {
        if v != 0 {
            let _ = write!(out, "{v}{unit}");
        }
    };
    part(&mut out, i64::from(year), 'Y');
    part(&mut out, i64::from(mon), 'M');
    part(&mut out, i64::from(iv.days), 'D');
    if iv.micros != 0 {
        out.push('T');
    }
    part(&mut out, hour, 'H');
    part(&mut out, min, 'M');
    if sec != 0 || fsec != 0 {
        if sec < 0 || fsec < 0 {
            out.push('-');
        }
        let _ = write!(out, "{}", sec.unsigned_abs());
        push_fraction(&mut out, fsec);
        out.push('S');
    }
    out
}

/// Total microseconds of an interval counting a year (12 months) as 365.25
/// days, each remaining month as 30 days and a day as 24 hours — the rule of
/// PostgreSQL's `EXTRACT(EPOCH FROM interval)`. Exact (i128).
pub(crate) fn interval_total_micros(iv: IntervalParts) -> i128 {
    const YEAR_US: i128 = 31_557_600 * 1_000_000; // 365.25 days
    const MONTH_US: i128 = 30 * USECS_PER_DAY as i128;
    i128::from(iv.months / 12) * YEAR_US
        + i128::from(iv.months % 12) * MONTH_US
        + i128::from(iv.days) * i128::from(USECS_PER_DAY)
        + i128::from(iv.micros)
}

#[cfg(test)]
mod tests;
