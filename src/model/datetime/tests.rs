use super::*;

#[test]
fn civil_round_trip_over_the_whole_pg_range() {
    // Every 997th day plus the edges: days → civil → days is the identity,
    // and consecutive days step month/day correctly.
    let mut d = DATE_MIN_DAYS;
    while d < DATE_END_DAYS {
        let (y, m, dd) = civil_from_days(d + UNIX_TO_PG_EPOCH_DAYS);
        assert_eq!(pg_days(y, m, dd), Ok(d));
        d += 997;
    }
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(UNIX_TO_PG_EPOCH_DAYS), (2000, 1, 1));
    assert_eq!(pg_days(-4713, 11, 24), Ok(DATE_MIN_DAYS));
    assert!(pg_days(-4713, 11, 23).is_err());
    assert_eq!(pg_days(5_874_897, 12, 31), Ok(DATE_END_DAYS - 1));
    assert!(pg_days(5_874_898, 1, 1).is_err());
}

#[test]
fn leap_years() {
    assert!(pg_days(1900, 2, 29).is_err());
    assert!(pg_days(2000, 2, 29).is_ok());
    assert!(pg_days(0, 2, 29).is_ok()); // 1 BC is a leap year
    assert!(pg_days(-100, 2, 29).is_err());
    assert!(pg_days(2023, 4, 31).is_err());
    assert!(pg_days(2023, 13, 1).is_err());
    assert!(pg_days(2023, 0, 1).is_err());
}

#[test]
fn date_text() {
    assert_eq!(parse_date("2000-01-01"), Ok(0));
    assert_eq!(parse_date("1999-12-31"), Ok(-1));
    assert_eq!(parse_date("infinity"), Ok(DATE_POS_INFINITY));
    assert_eq!(parse_date("0001-01-01 BC"), Ok(-730_485));
    assert_eq!(format_date_iso(-730_485), "0000-01-01");
    for bad in [
        "",
        "2000-1-01",
        "2000-01-01 ",
        "2000-01-01 AD",
        "0000-01-01",
        "0000-01-01 BC",
        "99999999999-01-01",
        "5874898-01-01",
        "4714-11-23 BC",
        "2000-02-30",
        "+2000-01-01",
        "２０００-01-01",
    ] {
        assert!(parse_date(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn time_text() {
    assert_eq!(parse_time("24:00:00"), Ok(USECS_PER_DAY));
    assert!(parse_time("24:00:00.000001").is_err());
    assert!(parse_time("23:60:00").is_err());
    assert!(parse_time("23:59:60").is_err());
    assert!(parse_time("1:00:00").is_err());
    assert!(parse_time("01:00:00.1234567").is_err());
    assert!(parse_time("01:00:00.").is_err());
    assert_eq!(parse_time("01:00:00.5"), Ok(USECS_PER_HOUR + 500_000));
    assert_eq!(parse_timetz("01:00:00+05"), Ok((USECS_PER_HOUR, 18_000)));
    assert!(parse_timetz("01:00:00+16").is_err());
    assert!(parse_timetz("01:00:00").is_err());
    assert!(parse_timetz("01:00:00+05:60").is_err());
}

#[test]
fn timestamp_text() {
    assert_eq!(parse_timestamp("2000-01-01 00:00:00", false), Ok(0));
    assert_eq!(parse_timestamp("2000-01-01 01:00:00+01", true), Ok(0));
    assert_eq!(
        parse_timestamp("2000-01-01 00:00:00-00:00:01", true),
        Ok(USECS_PER_SEC)
    );
    assert!(parse_timestamp("2000-01-01 00:00:00", true).is_err());
    assert!(parse_timestamp("2000-01-01 00:00:00+01", false).is_err());
    assert!(parse_timestamp("2000-01-01T00:00:00", false).is_err());
    assert!(parse_timestamp("294277-01-01 00:00:00", false).is_err());
    assert!(parse_timestamp("4714-11-23 23:59:59 BC", false).is_err());
    // The UTC value decides the range for timestamptz, as in PostgreSQL.
    assert!(parse_timestamp("4714-11-24 00:00:00+01 BC", true).is_err());
    assert!(parse_timestamp("4714-11-24 00:00:00-01 BC", true).is_ok());
}

#[test]
fn interval_text() {
    let p = |s| parse_interval(s).unwrap();
    assert_eq!(
        p("1 year 2 mons 3 days 04:05:06.5"),
        IntervalParts {
            months: 14,
            days: 3,
            micros: 14_706_500_000
        }
    );
    assert_eq!(
        p("-1 days +02:00:00"),
        IntervalParts {
            months: 0,
            days: -1,
            micros: 2 * USECS_PER_HOUR
        }
    );
    assert_eq!(
        p("-2562047788:00:54.775808"),
        IntervalParts {
            months: 0,
            days: 0,
            micros: i64::MIN
        }
    );
    for bad in [
        "",
        "1",
        "1 week",
        "1 day 2 days x",
        "00:00:00 1 day",
        "2562047788:00:54.775808",
        "-178956970 years -9 mons",
        "@ 1 day",
        "P1D",
        "1 day  02:00:00",
        "1 day 2:0:0",
        "- 1 day",
        "1 day 02:00:60",
    ] {
        assert!(parse_interval(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn interval_iso_output() {
    let iv = |months, days, micros| {
        format_interval_iso(IntervalParts {
            months,
            days,
            micros,
        })
    };
    assert_eq!(iv(0, 0, 0), "PT0S");
    assert_eq!(iv(14, 3, 14_706_500_000), "P1Y2M3DT4H5M6.5S");
    assert_eq!(iv(0, 0, -1_500_000), "PT-1.5S");
    assert_eq!(iv(0, -1, -1), "P-1DT-0.000001S");
    assert_eq!(iv(i32::MAX, i32::MAX, i64::MAX), "infinity");
    assert_eq!(iv(i32::MIN, i32::MIN, i64::MIN), "-infinity");
    assert_eq!(
        iv(i32::MIN, 0, i64::MIN),
        "P-178956970Y-8MT-2562047788H-54.775808S"
    );
}

#[test]
fn iso_years() {
    let f = |y| {
        let mut s = String::new();
        push_iso_year(&mut s, y);
        s
    };
    assert_eq!(f(0), "0000");
    assert_eq!(f(-43), "-0043");
    assert_eq!(f(-4712), "-4712");
    assert_eq!(f(9999), "9999");
    assert_eq!(f(10000), "+10000");
    assert_eq!(f(12), "0012");
}

#[test]
fn formatting_is_total() {
    // No panics for any representable input, even outside PostgreSQL's range.
    for us in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX] {
        let _ = format_timestamp_iso(us, "Z");
        let _ = format_time_iso(us);
        let _ = format_interval_iso(IntervalParts {
            months: 0,
            days: 0,
            micros: us,
        });
    }
    for d in [i32::MIN, i32::MIN + 1, -1, 0, i32::MAX - 1, i32::MAX] {
        let _ = format_date_iso(d);
    }
    for off in [i32::MIN, -1, 0, i32::MAX] {
        let mut s = String::new();
        push_offset(&mut s, off);
    }
}
