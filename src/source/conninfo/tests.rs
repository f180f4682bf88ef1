use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn url_with_everything() {
    let c = ConnInfo::parse_with_env(
        "postgres://rep%40x:p%3Ass@db1.example:6543/app%20db?sslmode=verify-full&application_name=b&connect_timeout=5",
        no_env,
    )
    .unwrap();
    assert_eq!(c.user, "rep@x");
    assert_eq!(c.password.as_deref(), Some("p:ss"));
    assert_eq!(c.host, "db1.example");
    assert_eq!(c.port, 6543);
    assert_eq!(c.dbname, "app db");
    assert_eq!(c.sslmode, SslMode::VerifyFull);
    assert_eq!(c.application_name.as_deref(), Some("b"));
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(5)));
}

#[test]
fn url_defaults_and_ipv6() {
    let c = ConnInfo::parse_with_env("postgresql://[::1]:5433", |k| {
        (k == "PGUSER").then(|| "alice".to_string())
    })
    .unwrap();
    assert_eq!(c.host, "::1");
    assert_eq!(c.port, 5433);
    assert_eq!(c.user, "alice");
    assert_eq!(c.dbname, "alice");
    assert_eq!(c.sslmode, SslMode::Prefer);
    let c = ConnInfo::parse_with_env("postgres://", no_env).unwrap();
    assert_eq!(c.host, "localhost");
    assert_eq!(c.port, 5432);
}

#[test]
fn key_value_with_quotes() {
    let c = ConnInfo::parse_with_env(
        "host=127.0.0.1 port = 5999 user=bob password='it\\'s a secret' dbname=x sslmode=disable",
        no_env,
    )
    .unwrap();
    assert_eq!(c.host, "127.0.0.1");
    assert_eq!(c.port, 5999);
    assert_eq!(c.password.as_deref(), Some("it's a secret"));
    assert_eq!(c.sslmode, SslMode::Disable);
}

