//! PostgreSQL: writes JSON records to a table as idempotent upserts on a key.
//!
//! Each batch becomes **one** `INSERT ... SELECT ... FROM jsonb_array_elements($1)
//! ON CONFLICT (key) DO UPDATE` statement, so a batch is atomic (one implicit transaction, all of
//! it or none) and replaying a batch (after a crash, or a trigger firing again) leaves the table
//! as one write would: a replayed firing is stored once. Within a batch the last record for a key
//! wins. The columns' values are taken from the records' fields in Rust and converted to each
//! column's type in SQL:
//! - `timestamp`, `timestamptz` and `date` columns take epoch milliseconds (the engine's window
//!   bounds) or any text PostgreSQL parses (RFC 3339);
//! - `json`/`jsonb` columns take any JSON value; array columns take JSON arrays;
//! - every other column takes the value's text (JSON text for objects and lists);
//! - JSON null and missing fields become SQL NULL (except in key columns: an error).
//!
//! The sink owns a small current-thread tokio runtime, so it must be used from a blocking thread,
//! not from inside an async runtime. TLS is not supported yet (`sslmode=disable` or `prefer`).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Statement};

use crate::params::{self, Fields, Problems};
use crate::{ConnectorError, Sink};

/// Params of the `postgres` output plugin.
///
/// ```json
/// {"url": "postgres://user:password@127.0.0.1:5432/db",
///  "table": "votes_per_minute",
///  "key": ["candidate", "minute"],
///  "columns": {"candidate": "group", "minute": "lower", "votes": "state", "detail": "/state/n"}}
/// ```
///
/// `columns` maps each table column to the record field it is read from: a top-level field name,
/// or a JSON pointer starting with `/` for nested values. Without `columns`, every column of the
/// table is read from the field of the same name. `key` names the conflict columns: they must be
/// the table's primary key or a unique index, and must be written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkParams {
    /// A connection string: `postgres://user:password@host:port/db` or `host=... user=...`.
    pub url: String,
    /// The table, optionally schema-qualified (`schema.table`); resolved as PostgreSQL would.
    pub table: String,
    /// The upsert key: columns forming the primary key or a unique index.
    pub key: Vec<String>,
    /// Column → record field (a name, or a JSON pointer such as `/state/n`).
    #[serde(default)]
    pub columns: Option<BTreeMap<String, String>>,
    /// How the writer of this sink retries a batch that failed with a retryable error (a lost
    /// connection, a server restarting: [`crate::retry`]).
    #[serde(default)]
    pub retry: crate::RetryPolicy,
}

/// Checks the params of the `postgres` output plugin without connecting; reports every problem.
/// ([`PostgresSink::check_table`] checks the table itself.)
pub fn validate(params: &Value) -> Problems {
    let mut f = match Fields::new(params) {
        Ok(f) => f,
        Err(p) => return p,
    };
    if let Some(url) = f.string("url", true) {
        match tokio_postgres::Config::from_str(url) {
            Err(e) => f.problem(
                "url",
                format!(
                    "is not a PostgreSQL connection string: {}",
                    describe_error(&e)
                ),
            ),
            Ok(config) => {
                if config.get_hosts().is_empty() {
                    f.problem("url", "names no host");
                }
                if config.get_ssl_mode() == SslMode::Require {
                    f.problem(
                        "url",
                        "sslmode=require: TLS is not supported yet (use disable or prefer)",
                    );
                }
            }
        }
    }
    f.string("table", true);
    let columns: Option<Vec<&String>> = match f.value("columns", false) {
        None => None,
        Some(Value::Object(map)) if map.is_empty() => {
            f.problem(
                "columns",
                "must not be empty (leave it out to map every column by name)",
            );
            None
        }
        Some(Value::Object(map)) => {
            for (column, field) in map {
                match field {
                    Value::String(s) if !s.is_empty() => {}
                    other => f.problem(
                        format!("columns.{column}"),
                        format!(
                            "must name a record field (a non-empty string), got {}",
                            params::kind(other)
                        ),
                    ),
                }
            }
            Some(map.keys().collect())
        }
        Some(other) => {
            f.problem(
                "columns",
                format!(
                    "must be an object mapping columns to fields, got {}",
                    params::kind(other)
                ),
            );
            None
        }
    };
    match f.value("key", true) {
        None => {}
        Some(Value::Array(items)) if items.is_empty() => {
            f.problem("key", "must name at least one column")
        }
        Some(Value::Array(items)) => {
            let mut seen = Vec::new();
            for item in items {
                match item.as_str().filter(|s| !s.is_empty()) {
                    None => f.problem("key", format!("{item} is not a column name")),
                    Some(c) if seen.contains(&c) => {
                        f.problem("key", format!("column {c:?} is listed twice"))
                    }
                    Some(c) => {
                        seen.push(c);
                        if let Some(cols) = &columns {
                            if !cols.iter().any(|k| k.as_str() == c) {
                                f.problem(
                                    "key",
                                    format!("key column {c:?} is not in columns, so it would never be written"),
                                );
                            }
                        }
                    }
                }
            }
        }
        Some(other) => f.problem(
            "key",
            format!(
                "must be a list of column names, got {}",
                params::kind(other)
            ),
        ),
    }
    crate::retry::check(&mut f);
    f.finish()
}

