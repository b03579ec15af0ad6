//! A PostgreSQL URL as ferroq takes it: libpq's `postgres://` / `postgresql://` form, plus
//! ferroq's own `schema` parameter (where the queue's tables live; `public` by default) and
//! `pgbouncer=true` (the server is reached through PgBouncer in transaction mode: see
//! `Target::pgbouncer`).

use std::str::FromStr;

use postgres::config::SslMode;

use super::tls::{ClientCert, Roots, TlsSettings, Verify};
use crate::error::{Error, Result};

/// Whether `location` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// A parsed URL: the client configuration, the schema, and the URL to show (no password).
#[derive(Clone)]
pub struct Target {
    pub config: postgres::Config,
    pub schema: String,
    pub shown: String,
    /// Through a pooler that hands each transaction any server connection (PgBouncer's
    /// transaction mode): no session state (no LISTEN, so waiters poll; no startup options,
    /// so the schema is set in each transaction; no statement outlives its transaction).
    pub pgbouncer: bool,
    /// Behind PgBouncer: the server's own address for this process's one LISTEN session
    /// (`listen_host`, `listen_port`), so waiters wake on NOTIFY instead of polling.
    pub listen: Option<postgres::Config>,
    /// What of the server's certificate is checked (libpq's `sslmode`), and against what.
    pub tls: TlsSettings,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown) // never the password
    }
}

/// Parses `url`; a malformed one is an `InvalidArgument` naming what is wrong (never echoing
/// the password).
pub fn parse(url: &str) -> Result<Target> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut schema = "public".to_string();
    let mut pgbouncer = false;
    let (mut listen_host, mut listen_port) = (None, None);
    let mut tls = TlsSettings {
        verify: Verify::Nothing,
        roots: Roots::Default,
        client: ClientCert::default(),
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", value)) => schema = value.to_string(),
            Some(("pgbouncer", value)) => pgbouncer = parse_flag("pgbouncer", value)?,
            Some(("listen_host", value)) => listen_host = Some(decoded(value)?),
            Some(("listen_port", value)) => listen_port = Some(parse_port(value)?),
            // The client knows disable/prefer/require: the verifying modes require TLS,
            // and the certificate is checked by our connector (`tls.rs`).
            Some(("sslmode", mode @ ("verify-ca" | "verify-full"))) => {
                tls.verify = if mode == "verify-ca" {
                    Verify::Ca
                } else {
                    Verify::Full
                };
                kept.push("sslmode=require");
            }
            Some(("sslrootcert", "system")) => tls.roots = Roots::System,
            Some(("sslrootcert", path)) => tls.roots = Roots::File(decoded(path)?.into()),
            Some(("sslcert", path)) => tls.client.cert = Some(decoded(path)?.into()),
            Some(("sslkey", path)) => tls.client.key = Some(decoded(path)?.into()),
            // A secret: kept out of the shown URL, as the password.
            Some(("sslpassword", value)) => tls.client.password = Some(decoded(value)?),
            _ => kept.push(pair),
        }
    }
    validate_schema(&schema)?;
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config = postgres::Config::from_str(&rest).map_err(|e| {
        Error::InvalidArgument(format!(
            "invalid PostgreSQL URL {}: {e}",
            without_password(url)
        ))
    })?;
    if config.get_user().is_none() {
        let user = std::env::var("PGUSER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "postgres".into());
        config.user(&user);
    }
    if config.get_password().is_none() {
        // As libpq: a password kept out of the URL (and out of `location`, which worker
        // processes reopen) comes from the environment.
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
    }
    if config.get_hosts().is_empty() {
        config.host("localhost");
    }
    config.application_name("ferroq");
    // A server (or link) that vanished without a word must not leave the listener waiting
    // for hours (the default keepalive idle is 2 h): found dead within about 30 s.
    if !query.contains("keepalives_idle") {
        config.keepalives_idle(std::time::Duration::from_secs(10));
        config.keepalives_interval(std::time::Duration::from_secs(5));
        config.keepalives_retries(3);
    }
    if !query.contains("tcp_user_timeout") {
        config.tcp_user_timeout(std::time::Duration::from_secs(30));
    }
    config.connect_timeout(std::time::Duration::from_secs(10));
    // Tables are found in the queue's schema alone (it is created on open if missing).
    // PgBouncer refuses startup options: there each transaction sets it
    // (`Target::schema_per_transaction`).
    if !pgbouncer {
        config.options(&format!("-c search_path={schema}"));
    }
    let listen = match (listen_host, listen_port) {
        (None, None) => None,
        _ if !pgbouncer => {
            return Err(Error::InvalidArgument(
                "listen_host/listen_port name the server's own address for LISTEN behind \
                 PgBouncer: they go with pgbouncer=true"
                    .into(),
            ));
        }
        (host, port) => Some(direct(&config, host.as_deref(), port)),
    };
    let shown = shown(&config, &schema, pgbouncer, listen.as_ref(), &tls);
    Ok(Target {
        config,
        schema,
        shown,
        pgbouncer,
        listen,
        tls,
    })
}

