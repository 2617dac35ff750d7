//! Writing a view's data: one Parquet file per refresh, through `object_store`,
//! tracking the row count and the high-water column's maximum.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::functions_aggregate::min_max::MaxAccumulator;
use datafusion::logical_expr::Accumulator;
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::scalar::ScalarValue;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::storage::{io_error, plain};
use crate::error::{PgError, SqlState};

/// Writes one Parquet data file batch by batch, tracking the row count and the
/// maximum of the high-water column.
pub struct ParquetSink {
    store: Arc<dyn ObjectStore>,
    path: Path,
    writer: Option<AsyncArrowWriter<BufWriter>>,
    rows: u64,
    high_water_column: Option<String>,
    max: Option<MaxAccumulator>,
}

impl ParquetSink {
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, high_water_column: Option<String>) -> Self {
        ParquetSink {
            store,
            path,
            writer: None,
            rows: 0,
            high_water_column,
            max: None,
        }
    }

    fn open(&mut self, schema: SchemaRef) -> Result<(), PgError> {
        if self.writer.is_some() {
            return Ok(());
        }
        let schema = plain(&schema);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(128 * 1024))
            .build();
        let writer = AsyncArrowWriter::try_new(
            BufWriter::new(self.store.clone(), self.path.clone()),
            schema.clone(),
            Some(props),
        )
        .map_err(io_error)?;
        self.writer = Some(writer);
        if let Some(col) = &self.high_water_column {
            let field = schema
                .fields()
                .iter()
                .find(|f| f.name().eq_ignore_ascii_case(col))
                .ok_or_else(|| {
                    PgError::new(
                        SqlState::UNDEFINED_COLUMN,
                        format!("incremental_column \"{col}\" is not a column of the view query"),
                    )
                })?;
            self.max = Some(MaxAccumulator::try_new(field.data_type()).map_err(PgError::from)?);
        }
        Ok(())
    }
}

impl crate::redshift::rows::BatchSink for ParquetSink {
    async fn accept(&mut self, batch: RecordBatch) -> Result<(), PgError> {
        self.write(&batch).await
    }
}

impl ParquetSink {
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), PgError> {
        self.open(batch.schema())?;
        if let (Some(max), Some(col)) = (self.max.as_mut(), &self.high_water_column)
            && let Some(i) = batch
                .schema()
                .fields()
                .iter()
                .position(|f| f.name().eq_ignore_ascii_case(col))
        {
            max.update_batch(&[batch.column(i).clone()])
                .map_err(PgError::from)?;
        }
        self.rows += batch.num_rows() as u64;
        if let Some(w) = self.writer.as_mut() {
            // Stored without field metadata, as the manifest describes the columns.
            let batch = RecordBatch::try_new(plain(&batch.schema()), batch.columns().to_vec())
                .map_err(io_error)?;
            w.write(&batch).await.map_err(io_error)?;
        }
        Ok(())
    }

    /// Closes the file (creating an empty one with `schema` when no batch came);
    /// returns (rows, bytes, highest high-water value).
    pub async fn finish(
        mut self,
        schema: SchemaRef,
    ) -> Result<(u64, u64, Option<ScalarValue>), PgError> {
        self.open(schema)?;
        let Some(writer) = self.writer.take() else {
            return Err(io_error("the Parquet writer was not opened"));
        };
        writer.close().await.map_err(io_error)?;
        let bytes = self.store.head(&self.path).await.map_err(io_error)?.size;
        let max = match self.max.as_mut() {
            Some(m) => Some(m.evaluate().map_err(PgError::from)?).filter(|v| !v.is_null()),
            None => None,
        };
        Ok((self.rows, bytes, max))
    }

    /// Removes a partly written file after a failure.
    pub async fn abandon(self) {
        drop(self.writer);
        let _ = self.store.delete(&self.path).await;
    }
}

/// A high-water value as a SQL literal both engines compare correctly; `None` for
/// text a literal cannot carry safely (backslashes: Redshift reads them as escapes).
pub fn sql_literal(v: &ScalarValue) -> Option<String> {
    let text = v.to_string();
    if text.contains('\\') {
        return None;
    }
    Some(literal_text(v, text))
}

fn literal_text(v: &ScalarValue, text: String) -> String {
    use datafusion::arrow::datatypes::DataType;
    match v.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(_, _) => text,
        DataType::Timestamp(_, _) => {
            format!("TIMESTAMP '{}'", text.replace('T', " ").replace('\'', "''"))
        }
        DataType::Date32 | DataType::Date64 => format!("DATE '{}'", text.replace('\'', "''")),
        _ => format!("'{}'", text.replace('\'', "''")),
    }
}