/// Describes a driver error with its cause (the driver's own text is terse: "db error").
fn describe_error(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut s = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            s.push_str(": ");
            s.push_str(detail);
        }
        return s;
    }
    match std::error::Error::source(err) {
        Some(cause) => format!("{err}: {cause}"),
        None => err.to_string(),
    }
}

/// Classifies a driver error: lost connections, unreachable servers, serialization failures,
/// deadlocks, lack of resources and shutdowns are retryable; bad data, bad SQL, missing objects
/// and refused authentication are fatal.
fn classify(context: impl Into<String>, err: &tokio_postgres::Error) -> ConnectorError {
    let retryable = match err.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") // connection exception
                || code.starts_with("53") // insufficient resources
                || matches!(code, "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03")
        }
        None => {
            err.is_closed()
                || std::error::Error::source(err).is_some_and(|c| c.is::<std::io::Error>())
                || err.to_string().starts_with("error connecting")
                || err.to_string().starts_with("timeout")
        }
    };
    let context = context.into();
    let message = describe_error(err);
    if retryable {
        ConnectorError::Retryable { context, message }
    } else {
        ConnectorError::Fatal { context, message }
    }
}

/// One written column: its name, where its value comes from, and how SQL converts it.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    field: String,
    /// `format_type` of the column, e.g. `timestamp with time zone`.
    sql_type: String,
    /// `pg_type.typcategory`: `A` array, `D` date/time, `U` user (json, jsonb), ...
    category: char,
    type_name: String,
}

/// What the catalog says about the table.
struct TableInfo {
    /// The table's name as PostgreSQL prints it (quoted and qualified where needed).
    name: String,
    /// Column name → (format_type, typcategory, typname, generated).
    columns: Vec<(String, String, char, String, bool)>,
    /// The column sets of the primary key and every unique index.
    unique_keys: Vec<Vec<String>>,
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL expression converting element `i` of the row array `r` to the column's type.
fn column_expr(i: usize, col: &Column) -> String {
    let t = &col.sql_type;
    match (col.category, col.type_name.as_str()) {
        (_, "json" | "jsonb") => format!("NULLIF(r->{i}, 'null'::jsonb)::{t}"),
        ('A', _) => format!(
            "CASE jsonb_typeof(r->{i}) WHEN 'array' THEN \
             ARRAY(SELECT jsonb_array_elements_text(r->{i})) END::{t}"
        ),
        (_, "timestamp" | "timestamptz" | "date") => format!(
            "CASE jsonb_typeof(r->{i}) WHEN 'number' THEN to_timestamp((r->>{i})::float8 / 1000) \
             ELSE (r->>{i})::timestamptz END::{t}"
        ),
        _ => format!("(r->>{i})::{t}"),
    }
}

/// Writes JSON records to a PostgreSQL table as idempotent upserts, one statement per batch.
pub struct PostgresSink {
    runtime: Runtime,
    client: Option<Client>,
    statement: Option<Statement>,
    params: PostgresSinkParams,
    table: String,
    columns: Vec<Column>,
    /// Indices into `columns` of the key columns.
    key: Vec<usize>,
    sql: String,
}

impl PostgresSink {
    /// Opens the sink from the plugin's params JSON.
    pub fn from_params(params: &Value) -> Result<Self, ConnectorError> {
        Self::open(params::parse("postgres", params, validate)?)
    }

