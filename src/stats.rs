//! Manifest summaries computed with polars: counts, shape and spacing
//! distributions, and the mix of voxel types.

use polars::prelude::*;

/// One manifest row, as far as the summary needs it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SummaryRow {
    pub(crate) dtype: Option<String>,
    pub(crate) shape: Option<Vec<u64>>,
    pub(crate) spacing: Option<Vec<f64>>,
    pub(crate) file_bytes: Option<u64>,
}

/// The summary as printable tables.
pub(crate) struct Summary {
    pub(crate) volumes: usize,
    pub(crate) distributions: DataFrame,
    pub(crate) dtypes: DataFrame,
    pub(crate) total_bytes: Option<u64>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "volumes: {}", self.volumes)?;
        if let Some(b) = self.total_bytes {
            writeln!(
                f,
                "bytes on disk: {} ({:.1} MiB)",
                b,
                b as f64 / (1024.0 * 1024.0)
            )?;
        }
        writeln!(
            f,
            "shape and spacing distributions:\n{}",
            self.distributions
        )?;
        write!(f, "voxel types:\n{}", self.dtypes)
    }
}

fn axis_values<T: Copy>(
    rows: &[SummaryRow],
    get: impl Fn(&SummaryRow) -> Option<&Vec<T>>,
    axis: usize,
) -> Vec<Option<T>> {
    rows.iter()
        .map(|r| get(r).and_then(|v| v.get(axis).copied()))
        .collect()
}

/// Summarises `rows` with polars.
pub(crate) fn summarize(rows: &[SummaryRow]) -> PolarsResult<Summary> {
    let f64s = |v: Vec<Option<u64>>| {
        v.into_iter()
            .map(|x| x.map(|x| x as f64))
            .collect::<Vec<_>>()
    };
    let df = df!(
        "shape x" => f64s(axis_values(rows, |r| r.shape.as_ref(), 0)),
        "shape y" => f64s(axis_values(rows, |r| r.shape.as_ref(), 1)),
        "shape z" => f64s(axis_values(rows, |r| r.shape.as_ref(), 2)),
        "shape t" => f64s(axis_values(rows, |r| r.shape.as_ref(), 3)),
        "spacing x" => axis_values(rows, |r| r.spacing.as_ref(), 0),
        "spacing y" => axis_values(rows, |r| r.spacing.as_ref(), 1),
        "spacing z" => axis_values(rows, |r| r.spacing.as_ref(), 2),
        "dtype" => rows.iter().map(|r| r.dtype.clone().unwrap_or_else(|| "unknown".into())).collect::<Vec<_>>(),
        "file_bytes" => rows.iter().map(|r| r.file_bytes).collect::<Vec<_>>(),
    )?;
    let axes = [
        "shape x",
        "shape y",
        "shape z",
        "shape t",
        "spacing x",
        "spacing y",
        "spacing z",
    ];
    let q = |name: &str, p: f64| col(name).quantile(lit(p), QuantileMethod::Linear);
    let mut exprs = Vec::new();
    for a in axes {
        exprs.extend([
            col(a)
                .count()
                .cast(DataType::Float64)
                .alias(format!("{a}|known")),
            col(a).min().alias(format!("{a}|min")),
            q(a, 0.25).alias(format!("{a}|p25")),
            q(a, 0.5).alias(format!("{a}|median")),
            q(a, 0.75).alias(format!("{a}|p75")),
            col(a).max().alias(format!("{a}|max")),
        ]);
    }
    let wide = df.clone().lazy().select(exprs).collect()?;
    let stats = ["known", "min", "p25", "median", "p75", "max"];
    let mut columns: Vec<Vec<Option<f64>>> = vec![Vec::new(); stats.len()];
    let mut names = Vec::new();
    for a in axes {
        // Skip the time axis when no volume has one.
        let known = wide
            .column(&format!("{a}|known"))?
            .f64()?
            .get(0)
            .unwrap_or(0.0);
        if a == "shape t" && known == 0.0 {
            continue;
        }
        names.push(a.to_string());
        for (i, s) in stats.iter().enumerate() {
            columns[i].push(wide.column(&format!("{a}|{s}"))?.f64()?.get(0));
        }
    }
    let mut cols = vec![Column::new("axis".into(), names)];
    for (s, v) in stats.iter().zip(columns) {
        cols.push(Column::new((*s).into(), v));
    }
    let distributions = DataFrame::new_infer_height(cols)?;
    let dtypes = df
        .clone()
        .lazy()
        .group_by([col("dtype")])
        .agg([
            len().alias("volumes"),
            col("file_bytes").sum().alias("bytes"),
        ])
        .sort(
            ["volumes"],
            SortMultipleOptions::default().with_order_descending(true),
        )
        .collect()?;
    let total_bytes = rows.iter().map(|r| r.file_bytes).sum::<Option<u64>>();
    Ok(Summary {
        volumes: rows.len(),
        distributions,
        dtypes,
        total_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_hand_computed_values() {
        let rows: Vec<SummaryRow> = (1..=5)
            .map(|i| SummaryRow {
                dtype: Some(if i % 2 == 0 { "int16" } else { "float32" }.into()),
                shape: Some(vec![10 * i, 20, 30]),
                spacing: Some(vec![1.0, 1.0, i as f64]),
                file_bytes: Some(100),
            })
            .collect();
        let s = summarize(&rows).unwrap();
        assert_eq!(s.volumes, 5);
        assert_eq!(s.total_bytes, Some(500));
        let d = &s.distributions;
        assert_eq!(d.height(), 6, "no time axis row: {d}");
        let median = d.column("median").unwrap().f64().unwrap();
        let p25 = d.column("p25").unwrap().f64().unwrap();
        assert_eq!(median.get(0), Some(30.0)); // shape x: 10..50
        assert_eq!(p25.get(0), Some(20.0)); // linear interpolation
        assert_eq!(median.get(5), Some(3.0)); // spacing z: 1..5
        let counts = s.dtypes.column("volumes").unwrap().u32().unwrap();
        assert_eq!(counts.get(0), Some(3)); // float32 first
    }
}