/// `config` with the server's own address: `host` (default: the URL's first host) and
/// `port` (default 5432), everything else alike.
fn direct(config: &postgres::Config, host: Option<&str>, port: Option<u16>) -> postgres::Config {
    use postgres::config::Host;
    let mut direct = postgres::Config::new();
    match (host, config.get_hosts().first()) {
        (Some(host), _) => {
            direct.host(host);
        }
        (None, Some(Host::Tcp(host))) => {
            direct.host(host);
        }
        (None, Some(Host::Unix(path))) => {
            direct.host_path(path);
        }
        (None, None) => {
            direct.host("localhost");
        }
    }
    direct.port(port.unwrap_or(5432));
    if let Some(user) = config.get_user() {
        direct.user(user);
    }
    if let Some(password) = config.get_password() {
        direct.password(password);
    }
    if let Some(db) = config.get_dbname() {
        direct.dbname(db);
    }
    if let Some(name) = config.get_application_name() {
        direct.application_name(name);
    }
    if let Some(timeout) = config.get_connect_timeout() {
        direct.connect_timeout(*timeout);
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        direct.tcp_user_timeout(*timeout);
    }
    direct
        .ssl_mode(config.get_ssl_mode())
        .keepalives(config.get_keepalives())
        .keepalives_idle(config.get_keepalives_idle());
    if let Some(interval) = config.get_keepalives_interval() {
        direct.keepalives_interval(interval);
    }
    if let Some(retries) = config.get_keepalives_retries() {
        direct.keepalives_retries(retries);
    }
    direct
}

fn parse_port(value: &str) -> Result<u16> {
    value.parse().map_err(|_| {
        Error::InvalidArgument(format!(
            "invalid listen_port={value:?} in the PostgreSQL URL: a port number"
        ))
    })
}

impl Target {
    /// Behind PgBouncer, what each transaction runs first (the schema: no session keeps it).
    pub fn schema_per_transaction(&self) -> Option<String> {
        self.pgbouncer
            .then(|| format!("SET LOCAL search_path = {}", self.schema))
    }
}

fn parse_flag(name: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "1" | "on" | "yes" => Ok(true),
        "false" | "0" | "off" | "no" => Ok(false),
        _ => Err(Error::InvalidArgument(format!(
            "invalid {name}={value:?} in the PostgreSQL URL: use true or false"
        ))),
    }
}

/// Schema names are spelled into SQL (search_path, CREATE SCHEMA): a plain identifier only,
/// short enough that the NOTIFY channel named after it (`ferroq_` + schema) fits in the 63
/// bytes of an identifier.
fn validate_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 56
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid schema {schema:?} in the PostgreSQL URL: use lowercase letters, digits and \
             underscores (at most 63, not starting with a digit)"
        )))
    }
}

