//! Copying a coordinator's SQLite database into a new PostgreSQL database (`cm-coordinator db
//! copy`): how an operator who started on SQLite moves to PostgreSQL.
//!
//! The copy is generic: the tables, their columns and the foreign keys between them are read
//! from the two schemas (both migrated to the current version by [`Db::open`]), so a migration
//! that adds a table or a column needs nothing here. What it guarantees:
//!
//! * nothing is merged or overwritten: a target holding any row (outside sqlx's
//!   `_sqlx_migrations`) is refused, under a lock that keeps writers out until the copy ends;
//! * all or nothing: every row is written in one PostgreSQL transaction, and each table's row
//!   count is checked against the source before it commits; a failure leaves the target empty;
//! * the source is only read, in one read transaction (one consistent snapshot);
//! * memory is bounded: rows stream from SQLite and go out in batches bounded in rows and bytes;
//! * identities continue: every ID is copied as it is — also SQLite's implicit rowids, which
//!   PostgreSQL keeps as a `rowid` identity column because other rows refer to them (a dirty
//!   ticket's mark, a settlement's claims) — and every identity sequence is then moved past the
//!   largest value copied and past SQLite's AUTOINCREMENT counter, so new rows never collide.
//!
//! The ledger's append-only triggers fire on UPDATE and DELETE only: the copy just inserts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Instant;

use futures::TryStreamExt;
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Postgres, QueryBuilder, Row, TypeInfo, ValueRef};
use tracing::{debug, info};

use super::{Db, Pool};

/// Rows per INSERT (fewer for wide tables: PostgreSQL takes at most 65,535 parameters).
const BATCH_ROWS: usize = 1000;
/// Bytes of values per INSERT, at most (a single larger row goes alone).
const BATCH_BYTES: usize = 8 << 20;
const MAX_PARAMS: usize = 65_535;
/// A progress line every this many rows of one table.
const PROGRESS_ROWS: u64 = 100_000;

/// Why a copy did not happen. Nothing was written to the target in any case.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the source of a copy must be a SQLite database, not {0}")]
    SourceEngine(&'static str),
    #[error("the target of a copy must be a PostgreSQL database, not {0}")]
    TargetEngine(&'static str),
    #[error(
        "the target database already holds data (table `{0}` has rows); copy only into a new, empty database"
    )]
    TargetNotEmpty(String),
    #[error("the source and target schemas differ: {0}")]
    Schema(String),
    #[error(
        "table `{table}`, column `{column}`, row {row} of the source: {found} where PostgreSQL expects {expected}"
    )]
    Value {
        table: String,
        column: String,
        /// 1-based, in the order the source returned the rows.
        row: u64,
        expected: &'static str,
        found: String,
    },
    #[error(
        "table `{table}`: {source_rows} rows in the source but {target_rows} in the target after copying"
    )]
    Count {
        table: String,
        source_rows: u64,
        target_rows: u64,
    },
    #[error("copying table `{table}`: {error}")]
    Write { table: String, error: sqlx::Error },
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// What a copy did.
#[derive(Clone, Debug, Serialize)]
pub struct CopySummary {
    /// Every table, in the order copied (a table after those its rows refer to).
    pub tables: Vec<TableCopied>,
    /// Rows in all.
    pub rows: u64,
    /// How long the copy took, seconds.
    pub seconds: f64,
}

/// One table copied.
#[derive(Clone, Debug, Serialize)]
pub struct TableCopied {
    pub table: String,
    pub rows: u64,
}

impl fmt::Display for CopySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "copied {} tables, {} rows in {:.1}s",
            self.tables.len(),
            self.rows,
            self.seconds
        )?;
        let width = self.tables.iter().map(|t| t.table.len()).max().unwrap_or(0);
        for t in &self.tables {
            writeln!(f, "  {:<width$}  {:>10}", t.table, t.rows)?;
        }
        Ok(())
    }
}

/// A PostgreSQL column type the copy writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PgType {
    Int8,
    Int4,
    Int2,
    Float8,
    Float4,
    Text,
    Bytea,
    Bool,
}

