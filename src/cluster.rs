//! Throwaway PostgreSQL clusters on local binaries, for `pgbridge demo` and
//! the integration tests: `initdb` into a temporary directory, a free
//! loopback port, `wal_level = logical`, started as the `postgres` user when
//! we run as root (the server refuses to run as root), removed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no PostgreSQL server binaries found: set PG_BIN to the directory holding initdb and pg_ctl, or install the Debian package postgresql")]
    NoBinaries,
    #[error("running as root, but there is no \"postgres\" user to run the server as; install the postgresql package or create that user")]
    NoPostgresUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Where the server binaries are: `$PG_BIN`, else `pg_config --bindir`, else
/// the newest `/usr/lib/postgresql/*/bin`.
pub fn find_pg_bin() -> Result<PathBuf, ClusterError> {
    let has_initdb = |p: &Path| p.join("initdb").is_file() && p.join("pg_ctl").is_file();
    if let Ok(dir) = std::env::var("PG_BIN") {
        let p = PathBuf::from(dir);
        if has_initdb(&p) {
            return Ok(p);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&p) {
            return Ok(p);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_initdb(&bin).then_some((major, bin))
        })
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, p)| p)
        .ok_or(ClusterError::NoBinaries)
}

/// A free TCP port on 127.0.0.1 (free when asked; callers retry on a race).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(54329)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Settings for a new cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Extra postgresql.conf lines.
    pub conf: Vec<String>,
    /// pg_hba.conf lines placed before the default "trust everything local".
    pub hba: Vec<String>,
    /// Generate a CA and a server certificate and turn `ssl` on.
    pub ssl: bool,
    pub wal_level: String,
    /// Server binaries (initdb, pg_ctl, postgres) to use instead of
    /// [`find_pg_bin`]'s: another major version. `psql` comes from there
    /// when it has one, else from [`find_pg_bin`].
    pub bin: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            conf: Vec::new(),
            hba: Vec::new(),
            ssl: false,
            wal_level: "logical".into(),
            bin: None,
        }
    }
}

/// A running throwaway cluster. Stopped and deleted on drop.
pub struct LocalCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    psql: PathBuf,
    port: u16,
    as_postgres: bool,
    stopped: bool,
}

