use super::*;

const GOOD: &str = r#"
[source]
url = "postgres://rep@db1:5432/app"
slot = "pgbridge_app"
publications = ["app_pub"]

[[sink]]
name = "analytics"
type = "postgres"
url = "postgres://writer@analytics/warehouse"
tables = ["public.orders", "customers"]
create_tables = true
"#;

#[test]
fn resync_command_quotes_the_path() {
    let c = Config::parse(GOOD, "/etc/pgbridge/app.toml").unwrap();
    assert_eq!(
        c.resync_command(),
        "pgbridge resync --config /etc/pgbridge/app.toml"
    );
    let c = Config::parse(GOOD, "my dir/it's.toml").unwrap();
    assert_eq!(
        c.resync_command(),
        "pgbridge resync --config 'my dir/it'\\''s.toml'"
    );
}

#[test]
fn parses_the_documented_example() {
    let c = Config::parse(GOOD, "x.toml").unwrap();
    assert_eq!(c.source.slot, "pgbridge_app");
    assert_eq!(c.source.snapshot, SnapshotMode::Initial);
    assert_eq!(c.sinks.len(), 1);
    assert_eq!(
        c.sinks[0].tables().listed(),
        ["public.orders", "public.customers"]
    );
    let SinkConfig::Postgres(p) = &c.sinks[0] else {
        panic!("a postgres sink")
    };
    assert!(p.create_tables);
    assert_eq!(p.url.info.dbname, "warehouse");
    assert_eq!(p.apply_workers, 1);
}

#[test]
fn capture_ddl_key() {
    let c = Config::parse(GOOD, "x.toml").unwrap();
    assert!(!c.source.capture_ddl, "off by default");
    let on = GOOD.replace("[source]\n", "[source]\ncapture_ddl = true\n");
    assert!(Config::parse(&on, "x.toml").unwrap().source.capture_ddl);
    let bad = GOOD.replace("[source]\n", "[source]\ncapture_ddl = \"yes\"\n");
    let e = err(&bad);
    assert!(e.contains("line 3") && e.contains("boolean"), "{e}");
}

#[test]
fn apply_workers_range() {
    let with = |n: &str| GOOD.replace("create_tables = true", &format!("apply_workers = {n}"));
    let c = Config::parse(&with("4"), "x.toml").unwrap();
    let SinkConfig::Postgres(p) = &c.sinks[0] else {
        panic!("a postgres sink")
    };
    assert_eq!(p.apply_workers, 4);
    for bad in ["0", "65"] {
        let e = err(&with(bad));
        assert!(e.contains("apply_workers") && e.contains("1-64"), "{e}");
    }
}

#[test]
fn origin_keys() {
    use crate::sink::postgres::ReplicationOrigin;
    use crate::source::changes::OriginFilter;
    let c = Config::parse(GOOD, "x.toml").unwrap();
    assert_eq!(c.source.origin, OriginFilter::Pgbridge);
    let SinkConfig::Postgres(p) = &c.sinks[0] else {
        panic!("a postgres sink")
    };
    assert_eq!(p.replication_origin, ReplicationOrigin::Auto);
    let with = |source: &str, sink: &str| {
        GOOD.replace(
            "publications = [\"app_pub\"]",
            &format!("publications = [\"app_pub\"]\n{source}"),
        )
        .replace("create_tables = true", sink)
    };
    let c = Config::parse(
        &with("origin = \"none\"", "replication_origin = \"off\""),
        "x.toml",
    )
    .unwrap();
    assert_eq!(c.source.origin, OriginFilter::None);
    let SinkConfig::Postgres(p) = &c.sinks[0] else {
        panic!("a postgres sink")
    };
    assert_eq!(p.replication_origin, ReplicationOrigin::Off);
    let e = err(&with("origin = \"pgbridge_x\"", ""));
    assert!(
        e.contains("pgbridge_x") && e.contains("`pgbridge`, `none`, `any`"),
        "{e}"
    );
    let e = err(&with("origins = \"any\"", ""));
    assert!(e.contains("origins"), "{e}");
    let e = err(&with("", "replication_origin = \"maybe\""));
    assert!(
        e.contains("replication_origin") || e.contains("maybe"),
        "{e}"
    );
}