impl PgType {
    /// From `information_schema.columns.data_type`.
    fn parse(data_type: &str) -> Option<Self> {
        Some(match data_type {
            "bigint" => Self::Int8,
            "integer" => Self::Int4,
            "smallint" => Self::Int2,
            "double precision" => Self::Float8,
            "real" => Self::Float4,
            "text" | "character varying" | "character" => Self::Text,
            "bytea" => Self::Bytea,
            "boolean" => Self::Bool,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Int8 => "bigint",
            Self::Int4 => "integer",
            Self::Int2 => "smallint",
            Self::Float8 => "double precision",
            Self::Float4 => "real",
            Self::Text => "text",
            Self::Bytea => "bytea",
            Self::Bool => "boolean",
        }
    }
}

/// A value as SQLite stored it (its storage class, whatever the column declares).
#[derive(Clone, Debug, PartialEq)]
enum Stored {
    Null,
    Integer(i64),
    Real(f64),
    /// Text as bytes: SQLite does not check that stored text is UTF-8.
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Stored {
    fn read(row: &SqliteRow, i: usize) -> Result<Self, sqlx::Error> {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            return Ok(Self::Null);
        }
        let class = raw.type_info().name().to_string();
        Ok(match class.as_str() {
            "INTEGER" => Self::Integer(row.try_get_unchecked(i)?),
            "REAL" => Self::Real(row.try_get_unchecked(i)?),
            "TEXT" => Self::Text(row.try_get_unchecked(i)?),
            _ => Self::Blob(row.try_get_unchecked(i)?),
        })
    }

    /// How an error shows it: its class and a short prefix.
    fn describe(&self) -> String {
        fn prefix(bytes: &[u8]) -> String {
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(32)]);
            let more = if bytes.len() > 32 { "…" } else { "" };
            format!("{shown:?}{more}")
        }
        match self {
            Self::Null => "NULL".into(),
            Self::Integer(v) => format!("the integer {v}"),
            Self::Real(v) => format!("the real {v}"),
            Self::Text(t) => format!("the text {}", prefix(t)),
            Self::Blob(b) => format!("a blob of {} bytes", b.len()),
        }
    }
}

/// A value ready to bind to a PostgreSQL column.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Null(PgType),
    Int8(i64),
    Int4(i32),
    Int2(i16),
    Float8(f64),
    Float4(f32),
    Text(String),
    Bytea(Vec<u8>),
    Bool(bool),
}

impl Value {
    /// Bytes it adds to a batch.
    fn size(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Bytea(b) => b.len(),
            _ => 8,
        }
    }
}

/// `stored` as a value of PostgreSQL type `ty`, or the reason it is not one. Integers and text
/// convert only where nothing is lost (an integral real to an integer, an integer to a real,
/// text to bytes, UTF-8 bytes to text, 0 and 1 to booleans); PostgreSQL text holds no NUL.
fn convert(stored: Stored, ty: PgType) -> Result<Value, Stored> {
    use PgType as T;
    let integer = |v: i64| -> Option<Value> {
        Some(match ty {
            T::Int8 => Value::Int8(v),
            T::Int4 => Value::Int4(i32::try_from(v).ok()?),
            T::Int2 => Value::Int2(i16::try_from(v).ok()?),
            T::Float8 => Value::Float8(v as f64),
            T::Float4 => Value::Float4(v as f32),
            T::Bool if v == 0 || v == 1 => Value::Bool(v == 1),
            _ => return None,
        })
    };
    let text = |bytes: &[u8]| -> Option<Value> {
        let s = std::str::from_utf8(bytes).ok()?;
        (!s.contains('\0')).then(|| Value::Text(s.to_string()))
    };
    let converted = match (&stored, ty) {
        (Stored::Null, ty) => Some(Value::Null(ty)),
        (Stored::Integer(v), _) => integer(*v),
        (Stored::Real(v), T::Float8) => Some(Value::Float8(*v)),
        (Stored::Real(v), T::Float4) => Some(Value::Float4(*v as f32)),
        // Within i64's range (2^63 itself is not), whole: an integer stored as a real.
        (Stored::Real(v), _) if v.fract() == 0.0 && v.abs() < 9.2e18 => integer(*v as i64),
        (Stored::Text(t), T::Text) | (Stored::Blob(t), T::Text) => text(t),
        (Stored::Text(b), T::Bytea) | (Stored::Blob(b), T::Bytea) => Some(Value::Bytea(b.clone())),
        _ => None,
    };
    converted.ok_or(stored)
}