fn run(cmd: &mut Command, what: &str) -> Result<Output, ClusterError> {
    let out = cmd.output().map_err(|e| ClusterError::Command {
        what: what.to_string(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            what: what.to_string(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out)
}

impl LocalCluster {
    pub fn start(opts: &ClusterOptions) -> Result<LocalCluster, ClusterError> {
        let bin = match &opts.bin {
            Some(b) => b.clone(),
            None => find_pg_bin()?,
        };
        let psql = if bin.join("psql").is_file() {
            bin.join("psql")
        } else {
            find_pg_bin()?.join("psql")
        };
        let as_postgres = is_root();
        if as_postgres && run(Command::new("id").arg("postgres"), "id postgres").is_err() {
            return Err(ClusterError::NoPostgresUser);
        }
        let dir = tempfile::Builder::new()
            .prefix("pgbridge-pg-")
            .tempdir()
            .map_err(|source| ClusterError::Io {
                path: std::env::temp_dir().display().to_string(),
                source,
            })?;
        let mut cluster = LocalCluster {
            dir,
            bin,
            psql,
            port: 0,
            as_postgres,
            stopped: true,
        };
        if as_postgres {
            run(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(cluster.dir.path()),
                "chown of the cluster directory",
            )?;
        }
        let data = cluster.data_dir();
        run(
            cluster
                .pg_command("initdb")
                .args(["-D"])
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
                .args(["--locale=C"]),
            "initdb",
        )?;
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!(
                "unix_socket_directories = '{}'",
                cluster.dir.path().display()
            ),
            format!("wal_level = {}", opts.wal_level),
            "max_wal_senders = 40".into(),
            // Also the size of the replication origin table, which every
            // sink session's origin on this cluster takes a place in.
            "max_replication_slots = 200".into(),
            "fsync = off".into(),
            "full_page_writes = off".into(),
            "shared_buffers = 64MB".into(),
            "max_connections = 200".into(),
            "log_min_messages = warning".into(),
        ];
        if opts.ssl {
            cluster.make_certs()?;
            conf.push("ssl = on".into());
            conf.push("ssl_cert_file = 'server.crt'".into());
            conf.push("ssl_key_file = 'server.key'".into());
        }
        conf.extend(opts.conf.iter().cloned());
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).map_err(|source| ClusterError::Io {
            path: conf_path.display().to_string(),
            source,
        })?;
        text.push('\n');
        text.push_str(&conf.join("\n"));
        text.push('\n');
        cluster.write(&conf_path, &text)?;
        let mut hba = opts.hba.clone();
        hba.push("local all all trust".into());
        hba.push("host all all 127.0.0.1/32 trust".into());
        hba.push("host replication all 127.0.0.1/32 trust".into());
        cluster.write(&data.join("pg_hba.conf"), &(hba.join("\n") + "\n"))?;

        // A port can be taken between choosing and binding: retry a few times.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port();
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.stopped = false;
                    return Ok(cluster);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClusterError::NoBinaries))
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let log = self.dir.path().join("server.log");
        run(
            self.pg_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o"])
                .arg(format!("-p {}", self.port))
                .arg("start"),
            "pg_ctl start",
        )
        .map(|_| ())
        .map_err(|e| match e {
            ClusterError::Command { what, detail } => ClusterError::Command {
                what,
                detail: format!(
                    "{detail}\nserver log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            },
            e => e,
        })
    }

    fn make_certs(&self) -> Result<(), ClusterError> {
        let d = self.data_dir();
        let sh = format!(
            "set -e; cd '{}'; \
             openssl req -new -x509 -days 3 -nodes -keyout ca.key -out ca.crt -subj '/CN=pgbridge test CA' 2>/dev/null; \
             openssl req -new -nodes -keyout server.key -out server.csr -subj '/CN=localhost' 2>/dev/null; \
             printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf; \
             openssl x509 -req -in server.csr -days 3 -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -extfile ext.cnf 2>/dev/null; \
             chmod 600 server.key; cp ca.crt ../ca.crt",
            d.display()
        );
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &sh]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &sh]);
            c
        };
        run(&mut cmd, "openssl certificate generation").map(|_| ())
    }

    /// The CA certificate that signed the server's certificate (with `ssl`).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn write(&self, path: &Path, text: &str) -> Result<(), ClusterError> {
        std::fs::write(path, text).map_err(|source| ClusterError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    fn pg_command(&self, prog: &str) -> Command {
        let path = self.bin.join(prog);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far (empty when it cannot be read).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// `postgres://user@127.0.0.1:port/db?sslmode=disable`
    pub fn url(&self, db: &str, user: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Runs SQL through psql as the superuser (setup steps in tests/demo).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        let out = run(
            Command::new(&self.psql)
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                ])
                .arg("-p")
                .arg(self.port.to_string())
                .args(["-U", "postgres", "-d", db, "-c", sql]),
            &format!("psql -c {:?}", sql.chars().take(300).collect::<String>()),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Restarts the server (after configuration changes).
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        self.stop()?;
        self.pg_ctl_start()?;
        self.stopped = false;
        Ok(())
    }

    /// A physical standby of this cluster, for failover tests: stops this
    /// server cleanly, copies its data directory (PostgreSQL 15's
    /// pg_basebackup refuses newer servers, and a cleanly stopped copy is
    /// as good), starts this one again, and starts the copy on a new port
    /// with `standby.signal`, `primary_conninfo` (with `dbname`, which
    /// slot synchronization needs) and `primary_slot_name = slot` (create
    /// that physical slot first), plus `conf`.
    pub fn start_standby(
        &mut self,
        slot: &str,
        dbname: &str,
        conf: &[String],
    ) -> Result<LocalCluster, ClusterError> {
        self.stop()?;
        let dir = tempfile::Builder::new()
            .prefix("pgbridge-pg-standby-")
            .tempdir()
            .map_err(|source| ClusterError::Io {
                path: std::env::temp_dir().display().to_string(),
                source,
            })?;
        let mut standby = LocalCluster {
            dir,
            bin: self.bin.clone(),
            psql: self.psql.clone(),
            port: 0,
            as_postgres: self.as_postgres,
            stopped: true,
        };
        if self.as_postgres {
            run(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(standby.dir.path()),
                "chown of the standby directory",
            )?;
        }
        let mut cp = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "cp", "-a"]);
            c
        } else {
            let mut c = Command::new("cp");
            c.arg("-a");
            c
        };
        run(
            cp.arg(self.data_dir()).arg(standby.data_dir()),
            "copying the data directory",
        )?;
        self.pg_ctl_start()?;
        self.stopped = false;
        let data = standby.data_dir();
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).map_err(|source| ClusterError::Io {
            path: conf_path.display().to_string(),
            source,
        })?;
        let mut lines = vec![
            format!(
                "unix_socket_directories = '{}'",
                standby.dir.path().display()
            ),
            format!(
                "primary_conninfo = 'host=127.0.0.1 port={} user=postgres dbname={dbname} application_name={slot}'",
                self.port
            ),
            format!("primary_slot_name = '{slot}'"),
        ];
        lines.extend(conf.iter().cloned());
        text.push('\n');
        text.push_str(&lines.join("\n"));
        text.push('\n');
        standby.write(&conf_path, &text)?;
        standby.write(&data.join("standby.signal"), "")?;
        let mut last = None;
        for _ in 0..5 {
            standby.port = free_port();
            match standby.pg_ctl_start() {
                Ok(()) => {
                    standby.stopped = false;
                    return Ok(standby);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClusterError::NoBinaries))
    }

    /// Kills the server as a crash would (`pg_ctl stop -m immediate`).
    pub fn kill(&mut self) -> Result<(), ClusterError> {
        run(
            self.pg_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "-t", "30", "stop"]),
            "pg_ctl stop -m immediate",
        )?;
        self.stopped = true;
        Ok(())
    }

    /// Promotes a standby (`pg_ctl promote`, waiting until it is done).
    pub fn promote(&self) -> Result<(), ClusterError> {
        run(
            self.pg_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-t", "60", "promote"]),
            "pg_ctl promote",
        )
        .map(|_| ())
    }

    /// Stops the server fast; the directory stays until drop.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        if self.stopped {
            return Ok(());
        }
        run(
            self.pg_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "fast", "-w", "-t", "30", "stop"]),
            "pg_ctl stop",
        )?;
        self.stopped = true;
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = run(
                self.pg_command("pg_ctl")
                    .arg("-D")
                    .arg(self.data_dir())
                    .args(["-m", "immediate", "-w", "-t", "30", "stop"]),
                "pg_ctl stop",
            );
        }
    }
}