/// The URL as logs and errors show it, and as worker processes reopen it (`Queue.path`):
/// user, hosts, database, schema and a TLS mode other than the default; never the password.
fn shown(
    config: &postgres::Config,
    schema: &str,
    pgbouncer: bool,
    listen: Option<&postgres::Config>,
    tls: &TlsSettings,
) -> String {
    use postgres::config::Host;
    let ports = config.get_ports().iter().chain(std::iter::repeat(&5432));
    let mut tcp = Vec::new();
    let mut params = Vec::new();
    for (h, port) in config.get_hosts().iter().zip(ports) {
        match h {
            Host::Tcp(name) => tcp.push(format!("{name}:{port}")),
            // A socket directory cannot stand in the authority: it goes as `host=`.
            Host::Unix(path) => {
                params.push(format!("host={}", path.display()));
                params.push(format!("port={port}"));
            }
        }
    }
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    if schema != "public" {
        params.push(format!("schema={schema}"));
    }
    if pgbouncer {
        params.push("pgbouncer=true".into());
    }
    if let Some(listen) = listen {
        match listen.get_hosts().first() {
            Some(Host::Tcp(name)) => params.push(format!("listen_host={}", encoded(name))),
            Some(Host::Unix(path)) => {
                params.push(format!("listen_host={}", encoded(&path.to_string_lossy())))
            }
            None => {}
        }
        if let Some(port) = listen.get_ports().first() {
            params.push(format!("listen_port={port}"));
        }
    }
    match (config.get_ssl_mode(), tls.verify) {
        (SslMode::Disable, _) => params.push("sslmode=disable".into()),
        (_, Verify::Ca) => params.push("sslmode=verify-ca".into()),
        (_, Verify::Full) => params.push("sslmode=verify-full".into()),
        (SslMode::Require, _) => params.push("sslmode=require".into()),
        _ => {}
    }
    match &tls.roots {
        Roots::Default => {}
        Roots::System => params.push("sslrootcert=system".into()),
        Roots::File(path) => {
            params.push(format!("sslrootcert={}", encoded(&path.to_string_lossy())))
        }
    }
    if let Some(path) = &tls.client.cert {
        params.push(format!("sslcert={}", encoded(&path.to_string_lossy())));
    }
    if let Some(path) = &tls.client.key {
        params.push(format!("sslkey={}", encoded(&path.to_string_lossy())));
    }
    let mut out = format!("postgresql://{user}@{}/{db}", tcp.join(","));
    if !params.is_empty() {
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// A query value, percent-decoded (as libpq reads a URI).
fn decoded(value: &str) -> Result<String> {
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| Error::InvalidArgument("a value in the URL's query is not UTF-8".into()))
}

/// `url` with any password replaced, for an error message about a URL that did not parse.
fn without_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@').map(|at| rest.split_at(at)) {
            Some((auth, tail)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***{tail}"),
                None => base.to_string(),
            },
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key @ ("password" | "sslpassword"), _)) => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// A query value as the shown URL writes it: percent-encoded where `decoded` would misread it.
fn encoded(value: &str) -> String {
    const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'%')
        .add(b'&')
        .add(b'=')
        .add(b'#')
        .add(b'+');
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// Whether the connection asks for TLS at all.
pub fn wants_tls(config: &postgres::Config) -> bool {
    config.get_ssl_mode() != SslMode::Disable
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn schema_is_taken_out_and_the_password_never_shown() {
        let t =
            parse("postgresql://u:secret@db.example:6543/app?schema=jobs&sslmode=disable").unwrap();
        assert_eq!(t.schema, "jobs");
        assert_eq!(
            t.shown,
            "postgresql://u@db.example:6543/app?schema=jobs&sslmode=disable"
        );
        assert!(!format!("{t:?}").contains("secret"));
        assert!(!wants_tls(&t.config));
    }

    #[test]
    fn bad_urls_and_schemas_are_typed_errors_without_the_password() {
        let e = parse("postgresql://u:secret@h/db?sslmode=bogus").unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = parse("postgresql://h/db?schema=Robert');DROP").unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    }

    /// The key's passphrase is a secret like the password: in no shown URL, debug output or
    /// error. Query values are percent-decoded (as libpq), and the shown URL encodes them.
    #[test]
    fn sslpassword_is_never_shown_and_values_are_percent_decoded() {
        let t = parse(
            "postgresql://u@h/db?sslmode=require&sslkey=/k/a%26b.key&sslpassword=top%26secret",
        )
        .unwrap();
        assert_eq!(t.tls.client.password.as_deref(), Some("top&secret"));
        assert_eq!(t.tls.client.key.as_deref(), Some(Path::new("/k/a&b.key")));
        assert!(!t.shown.contains("secret") && !format!("{t:?}").contains("secret"));
        assert_eq!(parse(&t.shown).unwrap().tls.client.key, t.tls.client.key);
        let e = parse("postgresql://u:pw@h/db?sslmode=bogus&sslpassword=topsecret&password=pw2")
            .unwrap_err();
        assert!(
            !e.to_string().contains("secret") && !e.to_string().contains("pw2"),
            "{e}"
        );
    }

    /// Behind PgBouncer the listener may go to the server itself: its host and port from
    /// the URL, the rest (user, password, database, TLS) as the pooled connections'.
    #[test]
    fn listen_host_and_port_name_the_servers_own_address_behind_pgbouncer() {
        use postgres::config::Host;
        let t = parse(
            "postgresql://u:pw@bouncer:6432/db?pgbouncer=true&listen_host=db1&listen_port=5433",
        )
        .unwrap();
        let listen = t.listen.as_ref().unwrap();
        assert_eq!(listen.get_hosts(), &[Host::Tcp("db1".into())]);
        assert_eq!(listen.get_ports(), &[5433]);
        assert_eq!(listen.get_user(), Some("u"));
        assert_eq!(listen.get_password(), Some(&b"pw"[..]));
        assert_eq!(listen.get_dbname(), Some("db"));
        assert!(
            t.shown
                .ends_with("pgbouncer=true&listen_host=db1&listen_port=5433"),
            "{}",
            t.shown
        );
        let again = parse(&t.shown).unwrap();
        assert_eq!(again.listen.unwrap().get_hosts(), listen.get_hosts());
        // Only the port: the URL's host; only the host: PostgreSQL's port.
        let t = parse("postgresql://u@bouncer:6432/db?pgbouncer=true&listen_port=5432").unwrap();
        assert_eq!(
            t.listen.unwrap().get_hosts(),
            &[Host::Tcp("bouncer".into())]
        );
        let t = parse("postgresql://u@bouncer:6432/db?pgbouncer=true&listen_host=db1").unwrap();
        assert_eq!(t.listen.unwrap().get_ports(), &[5432]);
        assert!(parse("postgresql://u@h/db").unwrap().listen.is_none());
        for bad in [
            "postgresql://u@h/db?listen_host=db1",
            "postgresql://u@h/db?pgbouncer=true&listen_port=x",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e:?}");
        }
    }

    /// What `location` shows is what worker processes reopen: it must parse to the same
    /// server, database, schema and TLS mode (a socket directory included).
    #[test]
    fn the_shown_url_reopens_the_same_place() {
        for url in [
            "postgresql://u:pw@h1:5433/db?schema=s1&sslmode=require",
            "postgresql://u@h:6432/db?pgbouncer=true&schema=s2",
            "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            "postgresql://u@h/db?sslmode=verify-ca&sslrootcert=system",
            "postgresql://u@h/db?sslmode=require&sslcert=/c/me.crt&sslkey=/c/me.key",
            "postgres://u@/db?host=/run/postgresql&port=5434",
            "postgresql://u@h/db",
        ] {
            let first = parse(url).unwrap();
            let again = parse(&first.shown).unwrap();
            assert_eq!(again.shown, first.shown, "{url}");
            assert_eq!(again.config.get_hosts(), first.config.get_hosts(), "{url}");
            assert_eq!(again.config.get_ports(), first.config.get_ports(), "{url}");
            assert_eq!(
                again.config.get_ssl_mode(),
                first.config.get_ssl_mode(),
                "{url}"
            );
            assert_eq!(again.schema, first.schema, "{url}");
            assert_eq!(again.pgbouncer, first.pgbouncer, "{url}");
            assert_eq!(again.tls, first.tls, "{url}");
        }
    }

    /// A dead peer is found within about half a minute (the listener waits on its socket),
    /// unless the URL says otherwise.
    #[test]
    fn keepalives_find_a_vanished_server_soon_unless_the_url_sets_them() {
        use std::time::Duration;
        let t = parse("postgresql://u@h/db").unwrap();
        assert_eq!(t.config.get_keepalives_idle(), Duration::from_secs(10));
        assert_eq!(
            t.config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(30))
        );
        let t = parse("postgresql://u@h/db?keepalives_idle=60").unwrap();
        assert_eq!(t.config.get_keepalives_idle(), Duration::from_secs(60));
    }

    /// Behind PgBouncer no startup options are sent (it refuses them): the schema is set by
    /// each transaction instead.
    #[test]
    fn pgbouncer_mode_sends_no_options_and_sets_the_schema_per_transaction() {
        let direct = parse("postgresql://u@h/db?schema=jobs").unwrap();
        assert_eq!(direct.config.get_options(), Some("-c search_path=jobs"));
        assert_eq!(direct.schema_per_transaction(), None);
        let pooled = parse("postgresql://u@h/db?schema=jobs&pgbouncer=true").unwrap();
        assert!(pooled.pgbouncer);
        assert_eq!(pooled.config.get_options(), None);
        assert_eq!(
            pooled.schema_per_transaction().as_deref(),
            Some("SET LOCAL search_path = jobs")
        );
        assert!(
            !parse("postgresql://u@h/db?pgbouncer=false")
                .unwrap()
                .pgbouncer
        );
        let e = parse("postgresql://u@h/db?pgbouncer=maybe").unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    }

    #[test]
    fn postgres_urls_are_recognised() {
        assert!(is_postgres("postgres://h/db"));
        assert!(is_postgres("postgresql://h/db"));
        assert!(!is_postgres("/tmp/postgresql://x"));
        assert!(!is_postgres("queue.db"));
    }
}