/// A column to copy.
#[derive(Clone, Debug)]
struct Column {
    name: String,
    ty: PgType,
    /// An identity (or serial) column: its sequence is moved past what was copied.
    identity: bool,
    /// Read from SQLite's implicit rowid (the source declares no such column).
    implicit_rowid: bool,
}

/// A table to copy: its columns as the target declares them, matched with the source's.
#[derive(Clone, Debug)]
struct Table {
    name: String,
    columns: Vec<Column>,
    /// Tables its foreign keys refer to.
    parents: BTreeSet<String>,
}

impl Table {
    fn has_identity(&self) -> bool {
        self.columns.iter().any(|c| c.identity)
    }
}

/// `name` as a quoted SQL identifier (the same in both dialects).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The tables of the target with their columns and foreign keys.
async fn target_tables(dst: &mut PgConnection) -> Result<BTreeMap<String, Table>, CopyError> {
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    // Casts to text: information_schema's columns are of its own domain types.
    let columns = sqlx::query(
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text,
                c.is_identity::text = 'YES' OR COALESCE(c.column_default::text LIKE 'nextval(%', false)
         FROM information_schema.columns c
         JOIN information_schema.tables t
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
           AND c.table_name <> '_sqlx_migrations'
         ORDER BY c.table_name, c.ordinal_position",
    )
    .fetch_all(&mut *dst)
    .await?;
    for r in columns {
        let (table, name, data_type): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let ty = PgType::parse(&data_type).ok_or_else(|| {
            CopyError::Schema(format!(
                "column `{table}.{name}` has type {data_type}, which the copy does not handle"
            ))
        })?;
        tables
            .entry(table.clone())
            .or_insert_with(|| Table {
                name: table,
                columns: Vec::new(),
                parents: BTreeSet::new(),
            })
            .columns
            .push(Column {
                name,
                ty,
                identity: r.get(3),
                implicit_rowid: false,
            });
    }
    let keys = sqlx::query(
        "SELECT c.relname::text, p.relname::text
         FROM pg_constraint k
         JOIN pg_class c ON c.oid = k.conrelid
         JOIN pg_class p ON p.oid = k.confrelid
         WHERE k.contype = 'f'
           AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())",
    )
    .fetch_all(&mut *dst)
    .await?;
    for r in keys {
        let (child, parent): (String, String) = (r.get(0), r.get(1));
        if child != parent
            && let Some(t) = tables.get_mut(&child)
        {
            t.parents.insert(parent);
        }
    }
    Ok(tables)
}

/// The tables of the source with their column names, and SQLite's AUTOINCREMENT counters.
async fn source_tables(
    src: &mut SqliteConnection,
) -> Result<(BTreeMap<String, Vec<String>>, BTreeMap<String, i64>), CopyError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table'
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut *src)
    .await?;
    let mut tables = BTreeMap::new();
    for name in names {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
            .bind(&name)
            .fetch_all(&mut *src)
            .await?;
        tables.insert(name, columns);
    }
    let has_sequences: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence')",
    )
    .fetch_one(&mut *src)
    .await?;
    let mut counters = BTreeMap::new();
    if has_sequences {
        for r in sqlx::query("SELECT name, seq FROM sqlite_sequence")
            .fetch_all(&mut *src)
            .await?
        {
            counters.insert(r.get::<String, _>(0), r.get::<i64, _>(1));
        }
    }
    Ok((tables, counters))
}