#[test]
fn env_fills_gaps() {
    let c = ConnInfo::parse_with_env("dbname=x", |k| match k {
        "PGHOST" => Some("h".into()),
        "PGPORT" => Some("7".into()),
        "PGPASSWORD" => Some("pw".into()),
        "PGSSLMODE" => Some("require".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!((c.host.as_str(), c.port), ("h", 7));
    assert_eq!(c.password.as_deref(), Some("pw"));
    assert_eq!(c.sslmode, SslMode::Require);
}

#[test]
fn bad_inputs_name_the_problem() {
    let cases = [
        ("postgres://u:secret@h:notaport/db", "port"),
        ("mysql://h/db", "scheme"),
        ("postgres://h/db?sslmode=maybe", "sslmode"),
        ("host=a bogus=1", "bogus"),
        ("host", "missing"),
        ("password='open", "unterminated"),
        ("postgres://h1,,h2/db", "empty entry"),
        ("host=h1,h2 port=1,2,3", "3 ports given for 2 hosts"),
        (
            "postgres://h/db?target_session_attrs=primary-ish",
            "target_session_attrs",
        ),
        ("postgres://h/db?connect_timeout=soon", "connect_timeout"),
        ("postgres://[::1/db", "IPv6"),
    ];
    for (input, needle) in cases {
        let err = ConnInfo::parse_with_env(input, no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{input}: {err}");
        assert!(!err.contains("secret"), "password leaked: {err}");
    }
}

/// Base64 passwords (from `${VAR}`) hold `/`, `+` and `=`; with `?`,
/// `#` or `@` too, the URL splits inside the password. Whatever the
/// parse trips on, no message shows any of it.
#[test]
fn passwords_with_url_delimiters_never_show() {
    let secrets = [
        "ab12/cd+ef==",
        "/l3ading",
        "x?applicati0n_nam3=z9",
        "q?w/e#r",
        "p@zz/w0rd",
        "tr4iling/",
        "a9?b8=c7x",
    ];
    for pw in secrets {
        for url in [
            format!("postgres://app:{pw}@db1:5432/app"),
            format!("postgres://app:{pw}@db1:notaport/app"),
            format!("postgresql://app:{pw}@db1/app?sslmode=maybe"),
            format!("mysql://app:{pw}@db1/app"),
        ] {
            let Err(e) = ConnInfo::parse_with_env(&url, no_env) else {
                continue;
            };
            let e = e.to_string();
            for piece in pw.split(['/', '?', '#', '@', '=']).filter(|p| p.len() > 1) {
                assert!(!e.contains(piece), "{piece:?} of the password in: {e}");
            }
            assert!(e.contains("app:***@db1"), "{e}");
        }
    }
    // A split password gets the fix, not a misleading detail.
    let e = ConnInfo::parse_with_env("postgres://app:ab12/cd==@db1/app", no_env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("percent-encode") && e.contains("%2F"), "{e}");
    // Bad percent-encoding in the password is named, not quoted.
    let e = ConnInfo::parse_with_env("postgres://app:s3cr%FFt@db1/app", no_env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("password") && !e.contains("s3cr"), "{e}");
}

#[test]
fn redaction() {
    assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
    assert_eq!(
        redact_url("postgres://u:a/b?c@d@h:1/db?x=y"),
        "postgres://u:***@h:1/db?x=y"
    );
    assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    assert_eq!(redact_url("postgres://u/x@h/db"), "postgres://***@h/db");
    assert_eq!(redact_url("host=h password=x"), "host=h password=x");
    assert_eq!(
        redact_urls_in("error sending request for url (https://u:p/q@reg:8081/subjects): refused"),
        "error sending request for url (https://u:***@reg:8081/subjects): refused"
    );
    assert_eq!(redact_urls_in("no url here"), "no url here");
}

#[test]
fn several_hosts_in_a_url() {
    let c = ConnInfo::parse_with_env(
        "postgres://rep:pw@db1:5432,db2:5433,[::1],db4/app?target_session_attrs=read-write",
        no_env,
    )
    .unwrap();
    assert_eq!(
        c.hosts,
        vec![
            ("db1".to_string(), 5432),
            ("db2".to_string(), 5433),
            ("::1".to_string(), 5432),
            ("db4".to_string(), 5432),
        ]
    );
    assert_eq!((c.host.as_str(), c.port), ("db1", 5432));
    assert_eq!(c.target_session_attrs, Some(TargetSessionAttrs::ReadWrite));
    assert!(c.is_multi_host() && c.checks_session());
    assert_eq!(
        c.to_string(),
        "rep@db1:5432,db2:5433,[::1]:5432,db4:5432/app"
    );
    let cands = c.candidates();
    assert_eq!(cands.len(), 4);
    assert_eq!((cands[1].host.as_str(), cands[1].port), ("db2", 5433));
    assert_eq!(cands[1].hosts.len(), 1);
    assert_eq!(cands[1].password.as_deref(), Some("pw"));
    assert_eq!(cands[1].to_string(), "rep@db2:5433/app");
}

#[test]
fn several_hosts_key_value() {
    let c = ConnInfo::parse_with_env(
        "host=h1,h2 port=5432,5433 dbname=app target_session_attrs=primary",
        no_env,
    )
    .unwrap();
    assert_eq!(
        c.hosts,
        vec![("h1".to_string(), 5432), ("h2".to_string(), 5433)]
    );
    assert_eq!(c.target_session_attrs, Some(TargetSessionAttrs::Primary));
    // One port for every host.
    let c = ConnInfo::parse_with_env("host=h1,h2,h3 port=6000", no_env).unwrap();
    assert!(c.hosts.iter().all(|(_, p)| *p == 6000));
    // The environment fills in the same way.
    let c = ConnInfo::parse_with_env("dbname=x", |k| match k {
        "PGHOST" => Some("a,b".into()),
        "PGTARGETSESSIONATTRS" => Some("standby".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.hosts.len(), 2);
    assert_eq!(c.target_session_attrs, Some(TargetSessionAttrs::Standby));
}

/// A single host stays exactly what it was: no session check.
#[test]
fn one_host_is_unchanged() {
    let c = ConnInfo::parse_with_env("postgres://u@h:7/db", no_env).unwrap();
    assert_eq!(c.hosts, vec![("h".to_string(), 7)]);
    assert_eq!(c.target_session_attrs, None);
    assert!(!c.is_multi_host() && !c.checks_session());
    assert_eq!(c.to_string(), "u@h:7/db");
    assert_eq!(c.candidates(), vec![c.clone()]);
}

#[test]
fn session_attrs_accept() {
    use TargetSessionAttrs::*;
    let all = [
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ];
    for name in all {
        assert_eq!(TargetSessionAttrs::parse(name).unwrap().name(), name);
    }
    // (in_recovery, read_only)
    let primary = (false, false);
    let standby = (true, true);
    let ro_primary = (false, true);
    let ok = |a: TargetSessionAttrs, (r, ro): (bool, bool)| a.accepts(r, ro);
    assert!(ok(Any, standby) && ok(Any, primary));
    assert!(ok(ReadWrite, primary) && !ok(ReadWrite, standby) && !ok(ReadWrite, ro_primary));
    assert!(ok(Primary, primary) && ok(Primary, ro_primary) && !ok(Primary, standby));
    assert!(ok(Standby, standby) && !ok(Standby, primary));
    assert!(ok(ReadOnly, standby) && ok(ReadOnly, ro_primary) && !ok(ReadOnly, primary));
}

/// The order of tries and what is kept, with fake servers.
#[test]
fn connect_first_tries_hosts_in_order() {
    let states = |host: &str| -> Result<SessionState, String> {
        match host {
            "down" => Err("refused".into()),
            "standby" => Ok(SessionState {
                in_recovery: true,
                read_only: true,
            }),
            _ => Ok(SessionState {
                in_recovery: false,
                read_only: false,
            }),
        }
    };
    let run = |url: &str| {
        let info = ConnInfo::parse_with_env(url, no_env).unwrap();
        let tried = std::cell::RefCell::new(Vec::new());
        let r = futures_util::FutureExt::now_or_never(connect_first(&info, |c, check| {
            tried.borrow_mut().push(c.host.clone());
            let s = states(&c.host);
            async move { s.map(|s| (c.host, check.then_some(s))) }
        }))
        .expect("ready");
        (r, tried.into_inner())
    };
    let (r, tried) = run("postgres://down,standby,primary/db?target_session_attrs=read-write");
    assert_eq!(r.ok().as_deref(), Some("primary"));
    assert_eq!(tried, ["down", "standby", "primary"]);
    // any: the first that answers, standby or not.
    let (r, _) = run("postgres://down,standby,primary/db");
    assert_eq!(r.ok().as_deref(), Some("standby"));
    let (r, tried) =
        run("postgres://standby,primary,standby/db?target_session_attrs=prefer-standby");
    assert_eq!(r.ok().as_deref(), Some("standby"));
    assert_eq!(tried, ["standby"]);
    let (r, _) = run("postgres://primary,down/db?target_session_attrs=prefer-standby");
    assert_eq!(r.ok().as_deref(), Some("primary"));
    // None suitable: every host and why.
    let (r, _) = run("postgres://down:1,standby:2/db?target_session_attrs=primary");
    let Err(refused) = r else {
        panic!("expected no host")
    };
    assert_eq!(
        describe_refusals(&refused),
        "down:1: refused; standby:2: a standby (in recovery)"
    );
}
