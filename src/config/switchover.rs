//! The `[switchover]` section: how `pgbridge switchover` fences writes,
//! which sink becomes the primary, how clients are pointed at it, and the
//! names of the way back (see `crate::switchover`).

use serde::Deserialize;

use super::{expanded, expanded_list, Config, SinkConfig, Url};

/// How writes to the old primary are held while the new one catches up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fence {
    /// PgBouncer's `PAUSE`: clients wait in PgBouncer, nothing fails.
    Pgbouncer,
    /// `default_transaction_read_only = on` on the old primary: writes
    /// fail meanwhile (no pooler needed).
    ReadOnly,
}

impl Fence {
    /// The word of the config.
    pub fn name(self) -> &'static str {
        match self {
            Fence::Pgbouncer => "pgbouncer",
            Fence::ReadOnly => "read_only",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverConfig {
    /// The Postgres sink that becomes the primary; filled in by
    /// [`validate`] (default: the only Postgres sink).
    #[serde(default, deserialize_with = "super::opt_expanded")]
    pub sink: Option<String>,
    pub fence: Fence,
    /// PgBouncer's admin console (`fence = "pgbouncer"`).
    #[serde(default, deserialize_with = "opt_conninfo")]
    pub pgbouncer: Option<Url>,
    /// PgBouncer databases to `PAUSE` and `RESUME`.
    #[serde(default, deserialize_with = "expanded_list")]
    pub databases: Vec<String>,
    /// The command (argv) that points the clients at the new primary.
    #[serde(deserialize_with = "expanded_list")]
    pub repoint: Vec<String>,
    /// Longest pause of writes before the switchover gives up and resumes
    /// on the old primary.
    #[serde(default = "default_max_pause_secs")]
    pub max_pause_secs: f64,
    /// Publication created on the new primary for the way back.
    #[serde(default = "default_reverse", deserialize_with = "expanded")]
    pub reverse_publication: String,
    /// Logical slot created on the new primary for the way back.
    #[serde(default = "default_reverse", deserialize_with = "expanded")]
    pub reverse_slot: String,
}

fn default_max_pause_secs() -> f64 {
    10.0
}

fn default_reverse() -> String {
    "pgbridge_back".into()
}

fn opt_conninfo<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    super::conninfo(d).map(Some)
}

impl SwitchoverConfig {
    /// The sink that becomes the primary (set by [`validate`]).
    pub fn sink(&self) -> &str {
        self.sink.as_deref().unwrap_or_default()
    }
}

/// Checks `[switchover]` against the rest of the config and fills in the
/// default sink; the message says what to change.
pub fn validate(config: &mut Config) -> Result<(), String> {
    let pg_sinks: Vec<&str> = config
        .sinks
        .iter()
        .filter_map(|s| match s {
            SinkConfig::Postgres(p) => Some(p.name.as_str()),
            _ => None,
        })
        .collect();
    let Some(sw) = config.switchover.as_mut() else {
        return Ok(());
    };
    match &sw.sink {
        Some(name) => {
            if !pg_sinks.contains(&name.as_str()) {
                return Err(format!(
                    "switchover.sink = {name:?} is not a Postgres sink of this config; its Postgres sinks are: {}",
                    list(&pg_sinks)
                ));
            }
        }
        None => match pg_sinks.as_slice() {
            [one] => sw.sink = Some(one.to_string()),
            [] => {
                return Err(
                    "[switchover] needs a Postgres sink to become the primary; the config has none"
                        .into(),
                )
            }
            many => {
                return Err(format!(
                    "[switchover]: the config has several Postgres sinks ({}); name the one that becomes the primary with switchover.sink",
                    list(many)
                ))
            }
        },
    }
    match sw.fence {
        Fence::Pgbouncer => {
            if sw.pgbouncer.is_none() {
                return Err("switchover.fence = \"pgbouncer\" needs switchover.pgbouncer, the admin console's URL, e.g. \"postgres://pgbouncer@127.0.0.1:6432/pgbouncer\"".into());
            }
            if sw.databases.is_empty() || sw.databases.iter().any(|d| d.is_empty()) {
                return Err("switchover.fence = \"pgbouncer\" needs switchover.databases, the PgBouncer databases to pause, e.g. [\"app\"]".into());
            }
            if let Some(d) = sw.databases.iter().find(|d| {
                !d.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            }) {
                return Err(format!(
                    "switchover.databases: {d:?} is not a PgBouncer database name pgbridge can pause (letters, digits, '_', '-', '.')"
                ));
            }
        }
        Fence::ReadOnly => {
            if sw.pgbouncer.is_some() || !sw.databases.is_empty() {
                return Err("switchover.pgbouncer and switchover.databases are for fence = \"pgbouncer\"; remove them, or set fence = \"pgbouncer\"".into());
            }
        }
    }
    if sw.repoint.is_empty() || sw.repoint[0].is_empty() {
        return Err("switchover.repoint must name the command that points the clients at the new primary (argv, e.g. [\"/usr/local/bin/repoint-app.sh\"])".into());
    }
    if !(sw.max_pause_secs.is_finite() && sw.max_pause_secs > 0.0 && sw.max_pause_secs <= 3600.0) {
        return Err(format!(
            "switchover.max_pause_secs = {} is out of range: give seconds above 0 and at most 3600",
            sw.max_pause_secs
        ));
    }
    for (key, name) in [
        ("reverse_publication", &sw.reverse_publication),
        ("reverse_slot", &sw.reverse_slot),
    ] {
        if !super::is_identifier(name) {
            return Err(format!(
                "switchover.{key} = {name:?} is invalid: use 1-63 lower-case letters, digits and underscores"
            ));
        }
    }
    if sw.reverse_slot == config.source.slot {
        return Err(format!(
            "switchover.reverse_slot = {:?} is the forward pipeline's slot name; choose another (the way back's progress rows are named after it)",
            sw.reverse_slot
        ));
    }
    Ok(())
}

fn list(names: &[&str]) -> String {
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    use super::Fence;

    fn with(section: &str) -> Result<Config, String> {
        let text = format!(
            "[source]\nurl = \"postgres://rep@old:5432/app\"\nslot = \"fwd\"\npublications = [\"p\"]\n\n\
             [[sink]]\nname = \"new_primary\"\ntype = \"postgres\"\nurl = \"postgres://w@new/app\"\n\n{section}"
        );
        Config::parse(&text, "x.toml").map_err(|e| e.to_string())
    }

    const PGB: &str = "[switchover]\nfence = \"pgbouncer\"\npgbouncer = \"postgres://pgbouncer@127.0.0.1:6432/pgbouncer\"\ndatabases = [\"app\"]\nrepoint = [\"/bin/true\"]\n";

    #[test]
    fn defaults_and_the_only_postgres_sink() {
        let c = with(PGB).unwrap();
        let sw = c.switchover.unwrap();
        assert_eq!(sw.sink(), "new_primary");
        assert_eq!(sw.fence, Fence::Pgbouncer);
        assert_eq!(sw.max_pause_secs, 10.0);
        assert_eq!(sw.reverse_slot, "pgbridge_back");
        assert_eq!(sw.reverse_publication, "pgbridge_back");
        assert_eq!(sw.databases, ["app"]);
        assert_eq!(sw.repoint, ["/bin/true"]);
        assert!(with("").unwrap().switchover.is_none());
    }

    #[test]
    fn read_only_needs_no_pooler() {
        let c = with("[switchover]\nfence = \"read_only\"\nrepoint = [\"sh\", \"-c\", \"x\"]\nmax_pause_secs = 2.5\nreverse_slot = \"back\"\n").unwrap();
        let sw = c.switchover.unwrap();
        assert_eq!(sw.fence, Fence::ReadOnly);
        assert_eq!(sw.max_pause_secs, 2.5);
        assert_eq!(sw.reverse_slot, "back");
    }

    fn err(section: &str) -> String {
        with(section).expect_err("must be rejected")
    }

    #[test]
    fn rejects_bad_sections() {
        let e = err(&format!("{PGB}colour = \"red\"\n"));
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = err(&PGB.replace("pgbouncer\"\npgbouncer", "bouncer\"\npgbouncer"));
        assert!(e.contains("unknown variant `bouncer`"), "{e}");
        let e =
            err("[switchover]\nfence = \"pgbouncer\"\ndatabases = [\"app\"]\nrepoint = [\"x\"]\n");
        assert!(e.contains("needs switchover.pgbouncer"), "{e}");
        let e = err(&PGB.replace("databases = [\"app\"]\n", ""));
        assert!(e.contains("needs switchover.databases"), "{e}");
        let e = err(&PGB.replace("[\"app\"]", "[\"app; RESUME\"]"));
        assert!(e.contains("not a PgBouncer database name"), "{e}");
        let e = err(&PGB.replace("repoint = [\"/bin/true\"]\n", "repoint = []\n"));
        assert!(e.contains("switchover.repoint must name"), "{e}");
        let e = err(&PGB.replace("repoint = [\"/bin/true\"]\n", ""));
        assert!(e.contains("missing field `repoint`"), "{e}");
        let e = err(&format!("{PGB}max_pause_secs = 0\n"));
        assert!(e.contains("max_pause_secs = 0 is out of range"), "{e}");
        let e = err(&format!("{PGB}sink = \"nope\"\n"));
        assert!(e.contains("\"nope\" is not a Postgres sink"), "{e}");
        let e = err(&format!("{PGB}reverse_slot = \"Back\"\n"));
        assert!(
            e.contains("switchover.reverse_slot = \"Back\" is invalid"),
            "{e}"
        );
        let e = err(&format!("{PGB}reverse_slot = \"fwd\"\n"));
        assert!(e.contains("forward pipeline's slot"), "{e}");
        let e =
            err("[switchover]\nfence = \"read_only\"\nrepoint = [\"x\"]\ndatabases = [\"app\"]\n");
        assert!(e.contains("are for fence = \"pgbouncer\""), "{e}");
        let e = err("[switchover]\nrepoint = [\"x\"]\n");
        assert!(e.contains("missing field `fence`"), "{e}");
    }

    #[test]
    fn several_postgres_sinks_need_a_name() {
        let extra =
            "[[sink]]\nname = \"other\"\ntype = \"postgres\"\nurl = \"postgres://w@o/app\"\n\n";
        let e = with(&format!("{extra}{PGB}")).expect_err("ambiguous");
        assert!(
            e.contains("several Postgres sinks (new_primary, other)"),
            "{e}"
        );
        let c = with(&format!("{extra}{PGB}sink = \"other\"\n")).unwrap();
        assert_eq!(c.switchover.unwrap().sink(), "other");
    }
}