/// Matches the target's tables and columns with the source's: the same tables, and the same
/// columns but for `rowid`, which the target declares where SQLite's is implicit.
fn match_schemas(
    mut target: BTreeMap<String, Table>,
    source: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<Table>, CopyError> {
    let target_names: BTreeSet<&String> = target.keys().collect();
    let source_names: BTreeSet<&String> = source.keys().collect();
    if let Some(t) = source_names.difference(&target_names).next() {
        return Err(CopyError::Schema(format!(
            "table `{t}` is in the source only"
        )));
    }
    if let Some(t) = target_names.difference(&source_names).next() {
        return Err(CopyError::Schema(format!(
            "table `{t}` is in the target only"
        )));
    }
    for (name, table) in &mut target {
        let columns = &source[name];
        for c in &mut table.columns {
            if !columns.contains(&c.name) {
                if c.name == "rowid" {
                    c.implicit_rowid = true;
                } else {
                    return Err(CopyError::Schema(format!(
                        "column `{name}.{}` is in the target only",
                        c.name
                    )));
                }
            }
        }
        if let Some(c) = columns
            .iter()
            .find(|c| !table.columns.iter().any(|t| &t.name == *c))
        {
            return Err(CopyError::Schema(format!(
                "column `{name}.{c}` is in the source only"
            )));
        }
    }
    order(target.into_values().collect())
}

/// The tables in foreign-key order: each after the tables it refers to (by name among equals).
fn order(tables: Vec<Table>) -> Result<Vec<Table>, CopyError> {
    let mut left: BTreeMap<String, Table> =
        tables.into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut ordered: Vec<Table> = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let ready = left
            .values()
            .find(|t| t.parents.iter().all(|p| !left.contains_key(p)))
            .map(|t| t.name.clone());
        let Some(name) = ready else {
            let names: Vec<&str> = left.keys().map(String::as_str).collect();
            return Err(CopyError::Schema(format!(
                "the foreign keys of {} refer to each other in a cycle",
                names.join(", ")
            )));
        };
        ordered.push(left.remove(&name).expect("a table left"));
    }
    Ok(ordered)
}

/// Copies every row of `source` (SQLite) into `target` (PostgreSQL, empty), all or nothing.
pub async fn copy(source: &Db, target: &Db) -> Result<CopySummary, CopyError> {
    copy_in_batches(source, target, BATCH_ROWS).await
}

/// [`copy`] with at most `batch_rows` rows per INSERT.
async fn copy_in_batches(
    source: &Db,
    target: &Db,
    batch_rows: usize,
) -> Result<CopySummary, CopyError> {
    let started = Instant::now();
    let Pool::Sqlite(source_pool) = &source.pool else {
        return Err(CopyError::SourceEngine(source.engine()));
    };
    let Pool::Postgres(target_pool) = &target.pool else {
        return Err(CopyError::TargetEngine(target.engine()));
    };
    // A read transaction: every table as of one moment, and nothing written.
    let mut src = source_pool.begin().await?;
    let mut dst = target_pool.begin().await?;

    let target_schema = target_tables(&mut dst).await?;
    // No one writes the target until the copy commits: it is checked empty and stays so.
    if !target_schema.is_empty() {
        let names: Vec<String> = target_schema.keys().map(|t| ident(t)).collect();
        sqlx::query(&format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            names.join(", ")
        ))
        .execute(&mut *dst)
        .await?;
    }
    for name in target_schema.keys() {
        let holds: bool =
            sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {})", ident(name)))
                .fetch_one(&mut *dst)
                .await?;
        if holds {
            return Err(CopyError::TargetNotEmpty(name.clone()));
        }
    }
    let (source_schema, counters) = source_tables(&mut src).await?;
    let tables = match_schemas(target_schema, &source_schema)?;

    let mut copied = Vec::with_capacity(tables.len());
    for table in &tables {
        let rows = copy_table(&mut src, &mut dst, table, batch_rows).await?;
        debug!(table = %table.name, rows, "table copied");
        copied.push(TableCopied {
            table: table.name.clone(),
            rows,
        });
    }

    for (table, done) in tables.iter().zip(&copied) {
        let count = format!("SELECT COUNT(*) FROM {}", ident(&table.name));
        let source_rows: i64 = sqlx::query_scalar(&count).fetch_one(&mut *src).await?;
        let target_rows: i64 = sqlx::query_scalar(&count).fetch_one(&mut *dst).await?;
        if source_rows != target_rows || done.rows != source_rows as u64 {
            return Err(CopyError::Count {
                table: table.name.clone(),
                source_rows: source_rows as u64,
                target_rows: target_rows as u64,
            });
        }
    }

    // Last before the commit: sequences are not transactional, so a copy failing earlier
    // leaves them untouched.
    for table in &tables {
        let counter = counters.get(&table.name).copied().unwrap_or(0);
        for column in table.columns.iter().filter(|c| c.identity) {
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence($1, $2),
                        GREATEST(COALESCE((SELECT MAX({}) FROM {}), 0), $3) + 1, false)",
                ident(&column.name),
                ident(&table.name)
            ))
            .bind(ident(&table.name))
            .bind(&column.name)
            .bind(counter)
            .execute(&mut *dst)
            .await?;
        }
    }
    dst.commit().await?;
    src.rollback().await?;
    Ok(CopySummary {
        rows: copied.iter().map(|t| t.rows).sum(),
        tables: copied,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Streams one table's rows from the source into the target; returns how many.
async fn copy_table(
    src: &mut SqliteConnection,
    dst: &mut PgConnection,
    table: &Table,
    batch_rows: usize,
) -> Result<u64, CopyError> {
    let select: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            if c.implicit_rowid {
                "rowid".to_string()
            } else {
                ident(&c.name)
            }
        })
        .collect();
    let select = format!("SELECT {} FROM {}", select.join(", "), ident(&table.name));
    let batch_rows = batch_rows
        .min(MAX_PARAMS / table.columns.len().max(1))
        .max(1);
    let mut rows = sqlx::query(&select).fetch(&mut *src);
    let mut batch: Vec<Vec<Value>> = Vec::with_capacity(batch_rows);
    let mut batch_bytes = 0;
    let mut count = 0u64;
    while let Some(row) = rows.try_next().await? {
        count += 1;
        let mut values = Vec::with_capacity(table.columns.len());
        for (i, column) in table.columns.iter().enumerate() {
            let value =
                convert(Stored::read(&row, i)?, column.ty).map_err(|found| CopyError::Value {
                    table: table.name.clone(),
                    column: column.name.clone(),
                    row: count,
                    expected: column.ty.name(),
                    found: found.describe(),
                })?;
            batch_bytes += value.size();
            values.push(value);
        }
        batch.push(values);
        if batch.len() >= batch_rows || batch_bytes >= BATCH_BYTES {
            insert(dst, table, &mut batch).await?;
            batch_bytes = 0;
        }
        if count.is_multiple_of(PROGRESS_ROWS) {
            info!(table = %table.name, rows = count, "copying");
        }
    }
    if !batch.is_empty() {
        insert(dst, table, &mut batch).await?;
    }
    Ok(count)
}