    /// Connects, checks the table (it exists, every mapped column exists, the key is its primary
    /// key or a unique index) and prepares the upsert. Every problem with the table is reported
    /// in one fatal error, e.g. `unknown column "x" in table votes`.
    pub fn open(params: PostgresSinkParams) -> Result<Self, ConnectorError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::io("starting the PostgreSQL sink's runtime", &e))?;
        let client = connect(&runtime, &params.url)?;
        let context = format!("opening PostgreSQL table {:?}", params.table);
        let info = runtime
            .block_on(describe_table(&client, &params.table))
            .map_err(|e| classify(&context, &e))?;
        let (table, columns, key) = plan(&params, info)
            .map_err(|problems| ConnectorError::fatal(&context, params::describe(&problems)))?;
        let sql = upsert_sql(&table, &columns, &key);
        let mut sink = PostgresSink {
            runtime,
            client: Some(client),
            statement: None,
            params,
            table,
            columns,
            key,
            sql,
        };
        sink.prepare()?;
        Ok(sink)
    }

    /// Connects and checks the table against `params` without writing anything: every problem
    /// as `(field, message)` (empty when the sink would open). For `sardonyx validate`.
    pub fn check_table(params: &Value) -> Result<Problems, ConnectorError> {
        let problems = validate(params);
        if !problems.is_empty() {
            return Ok(problems);
        }
        let params: PostgresSinkParams = params::parse("postgres", params, validate)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::io("starting a runtime", &e))?;
        let client = connect(&runtime, &params.url)?;
        let info = runtime
            .block_on(describe_table(&client, &params.table))
            .map_err(|e| classify(format!("reading table {:?}", params.table), &e))?;
        Ok(plan(&params, info).err().unwrap_or_default())
    }

    /// The upsert statement the sink runs for each batch (its one parameter is the batch as a
    /// JSON array of rows).
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The params the sink was opened with.
    pub fn params(&self) -> &PostgresSinkParams {
        &self.params
    }

    fn prepare(&mut self) -> Result<(), ConnectorError> {
        let context = format!("preparing the upsert into {}", self.table);
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.statement = None;
            self.client = Some(connect(&self.runtime, &self.params.url)?);
        }
        if self.statement.is_none() {
            let client = self.client.as_ref().expect("connected above");
            let statement = self
                .runtime
                .block_on(client.prepare_typed(&self.sql, &[Type::TEXT]))
                .map_err(|e| classify(&context, &e))?;
            self.statement = Some(statement);
        }
        Ok(())
    }

    /// Turns a batch into the statement's parameter: one JSON array per row, the last record of
    /// each key winning.
    fn rows(&self, records: &[Vec<u8>]) -> Result<String, ConnectorError> {
        let context = || format!("writing to {}", self.table);
        let mut rows: Vec<Vec<Value>> = Vec::with_capacity(records.len());
        let mut by_key: HashMap<String, usize> = HashMap::with_capacity(records.len());
        for (n, record) in records.iter().enumerate() {
            let doc: Value = serde_json::from_slice(record).map_err(|e| {
                ConnectorError::fatal(
                    context(),
                    format!("record {n} of the batch is not JSON: {e}"),
                )
            })?;
            let row: Vec<Value> = self
                .columns
                .iter()
                .map(|c| {
                    let v = if c.field.starts_with('/') {
                        doc.pointer(&c.field)
                    } else {
                        doc.get(&c.field)
                    };
                    v.cloned().unwrap_or(Value::Null)
                })
                .collect();
            let mut key = String::new();
            for &k in &self.key {
                if row[k].is_null() {
                    return Err(ConnectorError::fatal(
                        context(),
                        format!(
                            "record {n} of the batch has no value for key column {:?} (field {:?})",
                            self.columns[k].name, self.columns[k].field
                        ),
                    ));
                }
                key.push_str(&row[k].to_string());
                key.push('\u{1f}');
            }
            match by_key.get(&key) {
                Some(&i) => rows[i] = row,
                None => {
                    by_key.insert(key, rows.len());
                    rows.push(row);
                }
            }
        }
        Ok(Value::Array(rows.into_iter().map(Value::Array).collect()).to_string())
    }
}

impl Sink for PostgresSink {
    /// Upserts the batch in one statement: atomic, and idempotent when replayed.
    fn write_batch(&mut self, records: &[Vec<u8>]) -> Result<(), ConnectorError> {
        if records.is_empty() {
            return Ok(());
        }
        let rows = self.rows(records)?;
        self.prepare()?;
        let client = self.client.as_ref().expect("prepared");
        let statement = self.statement.as_ref().expect("prepared");
        let result = self.runtime.block_on(client.execute(statement, &[&rows]));
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = classify(format!("writing to {}", self.table), &e);
                if err.is_retryable() {
                    // The session may be gone (closed, or ended by the server): start afresh.
                    self.client = None;
                    self.statement = None;
                }
                Err(err)
            }
        }
    }

    /// Nothing to do: each batch is committed when `write_batch` returns.
    fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