fn err(text: &str) -> String {
    Config::parse(text, "x.toml").unwrap_err().to_string()
}

/// No `tables` key and an empty list both select every published
/// table; a listed selection takes exactly its names.
#[test]
fn table_selection() {
    let all = Config::parse(
        &GOOD.replace(r#"tables = ["public.orders", "customers"]"#, ""),
        "x.toml",
    )
    .unwrap();
    assert_eq!(all.sinks[0].tables(), &TableSelection::All);
    let empty = Config::parse(
        &GOOD.replace(r#"tables = ["public.orders", "customers"]"#, "tables = []"),
        "x.toml",
    )
    .unwrap();
    assert_eq!(empty.sinks[0].tables(), &TableSelection::All);
    assert!(TableSelection::All.contains("s.anything"));
    let good = Config::parse(GOOD, "x.toml").unwrap();
    let listed = good.sinks[0].tables();
    assert!(listed.contains("public.customers"));
    assert!(!listed.contains("public.other"));
}

/// Every example in deploy/examples, and the compose setup's config,
/// parses (variables set to "x").
#[test]
fn deploy_examples_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples");
    let compose = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/compose/pgbridge.toml");
    let mut n = 0;
    let examples = std::fs::read_dir(dir)
        .expect("deploy/examples")
        .map(|e| e.expect("entry").path());
    for path in examples.chain([std::path::PathBuf::from(compose)]) {
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        let text = expand_env(&text, |_| Some("x".into())).expect("variables");
        let c = Config::parse(&text, &path.display().to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let http = c
            .http
            .unwrap_or_else(|| panic!("{}: examples show [http]", path.display()));
        // The endpoints have no authentication: examples that get
        // copied into production must not open them to the network.
        // A container's config listens on all of the container's
        // addresses (its own network namespace; the port mapping or
        // Service decides who reaches it).
        assert!(
            http.listen.ip().is_loopback() || path.ends_with("compose/pgbridge.toml"),
            "{}: [http] listens on {}, not loopback",
            path.display(),
            http.listen
        );
        n += 1;
    }
    assert!(n >= 4, "{n} examples");
}

#[test]
fn http_section() {
    let c = Config::parse(
        &format!("{GOOD}\n[http]\nlisten = \"127.0.0.1:9187\"\n"),
        "x.toml",
    )
    .expect("valid");
    assert_eq!(
        c.http
            .as_ref()
            .map(|h| (h.listen.to_string(), h.stall_secs)),
        Some(("127.0.0.1:9187".to_string(), 300))
    );
    let c = Config::parse(
        &format!("{GOOD}\n[http]\nlisten = \"127.0.0.1:9187\"\nstall_secs = 0\n"),
        "x.toml",
    )
    .expect("valid");
    assert_eq!(c.http.map(|h| h.stall_secs), Some(0));
    let e = err(&format!("{GOOD}\n[http]\nlisten = \"localhost\"\n"));
    assert!(e.contains("socket address"), "{e}");
    let e = err(&format!("{GOOD}\n[http]\nport = 1\n"));
    assert!(e.contains("port"), "{e}");
}

/// One file for every instance of a pipeline: `${VAR}` expands in
/// every string value, `[http] listen` included.
#[test]
fn variables_expand_in_every_string_key() {
    std::env::set_var("PGBRIDGE_TEST_LISTEN", "127.0.0.1:19187");
    std::env::set_var("PGBRIDGE_TEST_NAME", "analytics_b");
    std::env::set_var("PGBRIDGE_TEST_SPILL", "/tmp/spill_b");
    let text = GOOD
        .replace("\"analytics\"", "\"${PGBRIDGE_TEST_NAME}\"")
        .replace("\"app_pub\"", "\"pub_${PGBRIDGE_TEST_NAME}\"")
        .replace("\"customers\"", "\"${PGBRIDGE_TEST_NAME}.c\"")
        .replace(
            "publications",
            "spill_dir = \"${PGBRIDGE_TEST_SPILL}\"\npublications",
        )
        + "\n[http]\nlisten = \"${PGBRIDGE_TEST_LISTEN}\"\n";
    let c = Config::parse(&text, "x.toml").expect("valid");
    assert_eq!(
        c.http.map(|h| h.listen.to_string()).as_deref(),
        Some("127.0.0.1:19187")
    );
    assert_eq!(c.sinks[0].name(), "analytics_b");
    assert_eq!(c.source.publications, ["pub_analytics_b"]);
    assert_eq!(c.sinks[0].tables().listed()[1], "analytics_b.c");
    assert_eq!(c.source.spill_dir, Some(PathBuf::from("/tmp/spill_b")));
    let e = err(&format!(
        "{GOOD}\n[http]\nlisten = \"${{PGBRIDGE_SURELY_UNSET_LISTEN}}\"\n"
    ));
    assert!(e.contains("PGBRIDGE_SURELY_UNSET_LISTEN"), "{e}");
    // The source's sessions are named after the slot by default
    // (synchronous_standby_names lists them by that name).
    let c = Config::parse(GOOD, "x.toml").expect("valid");
    assert_eq!(
        c.source.url.info.application_name.as_deref(),
        Some("pgbridge_app")
    );
    let c = Config::parse(
        &GOOD.replace("db1:5432/app", "db1:5432/app?application_name=mine"),
        "x.toml",
    )
    .expect("valid");
    assert_eq!(c.source.url.info.application_name.as_deref(), Some("mine"));
}

#[test]
fn errors_name_line_and_key() {
    let e = err(&GOOD.replace("create_tables = true", "create_table = true"));
    assert!(e.contains("line 7") && e.contains("create_table"), "{e}"); // the [[sink]] section
    let e = err(&GOOD.replace("type = \"postgres\"", "type = \"mysql\""));
    assert!(e.contains("mysql"), "{e}");
    let e = err(&GOOD.replace("pgbridge_app", "Bad-Slot"));
    assert!(e.contains("line 4") && e.contains("slot name"), "{e}");
    let e = err(&GOOD.replace("db1:5432", "db1:xx"));
    assert!(e.contains("line 3") && e.contains("port"), "{e}");
    let e = err(&GOOD.replace("\"customers\"", "\"a.b.c\""));
    assert!(e.contains("schema.table"), "{e}");
    let e = err(&GOOD.replace("publications = [\"app_pub\"]", "publications = []"));
    assert!(e.contains("publication"), "{e}");
    let e = err(&format!(
        "{GOOD}\n[[sink]]\nname = \"analytics\"\ntype = \"postgres\"\nurl = \"postgres://x/y\"\n"
    ));
    assert!(e.contains("unique"), "{e}");
    let e = err(&GOOD.replace(
        "postgres://rep@db1",
        "postgres://${PGBRIDGE_SURELY_UNSET}@db1",
    ));
    assert!(
        e.contains("PGBRIDGE_SURELY_UNSET") && e.contains("line 3"),
        "{e}"
    );
}

#[test]
fn env_expansion() {
    let env = |k: &str| (k == "PW").then(|| "s3cr$t".to_string());
    assert_eq!(expand_env("a${PW}b", env).unwrap(), "as3cr$tb");
    assert_eq!(expand_env("$$x $y", env).unwrap(), "$x $y");
    assert!(expand_env("${NOPE}", env).is_err());
    assert!(expand_env("${PW", env).is_err());
}

/// A password that breaks the URL (base64 with `/`, from `${VAR}`) or
/// holds an unclosed `${` is never printed, whole or in part.
#[test]
fn errors_never_show_passwords() {
    let url = |pw: &str| GOOD.replace("rep@db1", &format!("rep:{pw}@db1"));
    std::env::set_var("PGBRIDGE_TEST_B64_PW", "Zm9v/YmFy?cXV4=");
    let e = err(&url("${PGBRIDGE_TEST_B64_PW}").replace(":5432", ":54x32"));
    assert!(e.contains("line 3") && e.contains("rep:***@db1"), "{e}");
    for piece in ["Zm9v", "YmFy", "cXV4"] {
        assert!(!e.contains(piece), "{e}");
    }
    let e = err(&url("t0p${s3cret"));
    assert!(e.contains("unclosed ${") && e.contains("$$"), "{e}");
    assert!(!e.contains("t0p") && !e.contains("s3cret"), "{e}");
    let e = err(&url("t0p${s3c-ret}"));
    assert!(e.contains("bad variable name"), "{e}");
    assert!(!e.contains("t0p") && !e.contains("s3c"), "{e}");
    // Outside the credentials the offending text is shown.
    let e = err(&GOOD.replace("/app\"", "/${bad-name}\""));
    assert!(e.contains("bad-name"), "{e}");
}

#[test]
fn several_source_hosts_look_for_the_primary() {
    use crate::source::conninfo::TargetSessionAttrs;
    let two = |q: &str| {
        GOOD.replace(
            "postgres://rep@db1:5432/app",
            &format!("postgres://rep@db1:5432,db2:5433/app{q}"),
        )
    };
    let c = Config::parse(&two(""), "x.toml").unwrap();
    assert_eq!(
        c.source.url.info.target_session_attrs,
        Some(TargetSessionAttrs::Primary)
    );
    assert_eq!(c.source.failover_slot, None);
    assert_eq!(
        c.source.url.info.connect_timeout,
        Some(MULTI_HOST_CONNECT_TIMEOUT)
    );
    let c = Config::parse(&two("?connect_timeout=3"), "x.toml").unwrap();
    assert_eq!(
        c.source.url.info.connect_timeout,
        Some(std::time::Duration::from_secs(3))
    );
    let c = Config::parse(&two("?target_session_attrs=read-write"), "x.toml").unwrap();
    assert_eq!(
        c.source.url.info.target_session_attrs,
        Some(TargetSessionAttrs::ReadWrite)
    );
    let e = err(&two("?target_session_attrs=prefer-standby"));
    assert!(e.contains("read-write or primary"), "{e}");
    // One host: as libpq, nothing is checked unless asked.
    let c = Config::parse(GOOD, "x.toml").unwrap();
    assert_eq!(c.source.url.info.target_session_attrs, None);
    assert_eq!(c.source.url.info.connect_timeout, None);
    let c = Config::parse(
        &GOOD.replace("publications", "failover_slot = false\npublications"),
        "x.toml",
    )
    .unwrap();
    assert_eq!(c.source.failover_slot, Some(false));
}

/// `schema = "copy"` implies `create_tables`; `create_tables = false`
/// with it is a conflict; `none` is the default.
#[test]
fn schema_key() {
    use crate::sink::postgres::{PostgresSinkConfig, SchemaMode};
    let sink = |text: &str| {
        let c = Config::parse(&GOOD.replace("create_tables = true", text), "x.toml").unwrap();
        let SinkConfig::Postgres(p) = &c.sinks[0] else {
            panic!("a postgres sink")
        };
        let settings = PostgresSinkConfig::from_section(p, &c);
        (
            p.schema,
            p.create_tables,
            settings.schema,
            settings.create_tables,
        )
    };
    assert_eq!(sink(""), (SchemaMode::None, false, SchemaMode::None, false));
    assert_eq!(
        sink("schema = \"copy\""),
        (SchemaMode::Copy, true, SchemaMode::Copy, true)
    );
    assert_eq!(
        sink("schema = \"copy\"\ncreate_tables = true"),
        (SchemaMode::Copy, true, SchemaMode::Copy, true)
    );
    assert_eq!(
        sink("schema = \"none\"\ncreate_tables = true"),
        (SchemaMode::None, true, SchemaMode::None, true)
    );
    let e = err(&GOOD.replace(
        "create_tables = true",
        "schema = \"copy\"\ncreate_tables = false",
    ));
    assert!(
        e.contains("schema = \"copy\"") && e.contains("create_tables = false"),
        "{e}"
    );
    let e = err(&GOOD.replace("create_tables = true", "schema = \"pg_dump\""));
    assert!(e.contains("pg_dump"), "{e}");
}