/// Writes (and empties) one batch of rows.
async fn insert(
    dst: &mut PgConnection,
    table: &Table,
    batch: &mut Vec<Vec<Value>>,
) -> Result<(), CopyError> {
    let columns: Vec<String> = table.columns.iter().map(|c| ident(&c.name)).collect();
    let mut query = QueryBuilder::<Postgres>::new(format!(
        "INSERT INTO {} ({}) {}",
        ident(&table.name),
        columns.join(", "),
        // Identity values are copied, not generated (GENERATED ALWAYS refuses them otherwise).
        if table.has_identity() {
            "OVERRIDING SYSTEM VALUE "
        } else {
            ""
        }
    ));
    query.push_values(batch.drain(..), |mut row, values| {
        for value in values {
            match value {
                Value::Null(PgType::Int8) => row.push_bind(None::<i64>),
                Value::Null(PgType::Int4) => row.push_bind(None::<i32>),
                Value::Null(PgType::Int2) => row.push_bind(None::<i16>),
                Value::Null(PgType::Float8) => row.push_bind(None::<f64>),
                Value::Null(PgType::Float4) => row.push_bind(None::<f32>),
                Value::Null(PgType::Text) => row.push_bind(None::<String>),
                Value::Null(PgType::Bytea) => row.push_bind(None::<Vec<u8>>),
                Value::Null(PgType::Bool) => row.push_bind(None::<bool>),
                Value::Int8(v) => row.push_bind(v),
                Value::Int4(v) => row.push_bind(v),
                Value::Int2(v) => row.push_bind(v),
                Value::Float8(v) => row.push_bind(v),
                Value::Float4(v) => row.push_bind(v),
                Value::Text(v) => row.push_bind(v),
                Value::Bytea(v) => row.push_bind(v),
                Value::Bool(v) => row.push_bind(v),
            };
        }
    });
    query
        .build()
        .execute(&mut *dst)
        .await
        .map_err(|error| CopyError::Write {
            table: table.name.clone(),
            error,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests;