fn connect(runtime: &Runtime, url: &str) -> Result<Client, ConnectorError> {
    let context = "connecting to PostgreSQL";
    let (client, connection) = runtime
        .block_on(tokio_postgres::connect(url, NoTls))
        .map_err(|e| classify(context, &e))?;
    runtime.spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("PostgreSQL connection ended: {}", describe_error(&e));
        }
    });
    // Epoch milliseconds become `timestamp without time zone` values in UTC.
    runtime
        .block_on(client.batch_execute("SET TIME ZONE 'UTC'"))
        .map_err(|e| classify(context, &e))?;
    Ok(client)
}

async fn describe_table(
    client: &Client,
    table: &str,
) -> Result<Option<TableInfo>, tokio_postgres::Error> {
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, c.oid::regclass::text FROM pg_class c \
             WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')",
            &[&table],
        )
        .await?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let name: String = row.get(1);
    let columns = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typcategory::text, \
                    t.typname::text, a.attgenerated <> '' \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await?
        .into_iter()
        .map(|r| {
            let category: String = r.get(2);
            (
                r.get(0),
                r.get(1),
                category.chars().next().unwrap_or('X'),
                r.get(3),
                r.get(4),
            )
        })
        .collect();
    let unique_keys = client
        .query(
            "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
             GROUP BY i.indexrelid",
            &[&oid],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some(TableInfo {
        name,
        columns,
        unique_keys,
    }))
}

/// Matches the params against the table: the columns to write (in table order) and the key.
#[allow(clippy::type_complexity)]
fn plan(
    params: &PostgresSinkParams,
    info: Option<TableInfo>,
) -> Result<(String, Vec<Column>, Vec<usize>), Problems> {
    let Some(info) = info else {
        return Err(vec![(
            "table".into(),
            format!(
                "unknown table {:?} (or not visible to this user)",
                params.table
            ),
        )]);
    };
    let mut problems = Problems::new();
    let mapping: Vec<(String, String)> = match &params.columns {
        Some(map) => map.iter().map(|(c, f)| (c.clone(), f.clone())).collect(),
        None => info
            .columns
            .iter()
            .filter(|c| !c.4)
            .map(|c| (c.0.clone(), c.0.clone()))
            .collect(),
    };
    let mut columns = Vec::new();
    for (name, field) in &mapping {
        match info.columns.iter().find(|c| &c.0 == name) {
            None => problems.push((
                format!("columns.{name}"),
                format!("unknown column {name:?} in table {}", info.name),
            )),
            Some(c) if c.4 => problems.push((
                format!("columns.{name}"),
                format!(
                    "column {name:?} in table {} is generated and cannot be written",
                    info.name
                ),
            )),
            Some(c) => columns.push(Column {
                name: name.clone(),
                field: field.clone(),
                sql_type: c.1.clone(),
                category: c.2,
                type_name: c.3.clone(),
            }),
        }
    }
    let mut key = Vec::new();
    for k in &params.key {
        match columns.iter().position(|c| &c.name == k) {
            Some(i) => key.push(i),
            None if info.columns.iter().any(|c| &c.0 == k) => problems.push((
                "key".into(),
                format!("key column {k:?} is not written (add it to columns)"),
            )),
            None => problems.push((
                "key".into(),
                format!("unknown column {k:?} in table {}", info.name),
            )),
        }
    }
    let mut wanted: Vec<String> = params.key.clone();
    wanted.sort();
    if problems.is_empty() && !info.unique_keys.contains(&wanted) {
        problems.push((
            "key".into(),
            format!(
                "({}) is neither the primary key nor a unique index of table {}: an upsert needs one",
                params.key.join(", "),
                info.name
            ),
        ));
    }
    if problems.is_empty() {
        Ok((info.name, columns, key))
    } else {
        Err(problems)
    }
}

fn upsert_sql(table: &str, columns: &[Column], key: &[usize]) -> String {
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let exprs: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| column_expr(i, c))
        .collect();
    let keys: Vec<String> = key.iter().map(|&k| names[k].clone()).collect();
    let updates: Vec<String> = (0..columns.len())
        .filter(|i| !key.contains(i))
        .map(|i| format!("{0} = EXCLUDED.{0}", names[i]))
        .collect();
    let action = if updates.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM jsonb_array_elements($1::text::jsonb) AS r \
         ON CONFLICT ({}) DO {action}",
        names.join(", "),
        exprs.join(", "),
        keys.join(", "),
    )
}
